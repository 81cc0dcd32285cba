"""Transfer modes: put one source file into the repository and prove it arrived intact.

Every mode returns the SHA1 of the SOURCE as read by the client and checks it against
what the repository side holds afterwards, as OMERO's verifyUpload does. Deleting
sources (``*_rm``) is not done here: the importer does it only after the catalog commit.

Placed originals are *sealed* (``seal_as``): owned by the repository's account and not
writable by anyone, as OMERO's ManagedRepository files belong to the server's account.
For ``ln`` that is the source's own inode: sealed before it is hashed, so the hashed
bytes are the ones kept, and refused if some process still has it open for writing
(a handle opened earlier would outlive the permission change).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from omerofs.errors import ChecksumMismatch, ImportFailed, UsageError
from omerofs.imports.writers import ignore_lease_breaks, open_for_writing

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


@dataclass(frozen=True)
class Account:
    """Who owns sealed originals: the owner of the ManagedRepository directory (root for
    the embedded repository, the server's account for OMERO's)."""

    uid: int
    gid: int

    @classmethod
    def of(cls, directory: Path) -> Account:
        st = os.stat(directory)
        return cls(st.st_uid, st.st_gid)


@dataclass(frozen=True)
class Seal:
    """How to put an ``ln`` source back as it was if its import is rolled back."""

    path: Path
    inode: int
    uid: int
    gid: int
    mode: int


def place(
    mode: str,
    source: Path,
    target: Path,
    on_bytes: ByteCounter = None,
    *,
    seal_as: Account | None = None,
    seals: list[Seal] | None = None,
) -> str:
    """Transfer ``source`` to ``target`` (which must not exist); return the verified SHA1.
    ``on_bytes(n)`` is told about every chunk transferred (for progress reports).

    With ``seal_as`` the placed original is owned by that account and read-only (``ln``:
    the shared inode keeps its read bits); what an ``ln`` import changed on its source
    is appended to ``seals`` for :func:`unseal`."""
    kind = base_mode(mode)
    if kind == "ln":
        return _hardlink(source, target, on_bytes, seal_as, seals)
    if kind == "ln_s":
        sha1 = _symlink(source, target, on_bytes)
        if seal_as is not None:  # the link itself; its target is the user's source
            os.chown(target, seal_as.uid, seal_as.gid, follow_symlinks=False)
        return sha1
    if kind == "cp":
        return _copy(source, target, on_bytes, seal_as)
    return _upload(source, target, on_bytes, seal_as)


def read_only_mode(mode: int) -> int:
    """Permission bits of a sealed original: the read (and execute) bits it had, no
    write bit, no set-id bits."""
    return stat.S_IMODE(mode) & 0o555


def seal_inode(path: Path, account: Account) -> Seal:
    """Make the file at ``path`` the account's and read-only (through one descriptor
    opened without following links, so a name swapped meanwhile cannot redirect it)."""
    fd = _open_inode(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImportFailed(f"{path}: not a regular file")
        os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, read_only_mode(st.st_mode))
    finally:
        os.close(fd)
    return Seal(Path(path), st.st_ino, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def unseal(seal: Seal) -> None:
    """Give a rolled-back ``ln`` source its owner and mode back, if that name still is
    the inode we sealed (a user's path: checked and changed through one descriptor)."""
    try:
        fd = _open_inode(seal.path)
    except OSError:
        return  # gone, or a symlink now: nothing of ours to restore
    try:
        if os.fstat(fd).st_ino == seal.inode:
            os.fchown(fd, seal.uid, seal.gid)
            os.fchmod(fd, seal.mode)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_inode(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)


def _refuse_open_writers(path: Path) -> None:
    """After sealing, nobody can open the inode for writing any more; a handle opened
    before would still write. The kernel refuses a read lease while one exists."""
    if threading.current_thread() is threading.main_thread():
        ignore_lease_breaks()  # a writer opening it meanwhile must not kill us (SIGIO)
    if open_for_writing(path):
        raise ImportFailed(
            f"{path}: some process has it open for writing; import it once it is closed"
        )


def _hardlink(
    source: Path,
    target: Path,
    on_bytes: ByteCounter,
    seal_as: Account | None = None,
    seals: list[Seal] | None = None,
) -> str:
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
    if seal_as is None:
        return sha1_file(target, on_bytes)
    seal = seal_inode(target, seal_as)
    try:
        _refuse_open_writers(target)
        sha1 = sha1_file(target, on_bytes)
    except BaseException:
        unseal(seal)
        raise
    if seals is not None:
        seals.append(Seal(Path(source), seal.inode, seal.uid, seal.gid, seal.mode))
    return sha1


def _symlink(source: Path, target: Path, on_bytes: ByteCounter) -> str:
    os.symlink(source, target)
    source_sha = sha1_file(source, on_bytes)
    if os.path.realpath(target) != os.path.realpath(source) or sha1_file(target) != source_sha:
        raise ChecksumMismatch(f"{target}: symlink does not resolve to {source}")
    return source_sha


def _copy(source: Path, target: Path, on_bytes: ByteCounter, seal_as: Account | None) -> str:
    """Local copy: the kernel copies (no user-space pass); then, at once on three threads,
    the copy is made durable and source and copy are hashed (hashlib and fsync release
    the GIL); the hashes must agree. A source that changes meanwhile fails the
    comparison, never slips through."""
    with open(source, "rb", buffering=0) as src, _create(target, seal_as) as dst:
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

    def __init__(self, target: Path, seal_as: Account | None = None) -> None:
        self._file = _create(target, seal_as)
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


def _upload(source: Path, target: Path, on_bytes: ByteCounter, seal_as: Account | None) -> str:
    digest = hashlib.sha1()
    uploader = RepositoryUploader(target, seal_as)
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


def _create(target: Path, seal_as: Account | None = None):  # noqa: ANN202 - raw binary file
    """A new file; sealed ones are read-only from birth (this handle still writes) and
    the account's before a byte is in them."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444 if seal_as else 0o644)
    try:
        if seal_as is not None:
            os.fchown(fd, seal_as.uid, seal_as.gid)
            os.fchmod(fd, 0o444)  # whatever the umask left
        return os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _verify(target: Path, expected: str) -> str:
    actual = sha1_file(target)
    if actual != expected:
        raise ChecksumMismatch(f"{target}: SHA1 {actual} does not match source SHA1 {expected}")
    return expected
