"""``omerofs commit PATH``: close a fileset in the ingest mount now.

The daemon already takes commits as the ``user.omerofs.commit`` extended attribute (it
sees the setxattr, checks open handles, answers EBUSY); the command sets it for people
and scripts that have no ``setfattr``, after checking the path really lies in an ingest
mount (on any other filesystem the attribute would be stored and nothing would happen).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from omerofs.errors import Busy, NotFound, UsageError

COMMIT_XATTR = "user.omerofs.commit"
INGEST_FSTYPE = "fuse.omerofs-ingest"


def request_commit(path: Path) -> None:
    """Commit the fileset ``path`` belongs to (a file, a run directory, or a Dataset
    directory: every fileset in it). Raises NotFound, UsageError or Busy."""
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        raise NotFound(f"{path}: no such file or directory")
    if _fstype_of(path) != INGEST_FSTYPE:
        raise UsageError(f"{path} is not in an omerofs ingest mount")
    try:
        os.setxattr(path, COMMIT_XATTR, b"1", follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise Busy(
                f"{path}: a file of it is still open for writing; commit again once closed"
            ) from None
        if exc.errno == errno.EINVAL:
            raise UsageError(f"{path} is not part of a fileset") from None
        if exc.errno == errno.EACCES:
            raise UsageError(f"{path}: permission denied") from None
        raise UsageError(f"{path}: commit failed: {exc.strerror}") from None


def _fstype_of(path: Path) -> str | None:
    """The filesystem type of the mount ``path`` lies on (longest mountpoint prefix)."""
    best, fstype = "", None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype = point, fields[fields.index("-") + 1]
    return fstype
