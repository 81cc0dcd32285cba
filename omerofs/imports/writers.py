"""Is anybody still writing a staged file? Asked before a fileset is queued and again
right before it is imported.

The ingest mount counts the handles opened through it, but with kernel passthrough a
process can keep writing a staging file through a handle the daemon does not know: one
opened before the daemon was killed or unmounted keeps working, because the kernel
writes the backing file itself. Importing such a file would import it half written and,
with ``*_rm``, unlink the name its writer is still filling. The kernel knows better than
any bookkeeping: a read lease (``F_SETLEASE``, ``F_RDLCK``) is refused with EAGAIN while
any open file, the kernel's own backing files included, has the inode open for writing.
The lease is dropped at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)
_unsupported: set[int] = set()  # errnos already logged
_lock = threading.Lock()


def open_for_writing(path: Path) -> bool:
    """True if some process (or the kernel for one) has ``path`` open for writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False  # gone, or not a plain file: the manifest check decides
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        with _lock:
            if exc.errno not in _unsupported:  # NFS, fs.leases-enable = 0, not root ...
                _unsupported.add(exc.errno)
                log.warning(
                    "cannot tell whether staged files are still open for writing (%s); "
                    "relying on the handles opened through the mount",
                    exc.strerror,
                )
        return False
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def ignore_lease_breaks() -> None:
    """A writer opening a file in the microseconds we hold a lease makes the kernel send
    us SIGIO, whose default action ends the process. Call from the main thread."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)
