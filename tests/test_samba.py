"""Samba as the front door: a real smbd re-exports the ingest mount and the view, and a
real client (smbclient) writes as Windows users would. Each user logs in as themselves;
what they write is imported as them, and Windows metadata (DOS attributes, alternate
data streams, EAs) survives on the staged files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from omerofs.imports.transfer import sha1_file
from tests.conftest import FUSE_MISSING, MountedView, Repo, make_tiff, wait_for
from tests.samba import Smbd, samba_missing, unix_users

REASON = samba_missing() if os.geteuid() == 0 and not FUSE_MISSING else "needs root and FUSE"
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
USERS = {"alice": 3001, "bob": 3002}  # the catalog's uids (tests/conftest.py Repo.populate)
INGEST = "omerofs-ingest"
VIEW = "omerofs-view"


class Door:
    """One repository, its ingest mount and view, and smbd serving both."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = Repo(base / "repo").populate()
        toml = self.repo.config.root / "omerofs.toml"
        toml.write_text(
            toml.read_text().replace("[ingest]\n", "[ingest]\nrun_settle = 1\nlinger = 0\n", 1)
        )
        self.mounts: list[MountedView] = []
        self.ingest = self._mount("ingest", ("ingest", "--transfer", "ln", "--settle", "1",
                                             "--xattrs"))  # fmt: skip
        self.view = self._mount("view", ("mount",))
        self.smbd = Smbd(base / "samba", self.repo.config, self.repo.catalog, self.ingest,
                         self.view)  # fmt: skip
        for name in USERS:
            self.smbd.add_user(name)

    def _mount(self, name: str, args: tuple[str, ...]) -> Path:
        mountpoint = self.base / name
        mountpoint.mkdir()
        self.mounts.append(MountedView(self.repo.config.root, mountpoint, args))
        return mountpoint

    def put(self, user: str, local: Path, remote: str, share: str = INGEST, **kw):
        return self.smbd.client(user, share, f'put "{local}" "{remote}"', **kw)

    def state(self, rel: str) -> str | None:
        try:
            return os.getxattr(self.ingest / rel, "user.omerofs.state").decode()
        except OSError:
            return None

    def wait_state(self, rel: str, state: str, timeout: float = 60) -> None:
        wait_for(lambda: self.state(rel) == state, timeout=timeout,
                 what=f"{rel} to become {state} (now {self.state(rel)})")  # fmt: skip

    def filesets(self, suffix: str) -> list:
        snap = self.repo.catalog.snapshot()
        return [
            fs for fs in snap.filesets.values()
            if any(e.client_path.endswith(suffix) for e in fs.entries)
        ]  # fmt: skip

    def close(self) -> None:
        self.smbd.stop()
        for mounted in reversed(self.mounts):
            mounted.close()
        self.repo.catalog.close()


