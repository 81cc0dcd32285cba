"""The one place where omerofs errors are defined and mapped to errno.

Domain code raises these; the CLI prints ``str(exc)`` on one line and exits non-zero,
and the FUSE layer turns them into ``FUSEError(exc.errno)``.
"""

from __future__ import annotations

import errno


class OmerofsError(Exception):
    """Base class of every expected failure: bad input, missing objects, failed imports."""

    errno: int = errno.EIO


class UsageError(OmerofsError):
    """The caller asked for something malformed (bad level, bad mode, bad path)."""

    errno = errno.EINVAL


class NotFound(OmerofsError):
    """A named user, group, fileset, repository or path does not exist."""

    errno = errno.ENOENT


class AlreadyExists(OmerofsError):
    """A name or id that must be unique is taken."""

    errno = errno.EEXIST


class AccessDenied(OmerofsError):
    """OMERO's rules forbid the action (e.g. importing into a group one is not in)."""

    errno = errno.EACCES


class ImportFailed(OmerofsError):
    """An import did not complete; nothing of it was left in the repository or catalog."""

    errno = errno.EIO


class UnknownFormat(ImportFailed):
    """No reader recognises the fileset's main file (OMERO's 'unknown format')."""

    errno = errno.EINVAL


class DamagedFile(ImportFailed):
    """A reader knows the format but the file is truncated or inconsistent (pixel data
    beyond its end, fewer planes than its metadata says, an unreadable header)."""

    errno = errno.EIO


class ChecksumMismatch(ImportFailed):
    """The placed copy or link does not hash to what the source hashed to."""

    errno = errno.EIO


class CatalogUnavailable(OmerofsError):
    """The catalog cannot be opened or written (permissions, corruption, lock timeout)."""

    errno = errno.EIO


class Frozen(OmerofsError):
    """Staged data that was imported in place must not change or move (EPERM)."""

    errno = errno.EPERM


class Busy(OmerofsError):
    """The fileset is being imported right now (EBUSY)."""

    errno = errno.EBUSY


class MountError(OmerofsError):
    """The mountpoint is unusable (missing, not empty, already mounted)."""

    errno = errno.EBUSY


class ImportOutcomeUnknown(ImportFailed):
    """A remote catalog (the OMERO server) took the import over and could not be asked
    how it ended: nothing was removed, and it must not be retried blindly (it may have
    landed)."""
