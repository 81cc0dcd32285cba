"""Which daemons serve a repository: ``REPO/run/ingest.lock``, ``REPO/run/view-*.lock``.

Two ingest daemons on one repository would share the staging area and the queue and
race for the same filesets, so there is one ingest lock. Views only read: two of them
(another mountpoint, or one without passthrough to compare) do not conflict, so each
view holds a lock of its own mountpoint, which still tells ``omerofs status`` where
every daemon is. A lock is an ``flock`` held on the open file for the daemon's whole
life: the kernel releases it when the process dies however it dies (kill -9 included),
so a stale file never blocks a new daemon. The file's content (JSON: pid, mountpoint,
role, started) says who holds it; it is only trusted while the lock is held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from omerofs.config import RepoConfig
from omerofs.errors import AlreadyExists

RUN_DIR = "run"


@dataclass(frozen=True)
class DaemonInfo:
    """A running daemon, as its lock file describes it."""

    role: str
    pid: int
    mountpoint: str
    started: float  # seconds since the epoch

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds")
        return f"pid {self.pid}, mounted at {self.mountpoint}, since {since}"


class AlreadyRunning(AlreadyExists):
    """Another daemon of this role serves the repository."""


def lock_path(config: RepoConfig, role: str, mountpoint: Path | str | None = None) -> Path:
    """``run/ingest.lock``; ``run/view-<hash of the mountpoint>.lock``."""
    if role == "ingest":
        return config.root / RUN_DIR / "ingest.lock"
    if role == "view" and mountpoint is not None:
        key = hashlib.sha1(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:16]
        return config.root / RUN_DIR / f"view-{key}.lock"
    raise ValueError(f"no lock for role {role!r} at {mountpoint!r}")


class DaemonLock:
    """Held from :meth:`acquire` until :meth:`release` or the process ends."""

    def __init__(self, path: Path, fd: int, info: DaemonInfo) -> None:
        self.path = path
        self.info = info
        self._fd: int | None = fd
        self._extra: dict[str, object] = {}

    @classmethod
    def acquire(cls, config: RepoConfig, role: str, mountpoint: Path) -> DaemonLock:
        """Take the role's lock or raise :class:`AlreadyRunning` naming the holder."""
        path = lock_path(config, role, mountpoint)
        path.parent.mkdir(mode=0o755, exist_ok=True)  # readable: `status` reads it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _try_flock(fd, fcntl.LOCK_EX):
                raise _running_error(config, role, _parse(_read_all(fd)))
            info = DaemonInfo(role, os.getpid(), str(os.path.abspath(mountpoint)), time.time())
            lock = cls(path, fd, info)
            lock.update()
        except BaseException:
            os.close(fd)
            raise
        return lock

    def update(self, **extra: object) -> None:
        """(Re)write the holder's description, with ``extra`` keys (e.g. ``metrics``)."""
        assert self._fd is not None
        self._extra.update(extra)
        data = json.dumps(
            {
                "pid": self.info.pid,
                "mountpoint": self.info.mountpoint,
                "role": self.info.role,
                "started": datetime.fromtimestamp(self.info.started, UTC).isoformat(),
                **self._extra,
            }
        ).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data + b"\n", 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Empty the file (its content describes no one any more) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> DaemonLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_flock(fd: int, operation: int) -> bool:
    """Take ``operation`` (LOCK_EX or LOCK_SH) without waiting; False when another
    process holds a conflicting lock (any other error is raised)."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return False
    return True


def holder(path: Path) -> DaemonInfo | None:
    """The daemon holding the lock at ``path``, or None. Needs only read access to the
    file: a shared lock that can be taken means nobody holds the exclusive one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not _try_flock(fd, fcntl.LOCK_SH):
            role = "ingest" if path.name == "ingest.lock" else "view"
            return _parse(_read_all(fd)) or DaemonInfo(role, 0, "?", 0.0)  # just starting
        return None  # free: whatever the file says is from a daemon that is gone
    finally:
        os.close(fd)


def running_daemons(config: RepoConfig) -> list[DaemonInfo]:
    """Every running daemon of the repository, ingest first (for ``omerofs status``)."""
    run = config.root / RUN_DIR
    paths = [run / "ingest.lock", *sorted(run.glob("view-*.lock"))] if run.is_dir() else []
    return [info for path in paths if (info := holder(path)) is not None]


def check_free(config: RepoConfig, role: str, mountpoint: Path) -> None:
    """Raise :class:`AlreadyRunning` now rather than from a detached daemon's log."""
    info = holder(lock_path(config, role, mountpoint))
    if info is not None:
        raise _running_error(config, role, info)


def _running_error(config: RepoConfig, role: str, info: DaemonInfo | None) -> AlreadyRunning:
    what = "an ingest daemon" if role == "ingest" else "a view daemon"
    if info is None:
        return AlreadyRunning(f"{what} already serves {config.root} (it is starting)")
    return AlreadyRunning(
        f"{what} already serves {config.root} (pid {info.pid}, mounted at {info.mountpoint}); "
        f"stop it first: omerofs umount {info.mountpoint}"
    )


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 4096, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> DaemonInfo | None:
    """A lock file's content, or None while its holder has not written it yet."""
    try:
        obj = json.loads(data)
        started = datetime.fromisoformat(obj["started"]).timestamp()
        return DaemonInfo(str(obj["role"]), int(obj["pid"]), str(obj["mountpoint"]), started)
    except (ValueError, KeyError, TypeError):
        return None
