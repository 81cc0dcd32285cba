"""What both mounts share: the one mapping of errors to errno, and statfs."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

import pyfuse3

from omerofs.errors import OmerofsError

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
_STATVFS_FIELDS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_namemax",
)


def fuse_errors(func: F) -> F:
    """Map domain exceptions and OS errors to errno, once, for every handler."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except OmerofsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def statfs_of(path: str) -> pyfuse3.StatvfsData:
    """The backing filesystem's numbers (free space is what a writer cares about)."""
    st = os.statvfs(path)
    data = pyfuse3.StatvfsData()
    for name in _STATVFS_FIELDS:
        setattr(data, name, getattr(st, name))
    return data
