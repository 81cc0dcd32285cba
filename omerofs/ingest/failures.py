"""Which import failures pass by themselves, and are retried with backoff.

A server that is down, a full ManagedRepository or a locked catalog say nothing about the
files: the same import works once the cause is gone, so nobody should have to come and
retry it. An unknown format, a damaged file or a checksum mismatch are about the files:
retrying them unchanged would fail the same way, so they wait for a fix or a commit.
"""

from __future__ import annotations

import errno
import sqlite3

from omerofs.errors import CatalogUnavailable, ImportFailed

TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN})
# Said by writers that keep only the message of the OSError they met.
TRANSIENT_MESSAGES = ("No space left on device", "Disk quota exceeded", "database is locked")


def is_transient(exc: BaseException) -> bool:
    """True for failures that are expected to pass (the chain of causes is searched: the
    writers re-raise an OSError as ImportFailed)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CatalogUnavailable):
            return True
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and any(
            word in str(current) for word in ("locked", "busy", "disk is full")
        ):
            return True
        if isinstance(current, ImportFailed) and any(m in str(current) for m in TRANSIENT_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False
