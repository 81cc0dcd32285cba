"""File handles that survive the kernel forgetting inodes: what an NFS server (nfs-ganesha's
FSAL VFS, the kernel's nfsd) relies on to re-export a FUSE mount.

``name_to_handle_at`` encodes a FUSE file as (node id, generation); after the kernel
evicted the inode (``drop_caches``, which also makes it send FORGET), ``open_by_handle_at``
asks the daemon to LOOKUP "." in that node id, and ".." for a directory's parent. The
daemon must still know the node and answer with the same generation, else ESTALE.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from tests.conftest import make_tiff, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import sh

pytestmark = [needs_fuse, needs_root]
_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
MAX_HANDLE_SZ = 128


class FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


def name_to_handle(path: Path) -> tuple[FileHandle, int]:
    handle = FileHandle(MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    name = os.fsencode(path)
    if _libc.name_to_handle_at(AT_FDCWD, name, ctypes.byref(handle), ctypes.byref(mount_id), 0):
        raise OSError(ctypes.get_errno(), f"name_to_handle_at {path}")
    return handle, mount_id.value


def open_by_handle(mountpoint: Path, handle: FileHandle, flags: int = os.O_RDONLY) -> int:
    mount_fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(handle), flags)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"open_by_handle_at: {os.strerror(err)}")
        return fd
    finally:
        os.close(mount_fd)


def drop_caches() -> None:
    """Evict unused dentries and inodes everywhere: FUSE inodes go, with a FORGET each."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


def reopen_after_eviction(mountpoint: Path, path: Path) -> bytes:
    handle, _ = name_to_handle(path)
    drop_caches()
    return read_all(open_by_handle(mountpoint, handle))


def test_view_handles_survive_eviction(populated, mount_view, world_dir) -> None:
    src = make_tiff(world_dir / "sources" / "nfs.tif", shape=(2, 64, 64), dtype="uint8")
    fs = populated.import_file(src, "alice", "ro", "ln")
    view = mount_view(populated, "view")
    managed = view.mountpoint / "alice/ManagedRepository" / fs.template_prefix
    path = managed / fs.entries[0].name
    wait_for(path.exists, what="the imported file in the view")
    expected = path.read_bytes()
    assert reopen_after_eviction(view.mountpoint, path) == expected
    # a directory handle, and its parent through ".." (what exportfs does to reconnect)
    dir_handle, _ = name_to_handle(managed)
    drop_caches()
    fd = open_by_handle(view.mountpoint, dir_handle, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fs.entries[0].name in os.listdir(fd)
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(parent)
    finally:
        os.close(fd)


def test_ingest_handles_survive_eviction(populated, mount_view) -> None:
    mounted = mount_view(populated, "ingest", ("ingest", "--settle", "3600", "--transfer", "cp"))
    target = mounted.mountpoint / "alice/P/D"
    sh("alice", f"mkdir -p {target}")
    data = os.urandom(100_000)
    (target / "a.bin").write_bytes(data)
    handle, _ = name_to_handle(target / "a.bin")
    dir_handle, _ = name_to_handle(target)
    drop_caches()
    assert read_all(open_by_handle(mounted.mountpoint, handle)) == data
    # written through a handle of a forgotten inode: lands in the staging file
    drop_caches()
    fd = open_by_handle(mounted.mountpoint, handle, os.O_WRONLY)
    try:
        os.pwrite(fd, b"NFS", 0)
    finally:
        os.close(fd)
    staged = populated.config.staging_dir / "alice/P/D/a.bin"
    assert staged.read_bytes() == b"NFS" + data[3:]
    drop_caches()
    fd = open_by_handle(mounted.mountpoint, dir_handle, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.listdir(fd) == ["a.bin"]
    finally:
        os.close(fd)


def test_ingest_handle_of_a_removed_file_is_stale(populated, mount_view) -> None:
    """A removed file's handle fails with ESTALE, never opening another file that took
    its place."""
    mounted = mount_view(populated, "ingest", ("ingest", "--settle", "3600", "--transfer", "cp"))
    target = mounted.mountpoint / "alice/P/D"
    sh("alice", f"mkdir -p {target}")
    (target / "gone.bin").write_bytes(b"old")
    handle, _ = name_to_handle(target / "gone.bin")
    (target / "gone.bin").unlink()
    (target / "new.bin").write_bytes(b"new")
    drop_caches()
    with pytest.raises(OSError) as exc:
        os.close(open_by_handle(mounted.mountpoint, handle))
    assert exc.value.errno == errno.ESTALE


def handle_node_id(handle: FileHandle) -> int:
    """The FUSE node id a handle names (fuse_encode_fh: id high, id low, generation)."""
    high, low = (int.from_bytes(bytes(handle.f_handle[i : i + 4]), "little") for i in (0, 4))
    return high << 32 | low


def holder_of(mountpoint: Path, node_id: int) -> Path | None:
    """The path in the mount whose inode number is ``node_id`` (``find`` order)."""
    for dirpath, dirnames, filenames in os.walk(mountpoint):
        for name in dirnames + filenames:
            if os.lstat(os.path.join(dirpath, name)).st_ino == node_id:
                return Path(dirpath, name)
    return None


@pytest.mark.parametrize("kind", ["view", "ingest"])
def test_handle_from_before_a_restart_is_stale(populated, mount_view, world_dir, kind) -> None:
    """Inode numbers are handed out afresh by each daemon, in the order paths are first
    seen: after a restart a handle's number can belong to another file. It must fail with
    ESTALE rather than open that file."""
    if kind == "view":
        for i in range(3):
            src = make_tiff(world_dir / "sources" / f"r{i}.tif", shape=(1, 16, 16), seed=i)
            populated.import_file(src, "alice", "ro", "ln")
        args: tuple[str, ...] = ("mount",)
    else:
        args = ("ingest", "--settle", "3600", "--transfer", "cp")
    first = mount_view(populated, kind, args)
    if kind == "view":
        path = sorted((first.mountpoint / "alice/Groups/ro/Orphans").iterdir())[-1]
    else:
        sh("alice", f"mkdir -p {first.mountpoint}/alice/P")
        path = first.mountpoint / "alice/P/x.bin"
        path.write_bytes(b"x")
    handle, _ = name_to_handle(path)
    first.close()
    second = mount_view(populated, kind, args)
    if kind == "view":  # bob's tree is built first this time: it takes the low numbers
        for _ in os.walk(second.mountpoint / "bob"):
            pass
    else:  # other names are seen first this time
        sh(
            "alice",
            f"mkdir -p {second.mountpoint}/alice/Q && echo y > {second.mountpoint}/alice/Q/y",
        )
    holder = holder_of(second.mountpoint, handle_node_id(handle))
    assert holder is not None and holder != path, holder  # the number names another file now
    drop_caches()
    with pytest.raises(OSError) as exc:
        os.close(open_by_handle(second.mountpoint, handle))
    assert exc.value.errno == errno.ESTALE
