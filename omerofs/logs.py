"""Where log lines go: timestamped files that rotate, the journal under systemd, and
one plain ``omerofs: …`` line per message for a person at a terminal.

- ``logs/omerofs.log`` (every command and daemon) and ``logs/mount.log`` /
  ``logs/ingest.log`` (a detached daemon's own log, named by ``OMEROFS_DAEMON_LOG``)
  carry a timestamp, the pid and the level on every line, and rotate at
  ``MAX_BYTES`` keeping ``BACKUPS`` old files. Several processes append to one file
  (views, imports): rotation takes an flock and the others reopen the new file, as
  ``WatchedFileHandler`` does after logrotate, so an external logrotate works too.
- Under systemd (``JOURNAL_STREAM`` names our stderr) stderr lines start with the
  syslog priority (``<3>`` error … ``<7>`` debug), which journald reads as the level;
  it adds the time itself. No library is needed for that.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import TextIO

from omerofs.config import RepoConfig

MAX_BYTES = 16 << 20
BACKUPS = 5
DAEMON_LOG_ENV = "OMEROFS_DAEMON_LOG"
FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
SYSLOG_PRIORITY = {  # logging level -> syslog priority (sd-daemon(3))
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def log_format() -> logging.Formatter:
    """The file format: ``2026-12-02 13:40:00,123 4242 INFO omerofs.fs.mount: …``."""
    return logging.Formatter(FILE_FORMAT)


class JournalFormatter(logging.Formatter):
    """``<6>omerofs: message``: journald takes the prefix as the priority."""

    def __init__(self) -> None:
        super().__init__("omerofs: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < 30 else 3)
        text = super().format(record)
        # a traceback spans lines: each line is its own journal entry, all of one priority
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def under_journald(stream: TextIO | None = None) -> bool:
    """True if ``stream`` (stderr) is the journal stream systemd connected us to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def stderr_formatter() -> logging.Formatter:
    """Journal priorities under systemd, else one plain ``omerofs: …`` line."""
    return JournalFormatter() if under_journald() else logging.Formatter("omerofs: %(message)s")


class SharedRotatingFileHandler(logging.handlers.WatchedFileHandler):
    """Appends from many processes; the one that finds the file too big rotates it
    (under an flock beside it), the others notice the new inode and reopen. A daemon
    whose stderr is this file moves its stderr along (tracebacks, faulthandler)."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.max_bytes = max_bytes
        self.backups = backups
        self._stderr_follows = False
        super().__init__(str(path), encoding="utf-8", delay=False)
        self._stderr_follows = _same_file(2, self.stream.fileno())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            if self.max_bytes and stream and os.fstat(stream.fileno()).st_size >= self.max_bytes:
                self._rotate()
        except OSError:  # logging must never take a daemon down
            pass
        super().emit(record)  # reopens first if someone else rotated

    def _open(self):  # noqa: ANN202 - the stream logging expects
        stream = super()._open()
        if getattr(self, "_stderr_follows", False):
            with contextlib.suppress(OSError):
                os.dup2(stream.fileno(), 2)
        return stream

    def _rotate(self) -> None:
        lock_fd = os.open(self.baseFilename + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:  # another process may have rotated while we waited
                if os.stat(self.baseFilename).st_size < self.max_bytes:
                    return
            except FileNotFoundError:
                return
            for n in range(self.backups - 1, 0, -1):
                older = f"{self.baseFilename}.{n}"
                if os.path.exists(older):
                    os.replace(older, f"{self.baseFilename}.{n + 1}")
            if self.backups:
                os.replace(self.baseFilename, self.baseFilename + ".1")
            else:
                os.unlink(self.baseFilename)
        finally:
            os.close(lock_fd)
        self.reopenIfNeeded()


def file_handler(path: Path) -> logging.Handler:
    """A rotating, timestamped log file (created with its directory if missing)."""
    path.parent.mkdir(exist_ok=True)
    handler = SharedRotatingFileHandler(path)
    handler.setFormatter(log_format())
    return handler


def setup(config: RepoConfig | None, verbose: bool) -> None:
    """Logging of one ``omerofs`` process: stderr (plain, or the journal's format), the
    repository's ``omerofs.log`` and, for a detached daemon, its own log file."""
    handlers: list[logging.Handler] = []
    daemon_log = os.environ.get(DAEMON_LOG_ENV)
    if daemon_log:  # spawned by `omerofs mount|ingest`: stderr is that file as well
        handlers.append(file_handler(Path(daemon_log)))
    else:
        stderr = logging.StreamHandler()
        stderr.setLevel(logging.INFO if verbose else logging.WARNING)
        stderr.setFormatter(stderr_formatter())
        stderr.addFilter(lambda record: not getattr(record, "reported", False))  # printed
        handlers.append(stderr)
    if config is not None:
        handlers.append(file_handler(config.log_dir / "omerofs.log"))
    logging.getLogger("omerofs").propagate = True
    logging.basicConfig(force=True, level=logging.INFO, handlers=handlers)


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
