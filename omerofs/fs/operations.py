"""pyfuse3 handlers of the read-only view. They translate; the view decides.

Where the kernel allows it (fs/passthrough.py), an opened original is handed to the
kernel, which then reads it without the daemon. Otherwise reads go to the original
with ``os.pread`` on the loop thread (page-cache reads are cheaper inline than through
a worker thread), with ``keep_cache`` and long timeouts so the kernel serves repeats.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import pyfuse3
import trio

from omerofs.fs.common import fuse_errors, statfs_of
from omerofs.fs.inodes import Node, refresh_file_stat
from omerofs.fs.passthrough import Backings, file_info
from omerofs.fs.view import RepositoryView

log = logging.getLogger(__name__)


async def read_only(*_args: Any, **_kwargs: Any) -> Any:
    """Every handler that would change the view: the view is read-only."""
    raise pyfuse3.FUSEError(errno.EROFS)


class ViewOperations(pyfuse3.Operations):
    def __init__(
        self,
        view: RepositoryView,
        managed_dir: str,
        cache_timeout: float,
        passthrough: bool = False,
    ) -> None:
        super().__init__()
        self.backings = Backings(passthrough)
        self._open: dict[int, int] = {}  # fd -> inode
        self._unservable: set[int] = set()  # inodes whose bad attributes were logged
        self.view = view
        self.table = view.table
        self.managed_dir = managed_dir
        self.timeout = cache_timeout
        self.lock = trio.Lock()  # one of: building a user's tree, applying catalog changes

    # -- attributes, built in one place ----------------------------------------------

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """The node's attributes; EIO (logged once per node) for one pyfuse3 cannot encode.
        The view checks catalog records first, so this is the last guard: an exception
        other than FUSEError would end the daemon for everybody."""
        try:
            return self._attributes(node)
        except (OverflowError, TypeError, ValueError) as exc:
            if node.inode not in self._unservable:
                self._unservable.add(node.inode)
                log.error("cannot serve %s: bad attributes (%s)", node.path(), exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.source is not None:
            refresh_file_stat(node, self.managed_dir)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = self.table.generation
        attr.st_mode = node.mode
        attr.st_nlink = 2 if node.is_dir else 1
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.st_size = node.size if node.source is not None else 4096
        attr.st_blksize = 1 << 20
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        return attr

    async def _dir(self, inode: int) -> Node:
        node = self.table.get(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.view.build_request(node) is not None:
            async with self.lock:  # the catalog follower does not apply changes meanwhile
                request = self.view.build_request(node)
                if request is not None:
                    exp_id, viewer = request
                    chunks = self.view.loader(viewer, self.view.snapshot)
                    first = await trio.to_thread.run_sync(next, chunks, [])
                    self.view.build(exp_id, first)
                    while chunk := await trio.to_thread.run_sync(next, chunks, []):
                        self.view.extend(exp_id, chunk)  # between chunks, others are served
        return node

    # -- namespace -------------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        if text in (".", ".."):
            # Asked by number, for any node (files too), whether or not the kernel still
            # holds it: how an NFS server reopens a handle after the inode was evicted
            # (FUSE_EXPORT_SUPPORT, which pyfuse3 asks for). A removed node: ENOENT,
            # which the kernel turns into ESTALE.
            node = self.table.get(parent_inode)
            return self.attributes(node.parent or node if text == ".." else node)
        parent = await self._dir(parent_inode)
        node = self.table.child(parent, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(node)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attributes(self.table.get(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None  # nodes live as long as the catalog says; nothing to free per lookup

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        await self._dir(inode)
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = await self._dir(fh)
        for node in self.table.listing(directory, start_id):
            try:
                attr = self.attributes(node)
            except pyfuse3.FUSEError:
                continue  # one bad entry is left out of the listing, not the whole listing
            if not pyfuse3.readdir_reply(token, os.fsencode(node.name), attr, node.inode):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    # -- reading ---------------------------------------------------------------------

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.table.get(inode)
        if node.source is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not node.mode & 0o444:  # the download policy forbids it, to root as well
            raise pyfuse3.FUSEError(errno.EACCES)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(os.path.join(self.managed_dir, node.source), os.O_RDONLY)
        except OSError as exc:
            raise pyfuse3.FUSEError(errno.EIO if exc.errno == errno.ENOENT else exc.errno) from None
        self._open[fd] = inode
        backing_id = self.backings.attach(inode, fd)
        if not backing_id:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # deeper readahead behind us
        return file_info(fd, backing_id)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def release(self, fh: int) -> None:
        self.backings.detach(self._open.pop(fh))
        os.close(fh)

    async def flush(self, fh: int) -> None:
        # Nothing to flush in a read-only view. ENOSYS (not success) makes the kernel stop
        # sending FLUSH at every close(): one round trip less per file read (measured:
        # reading 10k small files cold 3.4-3.9 s -> 2.8-3.3 s).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statfs_of(self.managed_dir)

    # -- extended attributes ---------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # ENOSYS makes the kernel stop asking for the rest of the mount. `ls -l` asks for
        # ACL and SELinux xattrs on every file: answering them made `ls -lR` ~8x slower
        # than native (measured; docs/performance.md). Provenance: `omerofs info FILESET`.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # -- everything that would change the view ---------------------------------------

    setattr = read_only
    mknod = read_only
    mkdir = read_only
    unlink = read_only
    rmdir = read_only
    symlink = read_only
    rename = read_only
    link = read_only
    create = read_only
    write = read_only
    setxattr = read_only
    removexattr = read_only
