"""Kernel passthrough: reads and writes of open files go from the kernel straight to
the backing file, never through the daemon.

Linux >= 6.9 (FUSE_PASSTHROUGH) does this once the daemon registers the backing file
(an ioctl on /dev/fuse, root only) and names its id in the open reply. pyfuse3 3.5 on
libfuse 3.14 cannot ask for it, so `make` builds pyfuse3 with a small patch
(tools/pyfuse3-passthrough/) that adds ``init(..., passthrough=True)``,
``backing_open``/``backing_close`` and ``FileInfo.backing_id``. With an unpatched
pyfuse3, an older kernel or no CAP_SYS_ADMIN, every open simply falls back to reads and
writes through the daemon.

The kernel allows one backing file per inode at a time, and every open of an inode
that is open in passthrough mode must name the same one: so ids are kept per inode and
counted by open handles.
"""

from __future__ import annotations

import logging
import os

import pyfuse3

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether this pyfuse3 carries the passthrough patch."""
    return hasattr(pyfuse3, "backing_open")


class Backings:
    """Backing ids of the inodes open in passthrough mode, counted by open handles."""

    def __init__(self, wanted: bool) -> None:
        self.asked = wanted  # by the configuration / command line
        # ... and possible here: registering backing files needs root (CAP_SYS_ADMIN)
        self.wanted = wanted and available() and os.geteuid() == 0
        self._ids: dict[int, list[int]] = {}  # inode -> [backing id, open handles]
        self._refused: set[int] = set()  # errnos already logged

    @property
    def enabled(self) -> bool:
        """True once the kernel accepted passthrough in FUSE_INIT."""
        return self.wanted and pyfuse3.passthrough_enabled()

    def attach(self, inode: int, fd: int) -> int:
        """The backing id for a new open of ``inode`` (``fd`` is the daemon's open file
        of it), or 0: serve this open through the daemon."""
        entry = self._ids.get(inode)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        if not self.enabled:
            return 0
        try:
            backing_id = pyfuse3.backing_open(fd)
        except OSError as exc:
            if exc.errno not in self._refused:
                self._refused.add(exc.errno)
                log.warning("passthrough refused (%s); serving such files through the daemon", exc)
            return 0
        self._ids[inode] = [backing_id, 1]
        return backing_id

    def detach(self, inode: int) -> None:
        """An open of ``inode`` was released; forget its backing id with the last one.
        (The kernel keeps the backing file of files still open: closing the id is safe.)"""
        entry = self._ids.get(inode)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._ids[inode]
            try:
                pyfuse3.backing_close(entry[0])
            except OSError as exc:
                log.warning("closing backing id %d of inode %d: %s", entry[0], inode, exc)

    def __len__(self) -> int:
        return len(self._ids)

    def describe(self) -> str:
        """One line for the log, once FUSE_INIT is done: on, or why not."""
        if not available():
            return "off: this pyfuse3 lacks the omerofs patch (make deps builds it)"
        if not self.asked:
            return "off (--no-passthrough or passthrough = false)"
        if not self.wanted:
            return "off: registering backing files needs root"
        if self.enabled:
            return "on"
        if not pyfuse3.passthrough_offered():
            return "off: the kernel does not offer it (needs Linux >= 6.9, FUSE_PASSTHROUGH)"
        return "off: the kernel refused it"


def file_info(fd: int, backing_id: int, keep_cache: bool = True) -> pyfuse3.FileInfo:
    """An open reply: with a backing id, the kernel does the I/O of this open itself."""
    info = pyfuse3.FileInfo(fh=fd, keep_cache=keep_cache)
    if backing_id:
        info.backing_id = backing_id
    return info
