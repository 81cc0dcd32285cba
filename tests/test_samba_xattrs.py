"""What Samba needs from the mounts, without Samba: xattrs kept on the staging file,
KILLPRIV_V2 so that readable xattrs do not cost a round trip per write, and an smb.conf
that Samba's own parser accepts."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from omerofs.config import load_config
from omerofs.errors import UsageError
from omerofs.shares import INGEST_SHARE, VIEW_SHARE, smb_conf
from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, run_cli, wait_for
from tests.test_ingest_mount import set_ingest

ROOT = Path(__file__).resolve().parent.parent


def _capability_queries(killpriv: bool, writes: int) -> tuple[int, bool]:
    """Mount tests/killpriv_fs.py, make ``writes`` 4 KiB write(2)s to one open file,
    unmount; how often the kernel asked for security.capability, and whether it
    granted KILLPRIV_V2."""
    base = Path(tempfile.mkdtemp(prefix="omerofs-killpriv-"))
    mountpoint, counts = base / "mnt", base / "counts"
    mountpoint.mkdir()
    cmd = [sys.executable, "-m", "tests.killpriv_fs", str(mountpoint), str(counts)]
    proc = subprocess.Popen([*cmd, "1" if killpriv else "0"], cwd=ROOT)
    try:
        wait_for(lambda: os.path.ismount(mountpoint) or proc.poll() is not None, timeout=30,
                 what="the counting file system")  # fmt: skip
        assert proc.poll() is None, "the counting file system died"
        fd = os.open(mountpoint / "f", os.O_WRONLY)
        try:
            for i in range(writes):
                os.pwrite(fd, b"x" * 4096, i * 4096)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        proc.wait(timeout=30)
    queries, granted = counts.read_text().split()
    shutil.rmtree(base, ignore_errors=True)
    return int(queries), granted == "1"


@needs_fuse
@needs_root
def test_killpriv_v2_asks_for_the_capability_once_per_file_not_per_write() -> None:
    import pyfuse3

    if not hasattr(pyfuse3, "killpriv_v2_enabled"):
        pytest.fail("this pyfuse3 lacks the omerofs patch: run tools/install-pyfuse3.sh")
    before, granted_before = _capability_queries(killpriv=False, writes=200)
    assert not granted_before and before >= 200  # one round trip per write(2)
    after, granted = _capability_queries(killpriv=True, writes=200)
    assert granted, "the kernel did not grant FUSE_HANDLE_KILLPRIV_V2 (needs Linux >= 5.11)"
    assert after <= 1


@pytest.fixture
def ingest_mp(populated, mount_view):
    mounted = mount_view(populated, "ingest", ("ingest", "--transfer", "ln", "--settle",
                                               "3600", "--xattrs"))  # fmt: skip
    return mounted.mountpoint


def _as_alice(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user(3001, ["/usr/bin/python3", "-c", code]), capture_output=True, text=True
    )


@needs_fuse
@needs_root
def test_windows_metadata_is_kept_on_the_staging_file(populated, ingest_mp) -> None:
    path = ingest_mp / "alice/win.tif.part"
    res = _as_alice(
        f"import os; p = {str(path)!r}; open(p, 'wb').write(b'data');"
        "os.setxattr(p, 'user.DOSATTRIB', b'\\x00dos');"
        "os.setxattr(p, 'user.DosStream.Zone.Identifier:$DATA', b'[ZoneTransfer]');"
        "print(os.getxattr(p, 'user.DOSATTRIB'))"
    )
    assert res.returncode == 0 and "dos" in res.stdout, res.stderr
    staged = populated.config.staging_dir / "alice/win.tif.part"
    assert os.getxattr(staged, "user.DOSATTRIB") == b"\x00dos"
    names = os.listxattr(path)
    assert "user.DOSATTRIB" in names and "user.DosStream.Zone.Identifier:$DATA" in names
    os.setxattr(path, "security.NTACL", b"ntacl-blob")  # root, as smbd writes it
    assert os.getxattr(staged, "security.NTACL") == b"ntacl-blob"
    assert os.getxattr(path, "security.NTACL") == b"ntacl-blob"
    # security.* needs CAP_SYS_ADMIN: the kernel refuses it for alice before we see it
    res = _as_alice(f"import os; os.setxattr({str(path)!r}, 'security.NTACL', b'x')")
    assert res.returncode != 0 and "Operation not permitted" in res.stderr


@needs_fuse
@needs_root
def test_other_xattrs_are_refused(populated, ingest_mp) -> None:
    path = ingest_mp / "alice/other.tif.part"
    path.write_bytes(b"data")
    # a well-formed file capability (VFS_CAP_REVISION_2, CAP_SYS_ADMIN permitted): the
    # kernel checks its form before the daemon sees it
    capability = struct.pack("<IIIII", 0x02000001, 1 << 21, 0, 0, 0)
    refused = {
        "security.capability": errno.EPERM,  # no staged file ever carries one
        "trusted.omerofs": errno.EOPNOTSUPP,
        "user.omerofs.state": errno.EPERM,  # omerofs's own: read-only
    }
    for name, code in refused.items():
        with pytest.raises(OSError) as info:
            os.setxattr(path, name, capability)
        assert info.value.errno == code, name
    staged = populated.config.staging_dir / "alice/other.tif.part"
    os.setxattr(staged, "trusted.hidden", b"1")  # set behind the mount's back
    with pytest.raises(OSError) as info:
        os.getxattr(path, "trusted.hidden")
    assert info.value.errno == errno.ENODATA
    assert "trusted.hidden" not in os.listxattr(path)
    with pytest.raises(OSError) as info:
        os.getxattr(path, "security.capability")
    assert info.value.errno == errno.ENODATA


def test_smb_conf_names_the_users_and_mounts(populated, tmp_path) -> None:
    text = smb_conf(populated.config, populated.catalog, Path("/mnt/ingest"), Path("/mnt/view"))
    assert f"[{INGEST_SHARE}]" in text and f"[{VIEW_SHARE}]" in text
    assert "   path = /mnt/ingest/%u" in text and "   path = /mnt/view/%u" in text
    assert "   valid users = adam alice bob carol olga" in text
    assert "force user" not in text  # everyone writes as themselves
    assert "vfs objects = acl_xattr streams_xattr" in text
    assert "[ingest] xattrs is false" not in text  # the default (auto): no reminder
    root = str(populated.config.root)
    printed = run_cli(
        "-r",
        root,
        "shares",
        "smb-conf",
        "--ingest",
        "/mnt/ingest",
        "--view",
        "/mnt/view",
        check=True,
    )
    assert printed.stdout == text  # what `omerofs shares smb-conf` prints
    nothing = run_cli("-r", root, "shares", "smb-conf")
    assert nothing.returncode != 0 and nothing.stderr.startswith("omerofs: ")
    set_ingest(populated, xattrs=False)
    forced_off = smb_conf(
        load_config(populated.config.root), populated.catalog, Path("/mnt/ingest"), None
    )
    assert "[ingest] xattrs is false" in forced_off  # a reminder
    only_view = smb_conf(populated.config, populated.catalog, None, Path("/mnt/view"))
    assert INGEST_SHARE not in only_view
    with pytest.raises(UsageError):
        smb_conf(populated.config, populated.catalog, None, None)
    if shutil.which("testparm") is None:
        pytest.skip("testparm (samba-common-bin) is not installed: tools/install-samba.sh")
    conf = tmp_path / "smb.conf"
    conf.write_text(text)
    res = subprocess.run(["testparm", "-s", str(conf)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Unknown parameter" not in res.stderr and "Ignoring" not in res.stderr, res.stderr


@needs_fuse
@needs_root
def test_a_copying_import_leaves_windows_metadata_behind(populated, mount_view, world_dir):
    """cp modes copy bytes only (ln keeps the inode, and so the xattrs: tests/test_samba.py)."""
    img = make_tiff(world_dir / "src" / "cp.tif", seed=81)
    mp = mount_view(populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.5",
                                          "--xattrs")).mountpoint  # fmt: skip
    target = mp / "alice/cp.tif"
    res = _as_alice(
        f"import os, shutil; shutil.copyfile({str(img)!r}, {str(target)!r});"
        f"os.setxattr({str(target)!r}, 'user.DOSATTRIB', b'dos')"
    )
    assert res.returncode == 0, res.stderr
    wait_for(lambda: _state(target) == "imported", timeout=30, what="the import")
    assert os.getxattr(target, "user.DOSATTRIB") == b"dos"  # still on the staged file
    (fs,) = [f for f in populated.catalog.snapshot().filesets.values()
             if f.entries[0].client_path.endswith("alice/cp.tif")]  # fmt: skip
    placed = populated.config.managed_dir / fs.entries[0].repo_path
    assert "user.DOSATTRIB" not in os.listxattr(placed)


def _state(path: Path) -> str | None:
    try:
        return os.getxattr(path, "user.omerofs.state").decode()
    except OSError:
        return None