@pytest.fixture(scope="module")
def door() -> Iterator[Door]:
    base = Path(tempfile.mkdtemp(prefix="omerofs-samba-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        with unix_users(USERS):
            d = Door(base)
            try:
                yield d
            finally:
                d.close()
                print(f"--- smbd log\n{d.smbd.output()[-20000:]}")
                for mounted in d.mounts:
                    print(f"--- {mounted.log}\n{mounted.log.read_text(errors='replace')[-20000:]}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def src() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="omerofs-samba-src-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_put_under_a_temporary_name_then_rename(door: Door, src: Path) -> None:
    img = make_tiff(src / "a.tif", seed=21)
    door.smbd.client("alice", INGEST, "mkdir P; mkdir P\\D")
    door.put("alice", img, "P\\D\\a.tif.tmp")  # ignored until renamed
    door.smbd.client("alice", INGEST, "rename P\\D\\a.tif.tmp P\\D\\a.tif")
    door.wait_state("alice/P/D/a.tif", "imported")
    (fs,) = door.filesets("P/D/a.tif")
    snap = door.repo.catalog.snapshot()
    assert snap.experimenters[fs.owner_id].name == "alice"  # imported as the Samba user
    assert fs.entries[0].hash == sha1_file(img)
    assert not door.filesets("a.tif.tmp")
    assert os.stat(door.ingest / "alice/P/D/a.tif").st_uid == USERS["alice"]


def test_a_200_mb_file(door: Door, src: Path) -> None:
    big = make_tiff(src / "big.tif", shape=(200, 1024, 1024), dtype="uint8", seed=3)
    assert big.stat().st_size > 200 * 10**6
    door.put("alice", big, "big.tif")
    door.wait_state("alice/big.tif", "imported", timeout=120)
    (fs,) = door.filesets("alice/big.tif")
    assert fs.entries[0].size == big.stat().st_size and fs.entries[0].hash == sha1_file(big)


def test_a_run_directory_is_one_fileset(door: Door, src: Path) -> None:
    main = make_tiff(src / "main.ome.tif", seed=8)
    notes = src / "notes.txt"
    notes.write_text("stage positions\n" * 50)
    door.smbd.client(
        "alice", INGEST,
        "mkdir R; mkdir R\\S; mkdir R\\S\\run1; "
        f'put "{main}" R\\S\\run1\\main.ome.tif; put "{notes}" R\\S\\run1\\notes.txt',
    )  # fmt: skip
    door.wait_state("alice/R/S/run1/main.ome.tif", "imported")
    (fs,) = door.filesets("run1/main.ome.tif")
    names = sorted(e.repo_path[len(fs.template_prefix) :] for e in fs.entries)
    assert names == ["run1/main.ome.tif", "run1/notes.txt"]


def allinfo(door: Door, user: str, remote: str) -> str:
    return door.smbd.client(user, INGEST, f'allinfo "{remote}"').stdout


def test_dos_attributes_stick(door: Door, src: Path) -> None:
    img = make_tiff(src / "attrs.tif", seed=31)
    door.smbd.client("alice", INGEST, "mkdir A")
    door.put("alice", img, "A\\attrs.tif.part")  # not imported while we look
    door.smbd.client("alice", INGEST, "setmode A\\attrs.tif.part +hs")
    info = allinfo(door, "alice", "A\\attrs.tif.part")  # a new connection: read back
    attributes = re.search(r"attributes: (\S+)", info)
    assert attributes and {"H", "S"} <= set(attributes.group(1)), info
    staged = door.repo.config.staging_dir / "alice/A/attrs.tif.part"
    assert os.getxattr(staged, "user.DOSATTRIB")  # kept on the staging file
    door.smbd.client("alice", INGEST, "setmode A\\attrs.tif.part -h")
    attributes = re.search(r"attributes: (\S+)", allinfo(door, "alice", "A\\attrs.tif.part"))
    assert attributes and "H" not in attributes.group(1) and "S" in attributes.group(1)


def test_alternate_data_stream_reads_back(door: Door, src: Path) -> None:
    img = make_tiff(src / "zone.tif", seed=41)
    zone = src / "Zone.Identifier"
    zone.write_text("[ZoneTransfer]\r\nZoneId=3\r\n")
    door.smbd.client("alice", INGEST, "mkdir Z")
    door.put("alice", img, "Z\\zone.tif")
    door.put("alice", zone, "Z\\zone.tif:Zone.Identifier")
    back = src / "back"
    door.smbd.client("alice", INGEST, f'get "Z\\zone.tif:Zone.Identifier" "{back}"')
    assert back.read_bytes() == zone.read_bytes()
    assert ":Zone.Identifier" in allinfo(door, "alice", "Z\\zone.tif")
    staged = door.repo.config.staging_dir / "alice/Z/zone.tif"
    assert any(n.startswith("user.DosStream.Zone.Identifier") for n in os.listxattr(staged))
    # the stream is metadata of zone.tif, not a file of its own: one fileset, one file
    door.wait_state("alice/Z/zone.tif", "imported")
    (fs,) = door.filesets("Z/zone.tif")
    assert len(fs.entries) == 1
    # ln: the ManagedRepository file is the staged inode, so the stream went along
    placed = door.repo.config.managed_dir / fs.entries[0].repo_path
    assert any(n.startswith("user.DosStream.Zone.Identifier") for n in os.listxattr(placed))


def test_commit_by_ea_from_the_client(door: Door, src: Path) -> None:
    img = make_tiff(src / "c.tif", seed=51)
    marker = src / ".omerofs-commit-only"
    marker.write_text("")
    door.smbd.client("alice", INGEST, f'mkdir CO; put "{marker}" CO\\.omerofs-commit-only')
    door.put("alice", img, "CO\\c.tif")
    door.wait_state("alice/CO/c.tif", "waiting")  # commit-only: never by time
    door.smbd.client("alice", INGEST, "setea CO\\c.tif omerofs.commit 1")
    door.wait_state("alice/CO/c.tif", "imported")
    eas = door.smbd.client("alice", INGEST, "geteas CO\\c.tif").stdout
    assert "omerofs.state" in eas and "imported" in eas, eas  # state read over SMB


def test_commit_a_run_directory_by_ea(door: Door, src: Path) -> None:
    img = make_tiff(src / "r.tif", seed=55)
    marker = src / ".omerofs-commit-only"
    marker.write_text("")
    door.smbd.client(
        "alice", INGEST,
        f'mkdir CP; put "{marker}" CP\\.omerofs-commit-only; mkdir CP\\D; mkdir CP\\D\\run9; '
        f'put "{img}" CP\\D\\run9\\r.tif; put "{marker}" CP\\D\\run9\\notes.txt',
    )  # fmt: skip
    door.wait_state("alice/CP/D/run9/r.tif", "waiting")
    door.smbd.client("alice", INGEST, "setea CP\\D\\run9 omerofs.commit 1")  # the directory
    door.wait_state("alice/CP/D/run9/r.tif", "imported")
    (fs,) = door.filesets("run9/r.tif")
    assert len(fs.entries) == 2


def test_bob_cannot_write_into_alices_tree(door: Door, src: Path) -> None:
    img = make_tiff(src / "b.tif", seed=61)
    door.put("bob", img, "b.tif")  # his own directory: the share's path is MOUNT/%u
    assert os.stat(door.ingest / "bob/b.tif").st_uid == USERS["bob"]
    for remote in ("..\\alice\\evil.tif", "\\..\\alice\\evil.tif"):
        res = door.put("bob", img, remote, check=False)
        assert "NT_STATUS_" in res.stdout + res.stderr, res.stdout
    assert not (door.ingest / "alice/evil.tif").exists()
    # a share rooted above the user directories would still meet the kernel's modes
    res = subprocess.run(
        ["setpriv", "--reuid=3002", "--regid=100", "--clear-groups", "ls", door.ingest / "alice"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0 and "Permission denied" in res.stderr


def test_each_user_sees_only_their_view(door: Door, src: Path) -> None:
    door.wait_state("alice/P/D/a.tif", "imported")
    wait_for(lambda: (door.view / "alice/Groups").is_dir(), timeout=30, what="alice's view")
    listing = door.smbd.client("alice", VIEW, "cd Groups\\priv\\Projects\\P\\D; ls").stdout
    assert "a.tif" in listing
    res = door.smbd.client("alice", VIEW, "mkdir nope", check=False)
    assert "NT_STATUS_" in res.stdout + res.stderr  # read-only
    bob = door.smbd.client("bob", VIEW, "cd Groups\\priv\\Projects; ls", check=False)
    assert "P" not in re.findall(r"^\s+(\S+)\s+D", bob.stdout, re.M)


def test_smbd_log_has_no_ea_errors(door: Door, src: Path) -> None:
    """1,150 'Cannot get attribute from EA' lines in one run before (issue 15)."""
    img = make_tiff(src / "log.tif", seed=71)
    for i in range(5):
        door.put("alice", img, f"log{i}.tif.part")
        allinfo(door, "alice", f"log{i}.tif.part")
    door.smbd.client("alice", INGEST, "ls; cd P\\D; ls")
    log = door.smbd.output()
    assert "Cannot get attribute from EA" not in log, log[-5000:]
    assert "Operation not supported" not in log, log[-5000:]
