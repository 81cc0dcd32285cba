"""Shared fixtures: real repositories (SQLite + directories), real TIFFs, real mounts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from omerofs.backends.local import local_importer
from omerofs.backends.local.catalog import LocalCatalog
from omerofs.config import RepoConfig, init_repo
from omerofs.identity import PermissionLevel
from omerofs.imports.importer import Target

# the real microscope files: ../shared/data beside the checkout (read-only: copy first)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FUSE_MISSING = not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None
needs_fuse = pytest.mark.skipif(FUSE_MISSING, reason="/dev/fuse or fusermount3 is missing")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv, allow_other)")


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on: bound, then closed again, so connecting to it
    is refused until a server the test starts takes it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A temporary directory every uid can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="omerofs-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_tiff(
    path: Path,
    shape: tuple[int, ...] = (3, 32, 32),
    axes: str = "ZYX",
    dtype: str = "uint16",
    seed: int = 0,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    tifffile.imwrite(
        path, data, imagej=dtype in ("uint8", "uint16", "float32"), metadata={"axes": axes}
    )
    return path


class Repo:
    """A real repository with a few users and groups of every permission level."""

    def __init__(self, root: Path) -> None:
        self.config: RepoConfig = init_repo(root)
        self.catalog = LocalCatalog(self.config.catalog_path, create=True)
        self.importer = local_importer(self.config, self.catalog)

    def populate(self) -> Repo:
        c = self.catalog
        for name, level, gid in [
            ("priv", PermissionLevel.PRIVATE, 71001),
            ("ro", PermissionLevel.READ_ONLY, 71002),
            ("ra", PermissionLevel.READ_ANNOTATE, 71003),
            ("rw", PermissionLevel.READ_WRITE, 71004),
        ]:
            c.add_group(name, level, gid)
        c.add_experimenter("alice", 3001, default_group="priv")
        c.add_experimenter("bob", 3002, default_group="priv")
        c.add_experimenter("carol", 3003, default_group="ro")
        c.add_experimenter("olga", 3004, default_group="priv")
        c.add_experimenter("adam", 3005, admin=True)
        for group in ("ro", "ra", "rw"):
            c.add_member(group, "alice")
            c.add_member(group, "bob")
        c.add_member("priv", "olga", owner=True)
        return self

    def import_file(
        self,
        path: Path,
        user: str,
        group: str | None = None,
        mode: str = "cp",
        target: str | None = None,
    ):
        owner, grp = self.importer.resolve_identity(user, group)
        return self.importer.import_fileset_path(path, owner, grp, mode, Target.parse(target))


@pytest.fixture
def repo(world_dir: Path) -> Iterator[Repo]:
    r = Repo(world_dir / "repo")
    try:
        yield r
    finally:
        r.catalog.close()


@pytest.fixture
def populated(repo: Repo) -> Repo:
    return repo.populate()


def run_cli(
    *args: str, check: bool = False, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "omerofs.cli", *args]
    if uid is not None:
        cmd = as_user(uid, cmd)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed: {result.stderr}")
    return result


def run_cli_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """``omerofs ARGS`` with stderr on a pty (what a person sees) and stdout piped:
    (exit code, stdout, everything written to the terminal)."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omerofs.cli", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    seen = b""
    while select.select([leader], [], [], 60)[0]:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed its terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    return proc.returncode, out, seen.decode(errors="replace")


def as_user(uid: int, cmd: list[str], gid: int | None = None) -> list[str]:
    gid = uid if gid is None else gid
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class MountedView:
    """The view daemon in a subprocess, as a user would run it; always torn down."""

    def __init__(
        self, repo_root: Path, mountpoint: Path, args: tuple[str, ...] = ("mount",)
    ) -> None:
        self.mountpoint = mountpoint
        self.log = repo_root / "logs" / f"test-{args[0]}.log"
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "omerofs.cli",
                    "-r",
                    str(repo_root),
                    args[0],
                    str(mountpoint),
                    *args[1:],
                    "--foreground",
                ],
                stdout=log,
                stderr=log,
            )
        try:
            wait_for(self._up, timeout=30, what=f"mount at {mountpoint}")
        except BaseException:
            self.close()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mount daemon died: {self.log.read_text()}")
        return os.path.ismount(self.mountpoint)

    def close(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def mount_view(world_dir: Path) -> Iterator:
    """Start mounts (``args[0]`` is ``mount`` or ``ingest``); all are torn down after."""
    mounts: list[MountedView] = []

    def start(repo: Repo, name: str = "view", args: tuple[str, ...] = ("mount",)) -> MountedView:
        mountpoint = world_dir / name
        mountpoint.mkdir(exist_ok=True)
        mounted = MountedView(repo.config.root, mountpoint, args)
        mounts.append(mounted)
        return mounted

    try:
        yield start
    finally:
        for mounted in reversed(mounts):
            mounted.close()


@pytest.fixture
def tmpfs(world_dir: Path) -> Iterator:
    """Mount small tmpfs filesystems (a second filesystem, or one that fills up)."""
    mounted: list[Path] = []

    def make(name: str, size: str = "16m") -> Path:
        path = world_dir / name
        path.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True
        )
        mounted.append(path)
        return path

    try:
        yield make
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
