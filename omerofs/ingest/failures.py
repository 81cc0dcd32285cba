"""Which import failures pass by themselves, and are retried with backoff.

A server that is down, a full ManagedRepository or a locked catalog say nothing about the
files: the same import works once the cause is gone, so nobody should have to come and
retry it. An unknown format, a damaged file or a checksum mismatch are about the files:
retrying them unchanged would fail the same way, so they wait for a fix or a commit.

One failure is never retried by itself although its cause may pass: an import the OMERO
server took over and could not be asked about (``ImportOutcomeUnknown``). It may have
landed, so a retry could import it twice; a person checks OMERO and retries by commit.
It is looked for first: it is raised while a passing cause (a lost server) is being
handled, and that cause stays on its chain.
"""

from __future__ import annotations

import errno
import sqlite3

from omerofs.errors import CatalogUnavailable, ImportFailed, ImportOutcomeUnknown

TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN})
# Said by writers that keep only the message of the OSError they met.
TRANSIENT_MESSAGES = ("No space left on device", "Disk quota exceeded", "database is locked")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes (explicit or implicit), each once."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_outcome_unknown(exc: BaseException) -> bool:
    """The import may or may not have landed on the server: never retried by itself."""
    return any(isinstance(e, ImportOutcomeUnknown) for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """True for failures that are expected to pass (the chain of causes is searched: the
    writers re-raise an OSError as ImportFailed)."""
    if is_outcome_unknown(exc):
        return False
    for current in _chain(exc):
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
    return False
