"""The repository on disk belongs to omerofs (issue 12, item 0): a user with a shell on
the host cannot change an imported byte, neither through the repository's directories
nor through the in-place source of an ``ln`` import; only the mounts give access."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from omerofs.errors import ImportFailed
from omerofs.imports.transfer import sha1_file
from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, wait_for

pytestmark = [needs_root]
ALICE = 3001  # conftest's populated repository: alice, default group "priv"

# Every way a shell user might try to change a file's bytes or its protection.
ATTACKS = [
    "echo tampered >> {path}",
    "truncate -s 0 {path}",
    "dd if=/dev/zero of={path} bs=1 count=4 conv=notrunc",
    "chmod 666 {path}",
]


def as_alice(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user(ALICE, ["/bin/sh", "-c", script]), capture_output=True, text=True, timeout=60
    )


def attack(path: Path) -> None:
    """Every attack fails; the file keeps its bytes."""
    before = sha1_file(path)
    for template in ATTACKS:
        res = as_alice(template.format(path=path))
        assert res.returncode != 0, f"{template} succeeded on {path}"
    assert sha1_file(path) == before


def assert_sealed(path: Path) -> None:
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (0, 0), path
    assert stat.S_IMODE(st.st_mode) & 0o222 == 0, oct(st.st_mode)


def relax(*dirs: Path) -> None:
    """An admin's mistake: the private directories opened up. The seal must still hold."""
    for d in dirs:
        d.chmod(0o755)


@pytest.fixture
def alice_source(world_dir):
    """A directory of alice's with an image she wrote (umask 077: 0600)."""
    d = world_dir / "alice-data"
    d.mkdir()
    os.chown(d, ALICE, ALICE)
    img = make_tiff(d / "cells.tif", seed=3)
    os.chown(img, ALICE, ALICE)
    img.chmod(0o600)
    return img


@pytest.mark.parametrize("mode", ["ln", "ln_rm", "cp", "upload"])
def test_imported_bytes_cannot_be_changed_from_the_host(populated, alice_source, mode) -> None:
    expected = sha1_file(alice_source)
    fs = populated.import_file(alice_source, "alice", mode=mode)
    managed = populated.config.managed_dir
    placed = managed / fs.entries[0].repo_path
    assert fs.entries[0].hash == expected
    assert stat.S_IMODE(os.stat(managed).st_mode) == 0o700  # set by init
    assert as_alice(f"ls {managed}").returncode != 0
    attack(placed)  # blocked by the directory
    assert_sealed(placed)
    relax(managed)
    attack(placed)  # blocked by the seal itself
    if mode == "ln":  # the source is the same inode: sealed too, and still readable
        assert os.stat(alice_source).st_ino == os.stat(placed).st_ino
        attack(alice_source)
        assert stat.S_IMODE(os.stat(alice_source).st_mode) == 0o400  # her read bits kept
    elif mode == "ln_rm":
        assert not alice_source.exists()
    else:  # a copy: her own file stays hers
        assert os.stat(alice_source).st_uid == ALICE
        assert as_alice(f"echo more >> {alice_source}").returncode == 0
    assert sha1_file(placed) == expected


def test_ln_refuses_a_source_still_open_for_writing(populated, alice_source) -> None:
    """A handle opened before the seal would outlive it: the import fails and the source
    gets its owner and mode back."""
    writer = subprocess.Popen(
        as_user(ALICE, ["/bin/sh", "-c", f"exec 3>>{alice_source}; echo open; exec sleep 60"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(ImportFailed, match="open for writing"):
            populated.import_file(alice_source, "alice", mode="ln")
    finally:
        writer.kill()
        writer.wait()
    st = os.stat(alice_source)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (ALICE, 0o600, 1)
    assert populated.catalog.snapshot().filesets == {}


@needs_fuse
@pytest.mark.parametrize("mode", ["ln", "ln_rm", "cp", "upload"])
def test_ingested_bytes_cannot_be_changed_from_the_host(
    populated, mount_view, world_dir, mode
) -> None:
    config = populated.config
    staging = config.staging_dir
    staging.mkdir(mode=0o755)  # as an older version left it: fixed at daemon start
    src = make_tiff(world_dir / "src" / "a.tif", seed=5)
    src.parent.chmod(0o755)
    daemon = mount_view(
        populated, "ingest", ("ingest", "--transfer", mode, "--settle", "0.3", "--xattrs")
    )
    mp = daemon.mountpoint
    assert stat.S_IMODE(os.stat(staging).st_mode) == 0o700
    assert (os.stat(mp).st_mode & 0o777) == 0o755  # the mount's root: everybody enters
    target = mp / "alice/D/a.tif"
    res = as_alice(f"umask 077; mkdir -p {target.parent} && cp {src} {target}")
    assert res.returncode == 0, res.stderr

    def imported():
        found = [
            fs
            for fs in populated.catalog.snapshot().filesets.values()
            if fs.entries[0].client_path.endswith("alice/D/a.tif")
        ]
        return found[0] if found else None

    try:
        fs = wait_for(imported, timeout=60, what=f"the {mode} import")
    except AssertionError:
        raise AssertionError(daemon.log.read_text()[-3000:]) from None
    placed = config.managed_dir / fs.entries[0].repo_path
    staged = staging / "alice/D/a.tif"
    expected = sha1_file(src)
    assert as_alice(f"ls {staging}").returncode != 0  # the host path is closed ...
    attack(placed)
    if not mode.endswith("_rm"):  # (an *_rm name lingers a while, then goes)
        attack(staged)
    relax(staging, config.managed_dir)  # ... and the seal holds when it is not
    attack(placed)
    assert_sealed(placed)
    if mode == "ln":  # the staged name is the imported inode
        assert os.stat(staged).st_ino == os.stat(placed).st_ino
        attack(staged)
    if not mode.endswith("_rm"):  # in the mount alice still reads her (frozen) file
        Path("/proc/sys/vm/drop_caches").write_text("2")  # attributes fresh from the daemon
        res = as_alice(f"stat -c %u {target} && sha1sum {target}")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[0] == str(ALICE)  # shown as hers
        assert res.stdout.split()[1] == expected
        res = as_alice(f"echo more >> {target}")  # refused by the service, not the kernel
        assert res.returncode != 0 and "Operation not permitted" in res.stderr, res.stderr
    assert sha1_file(placed) == expected


def test_an_import_makes_an_older_repository_private(populated, alice_source) -> None:
    """A repository from before this rule (ManagedRepository 0755) is closed on the way
    by the first import, as by every daemon start."""
    managed = populated.config.managed_dir
    managed.chmod(0o755)
    populated.import_file(alice_source, "alice", mode="cp")
    assert stat.S_IMODE(os.stat(managed).st_mode) == 0o700
