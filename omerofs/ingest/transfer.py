"""Transfer modes: put one source file into the repository and prove it arrived intact.

Every mode returns the SHA1 of the SOURCE as read by the client and checks it against
what the repository side holds afterwards, as OMERO's verifyUpload does. Deleting
sources (``*_rm``) is not done here: the importer does it only after the catalog commit.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omerofs.errors import ChecksumMismatch, ImportFailed, UsageError

CHUNK = 4 << 20
COPY_CHUNK = 64 << 20  # bytes per copy_file_range call (a progress step)
ByteCounter = Callable[[int], None] | None
MODES = ("ln", "ln_s", "ln_rm", "cp", "cp_rm", "upload", "upload_rm")


def base_mode(mode: str) -> str:
    """``ln_rm`` -> ``ln``, ``cp_rm`` -> ``cp``, ``upload_rm`` -> ``upload``."""
    if mode not in MODES:
        raise UsageError(f"unknown transfer mode {mode!r} (expected one of: {', '.join(MODES)})")
    return mode.removesuffix("_rm")


def removes_source(mode: str) -> bool:
    return mode.endswith("_rm")


def sha1_file(path: Path | str, on_bytes: ByteCounter = None) -> str:
    digest = hashlib.sha1()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def place(mode: str, source: Path, target: Path, on_bytes: ByteCounter = None) -> str:
    """Transfer ``source`` to ``target`` (which must not exist); return the verified SHA1.
    ``on_bytes(n)`` is told about every chunk transferred (for progress reports)."""
    kind = base_mode(mode)
    if kind == "ln":
        return _hardlink(source, target, on_bytes)
    if kind == "ln_s":
        return _symlink(source, target, on_bytes)
    if kind == "cp":
        return _copy(source, target, on_bytes)
    return _upload(source, target, on_bytes)


def _hardlink(source: Path, target: Path, on_bytes: ByteCounter) -> str:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise ImportFailed(
                f"{source}: 'ln' needs the source on the repository's filesystem; "
                "use 'cp' or 'upload' (or stage the data on the same filesystem)"
            ) from None
        if exc.errno == errno.EPERM:
            raise ImportFailed(
                f"{source}: the kernel refused a hard link (protected_hardlinks: the importer "
                "must own the file or be able to write it); use 'cp' or 'upload'"
            ) from None
        raise ImportFailed(f"{source}: hard link failed: {exc.strerror}") from None
    if os.stat(target).st_ino != os.stat(source).st_ino:
        raise ChecksumMismatch(f"{target}: is not a link to {source}")
    return sha1_file(target, on_bytes)


def _symlink(source: Path, target: Path, on_bytes: ByteCounter) -> str:
    os.symlink(source, target)
    source_sha = sha1_file(source, on_bytes)
    if os.path.realpath(target) != os.path.realpath(source) or sha1_file(target) != source_sha:
        raise ChecksumMismatch(f"{target}: symlink does not resolve to {source}")
    return source_sha


def _copy(source: Path, target: Path, on_bytes: ByteCounter) -> str:
    """Local copy: the kernel copies (no user-space pass); then, at once on three threads,
    the copy is made durable and source and copy are hashed (hashlib and fsync release
    the GIL); the hashes must agree. A source that changes meanwhile fails the
    comparison, never slips through."""
    with open(source, "rb", buffering=0) as src, _create(target) as dst:
        _kernel_copy(src.fileno(), dst.fileno(), on_bytes)
        with ThreadPoolExecutor(3, thread_name_prefix="verify") as pool:
            durable = pool.submit(os.fsync, dst.fileno())
            source_sha = pool.submit(sha1_file, source)
            copy_sha = pool.submit(sha1_file, target)
            durable.result()
            expected, actual = source_sha.result(), copy_sha.result()
    if actual != expected:
        raise ChecksumMismatch(f"{target}: SHA1 {actual} does not match source SHA1 {expected}")
    return expected


def _kernel_copy(src: int, dst: int, on_bytes: ByteCounter) -> None:
    """copy_file_range in chunks (each a progress step); a plain read/write loop where
    the kernel cannot (across filesystems on older kernels)."""
    while True:
        try:
            n = os.copy_file_range(src, dst, COPY_CHUNK)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            break
        if n == 0:
            return
        if on_bytes:
            on_bytes(n)
    while chunk := os.read(src, CHUNK):
        write_all(dst, chunk)
        if on_bytes:
            on_bytes(len(chunk))


class RepositoryUploader:
    """The repository's side of an upload: it receives chunks, writes them and hashes
    what it received, like OMERO's RawFileStore behind ``getUploader``."""

    def __init__(self, target: Path) -> None:
        self._file = _create(target)
        self._digest = hashlib.sha1()
        self.target = target

    def write(self, data: bytes) -> None:
        write_all(self._file.fileno(), data)
        self._digest.update(data)

    def close(self) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._digest.hexdigest()


def _upload(source: Path, target: Path, on_bytes: ByteCounter) -> str:
    digest = hashlib.sha1()
    uploader = RepositoryUploader(target)
    try:
        with open(source, "rb", buffering=0) as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                uploader.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
    finally:
        received = uploader.close()
    if received != digest.hexdigest():
        raise ChecksumMismatch(f"{source}: repository received different bytes than were sent")
    return _verify(target, digest.hexdigest())


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short write (disk nearly full) must
    turn into ENOSPC on the next call, never into silently missing bytes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create(target: Path):  # noqa: ANN202 - a raw binary file object
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return os.fdopen(fd, "wb", buffering=0)


def _verify(target: Path, expected: str) -> str:
    actual = sha1_file(target)
    if actual != expected:
        raise ChecksumMismatch(f"{target}: SHA1 {actual} does not match source SHA1 {expected}")
    return expected
