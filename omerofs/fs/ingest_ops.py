"""pyfuse3 handlers of the writable ingest mount: a passthrough to the staging directory.

Handlers translate; the ingest service decides (what may change, when a fileset is
closed). Where the kernel allows it (fs/passthrough.py), an opened file is handed to the
kernel, which writes and reads the staging file itself, errors (ENOSPC) included.
Otherwise data goes to the staging file with ``pwrite`` on the loop thread (the kernel's
writeback cache merges small writes into big requests), and every error a write or fsync
meets reaches the writer through ``write``, ``flush`` or ``fsync``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from omerofs.errors import OmerofsError
from omerofs.fs.common import fuse_errors, statfs_of
from omerofs.fs.passthrough import Backings, file_info
from omerofs.fs.staging import StagedNode, StagedTree
from omerofs.ingest.paths import GROUP_PREFIX, group_dir_name
from omerofs.ingest.service import IngestService

log = logging.getLogger(__name__)
ATTR_TIMEOUT = 60.0  # every change goes through this mount (or is invalidated): cache long
STATE_XATTRS = (
    b"user.omerofs.state",
    b"user.omerofs.error",
    b"user.omerofs.fileset",
    b"user.omerofs.job",
    b"user.omerofs.warning",  # imported, with an error reported after the images landed
)
ACTION_XATTRS = (b"user.omerofs.commit", b"user.omerofs.retry")
# Kept on the staging file for Samba (docs/shares.md): user.* (DOSATTRIB, streams as
# user.DosStream.*, Windows EAs) and the NT ACL blob of vfs_acl_xattr. Nothing else: the
# kernel does not enforce POSIX ACLs here, and a file capability is refused so that no
# staged file ever carries one (KILLPRIV_V2 makes clearing them the daemon's job).
KEPT_XATTR_PREFIX = b"user."
KEPT_XATTRS = (b"security.NTACL",)
CAPABILITY_XATTR = b"security.capability"
# Ask the kernel for FUSE_HANDLE_KILLPRIV_V2 (patched pyfuse3): it then asks for
# security.capability once per inode instead of before every write(2), so xattrs can be
# readable by default. OMEROFS_KILLPRIV_V2=0 turns it off (to measure the difference).
HANDLE_KILLPRIV_V2 = os.environ.get("OMEROFS_KILLPRIV_V2", "1") != "0"


@dataclass
class Handle:
    fd: int
    node: StagedNode
    writable: bool
    rel: str  # where the tracker counted it
    error: int = 0  # first write error, reported again at flush/fsync
    failed: int = 0  # a write failed through this handle (kept: its fileset is held)


class IngestOperations(pyfuse3.Operations):
    # Asked for always; when the kernel grants passthrough it goes without (the kernel
    # refuses the two together, and passthrough files use the staging fs's own cache).
    enable_writeback_cache = True

    def __init__(
        self,
        service: IngestService,
        staging: Path,
        is_member: Callable[[str, str], bool],
        readable_xattrs: bool | None = False,
        passthrough: bool = False,
        *,
        sealed_uid: int = -1,
    ) -> None:
        super().__init__()
        # The owner of sealed originals (the ManagedRepository directory's: root, or the
        # OMERO server's account; -1 unknown): see _attr.
        self.sealed_uid = sealed_uid
        self.backings = Backings(passthrough)
        # False: getxattr/listxattr answer ENOSYS, so the kernel stops asking for
        # security.capability before every write(2): small writes get ~10x faster, and
        # state is read from the error report and `omerofs status` instead of xattrs.
        # None (auto): on if the kernel granted KILLPRIV_V2, which is known only after
        # FUSE_INIT: decided at the first xattr request or describe_xattrs().
        self.readable_xattrs = readable_xattrs
        self._xattrs_forced = readable_xattrs is not None
        self.service = service
        self.staging = str(staging)
        self.tree = StagedTree()
        self.is_member = is_member
        self._handles: dict[int, Handle] = {}
        self._listings: dict[int, list[str]] = {}
        self._next_dir_fh = 1
        service.paths_changed = self.forget_paths

    # -- helpers ---------------------------------------------------------------------

    def _node(self, inode: int) -> StagedNode:
        node = self.tree.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _path(self, rel: str) -> str:
        return os.path.join(self.staging, rel) if rel else self.staging

    def _is_dir(self, rel: str) -> bool:
        return stat.S_ISDIR(os.lstat(self._path(rel)).st_mode)

    def _attr(self, node: StagedNode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = self.tree.generation  # new at each start: old handles ESTALE
        attr.entry_timeout = ATTR_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        for name in (
            "st_mode",
            "st_nlink",
            "st_uid",
            "st_gid",
            "st_rdev",
            "st_size",
            "st_atime_ns",
            "st_mtime_ns",
            "st_ctime_ns",
            "st_blocks",
        ):
            setattr(attr, name, getattr(st, name))
        attr.st_blksize = 1 << 20
        if node is self.tree.root:
            # On disk the staging directory is root's and 0700 (ownership.py): users reach
            # their staged files only through the mount, where each user's own 0700
            # directory guards them.
            attr.st_mode = stat.S_IFDIR | 0o755
        elif st.st_uid == self.sealed_uid and stat.S_ISREG(st.st_mode):
            self._show_as_writers(node, attr)
        return attr

    def _show_as_writers(self, node: StagedNode, attr: pyfuse3.EntryAttributes) -> None:
        """A staged file sealed by an in-place import (the repository account's, no write
        bit: imports/transfer.py) is shown as its writer's (the owner of their
        ``staging/<user>``) and owner-writable: the writer still reads it whatever their
        umask was, and a write reaches the service, which refuses it (EPERM) or gives
        them a copy of their own (a lingering ``*_rm`` name), instead of the kernel
        answering EACCES from the sealed mode once its cached attributes expire."""
        try:
            writer = os.lstat(self._path(node.rel().split("/", 1)[0]))
        except OSError:
            return
        if writer.st_uid != self.sealed_uid:
            attr.st_uid, attr.st_gid = writer.st_uid, writer.st_gid
            attr.st_mode |= stat.S_IWUSR

    def _entry(self, parent: StagedNode, name: str) -> pyfuse3.EntryAttributes:
        """A node only for a name that exists: lstat first (a failed lookup leaves none)."""
        st = os.lstat(self._path(_join(parent.rel(), name)))
        node = self.tree.child(parent, name)
        attr = self._attr(node, st)
        node.lookups += 1
        return attr

    def _new_rel(self, parent: StagedNode, name: bytes) -> tuple[str, str]:
        """Check a name about to be created (or renamed to) under ``parent``."""
        text = os.fsdecode(name)
        if parent is self.tree.root:
            raise pyfuse3.FUSEError(errno.EPERM)  # user directories are made by omerofs
        rel = f"{parent.rel()}/{text}"
        self.service.check_mutable(rel)
        return text, rel

    @staticmethod
    def _own(path: str, ctx: pyfuse3.RequestContext, follow: bool = True) -> None:
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=follow)

    # -- namespace -------------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            target = parent
        elif text == "..":
            target = parent.parent or parent
        else:
            return self._entry(parent, text)
        attr = self._attr(target, os.lstat(self._path(target.rel())))
        target.lookups += 1
        return attr

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.tree.forget(inode, count)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        return self._attr(node, os.lstat(self._path(node.rel())))

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        rel = node.rel()
        path = self._path(rel)
        times_only = not (
            fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid
        )
        if times_only:
            # With the writeback cache the kernel itself flushes mtime/ctime at any time
            # after a write; that must neither disturb an import nor count as a change.
            try:
                self.service.check_mutable(rel)
            except OmerofsError:
                return self._attr(node, os.lstat(path))
        else:
            self.service.check_mutable(rel)
        handle = self._handles.get(fh) if fh is not None else None
        if fields.update_size:
            if handle is not None:
                os.ftruncate(handle.fd, attr.st_size)
            else:
                os.truncate(path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(
                path,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1,
                follow_symlinks=False,
            )
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            times = (
                attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
            )
            os.utime(path, ns=times, follow_symlinks=False)
        if not times_only:
            self.service.changed(rel)
        return self._attr(node, os.lstat(path))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(os.readlink(self._path(self._node(inode).rel())))

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text, rel = self._new_rel(parent, name)
        group = group_dir_name(rel)
        if group is not None or (parent.parent is self.tree.root and text.startswith(GROUP_PREFIX)):
            user = rel.split("/", 1)[0]
            if not group or not await trio.to_thread.run_sync(self.is_member, user, group):
                log.info("refused %s: %s is not a member of a group %r", rel, user, group)
                raise pyfuse3.FUSEError(errno.EACCES)
        path = self._path(rel)
        os.mkdir(path, mode & ~ctx.umask & 0o7777)
        self._own(path, ctx)
        return self._entry(parent, text)

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise pyfuse3.FUSEError(errno.EPERM)  # no device nodes in a staging area
        parent = self._node(parent_inode)
        text, rel = self._new_rel(parent, name)
        path = self._path(rel)
        os.mknod(path, (mode & ~ctx.umask & 0o7777) | stat.S_IFMT(mode))
        self._own(path, ctx)
        self.service.changed(rel)
        return self._entry(parent, text)

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text, rel = self._new_rel(parent, name)
        path = self._path(rel)
        os.symlink(target, path)
        self._own(path, ctx, follow=False)
        return self._entry(parent, text)

    @fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # one name per staged file keeps filesets clear

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._node(parent_inode)
        rel = f"{parent.rel()}/{os.fsdecode(name)}" if parent.rel() else os.fsdecode(name)
        self.service.check_mutable(rel, removing=True)
        os.unlink(self._path(rel))
        self.tree.detach(parent, os.fsdecode(name))
        await self.service.dropped(rel)
        self.service.changed(rel)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._node(parent_inode)
        if parent is self.tree.root:
            raise pyfuse3.FUSEError(errno.EPERM)
        rel = f"{parent.rel()}/{os.fsdecode(name)}"
        self.service.check_mutable(rel, removing=True)
        os.rmdir(self._path(rel))
        self.tree.detach(parent, os.fsdecode(name))

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        if old_parent is self.tree.root:
            raise pyfuse3.FUSEError(errno.EPERM)
        old_text = os.fsdecode(name_old)
        old_rel = f"{old_parent.rel()}/{old_text}"
        self.service.check_mutable(old_rel)
        new_text, new_rel = self._new_rel(new_parent, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(self._path(new_rel)):
            raise pyfuse3.FUSEError(errno.EEXIST)
        os.rename(self._path(old_rel), self._path(new_rel))
        node = self.tree.child(old_parent, old_text)
        self.tree.move(node, new_parent, new_text)
        self._rekey_open_handles()
        self.service.changed(old_rel)
        if not self._is_dir(new_rel):
            self.service.changed(new_rel)
            return
        # a renamed directory: every file below it may now belong to another fileset
        for rel in await trio.to_thread.run_sync(self._files_below, new_rel):
            self.service.changed(rel)

    def _files_below(self, rel: str) -> list[str]:
        return [
            os.path.relpath(os.path.join(dirpath, name), self.staging)
            for dirpath, _, filenames in os.walk(self._path(rel))
            for name in filenames
        ]

    def _rekey_open_handles(self) -> None:
        """A rename moved open files: count their handles under their new fileset."""
        for handle in self._handles.values():
            if handle.writable and handle.node.rel() != handle.rel:
                self.service.released(handle.rel)
                handle.rel = handle.node.rel()
                self.service.opened(handle.rel)

    # -- files -----------------------------------------------------------------------

    @staticmethod
    def _backing_flags(flags: int) -> int:
        """With the writeback cache the kernel may read a write-only file (to fill pages)
        and handles O_APPEND itself."""
        flags &= ~os.O_APPEND
        if flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    def _open_handle(self, fd: int, node: StagedNode, writable: bool) -> pyfuse3.FileInfo:
        handle = Handle(fd, node, writable, node.rel())
        self._handles[fd] = handle
        if writable:
            self.service.opened(handle.rel)
        return file_info(fd, self.backings.attach(node.inode, fd))

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        rel = node.rel()
        writable = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writable and self.service.is_lingering(rel):  # imported (rm), writer came back
            await self.service.reopen_imported(rel, bool(flags & os.O_TRUNC))
        if writable:
            self.service.check_mutable(rel)
        fd = os.open(self._path(rel), self._backing_flags(flags) if writable else flags)
        return self._open_handle(fd, node, writable)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._node(parent_inode)
        text, rel = self._new_rel(parent, name)
        path = self._path(rel)
        fd = os.open(path, self._backing_flags(flags) | os.O_CREAT, mode & ~ctx.umask & 0o7777)
        try:
            os.fchown(fd, ctx.uid, ctx.gid)
            attr = self._entry(parent, text)
        except BaseException:
            os.close(fd)
            raise
        info = self._open_handle(fd, self.tree.child(parent, text), True)
        self.service.changed(rel)
        return info, attr

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        view = memoryview(buf)
        done = 0
        try:
            while done < len(buf):
                done += os.pwrite(fh, view[done:], off + done)
        except OSError as exc:
            handle = self._handles.get(fh)
            if handle is not None and not handle.error:
                handle.error = exc.errno or errno.EIO
            if handle is not None:
                handle.failed = exc.errno or errno.EIO
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return done

    def _raise_pending(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None and handle.error:
            code, handle.error = handle.error, 0
            raise pyfuse3.FUSEError(code)

    async def flush(self, fh: int) -> None:
        self._raise_pending(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._raise_pending(fh)
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        os.close(fh)
        if handle is not None:
            self.backings.detach(handle.node.inode)
            if handle.writable:
                self.service.released(handle.rel, handle.failed)

    # -- directories -----------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        names = sorted(os.listdir(self._path(node.rel())))
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._listings[fh] = [node.rel(), *names]  # a snapshot: resumable and stable
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        rel, *names = self._listings[fh]
        directory = self.tree.find(rel)
        if directory is None:
            return
        for index in range(start_id, len(names)):
            name = names[index]
            try:  # gone since opendir: skipped, and no node made for it
                st = os.lstat(self._path(_join(rel, name)))
            except FileNotFoundError:
                continue
            node = self.tree.child(directory, name)
            attr = self._attr(node, st)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, index + 1):
                break
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        rel = self._listings.get(fh, [""])[0]
        await trio.to_thread.run_sync(_fsync_directory, self._path(rel))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statfs_of(self.staging)

    # -- extended attributes: state, commit, retry; Windows metadata for Samba ---------

    handle_killpriv_v2 = HANDLE_KILLPRIV_V2  # read by the patched pyfuse3's init()

    def xattrs_readable(self) -> bool:
        """Whether getxattr/listxattr answer (auto resolved once, after FUSE_INIT)."""
        if self.readable_xattrs is None:
            self.readable_xattrs = killpriv_v2_granted()
        return self.readable_xattrs

    def describe_xattrs(self) -> str:
        """The start-up log line: whether xattrs are readable, and why."""
        granted = killpriv_v2_granted()
        why = (
            "granted (the kernel asks for security.capability once per file)"
            if granted
            else "not granted (kernel < 5.11, pyfuse3 without omerofs's patch, or "
            "OMEROFS_KILLPRIV_V2=0): the kernel asks for security.capability before every "
            "write(2) while getxattr answers"
        )
        on = self.xattrs_readable()
        how = "forced by --xattrs/--no-xattrs or [ingest] xattrs" if self._xattrs_forced else "auto"
        return f"killpriv_v2: {why}; readable xattrs: {'on' if on else 'off'} ({how})"

    @staticmethod
    def _kept(name: bytes) -> bool:
        return name.startswith(KEPT_XATTR_PREFIX) or name in KEPT_XATTRS

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not self.xattrs_readable():
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if not self._kept(name):  # security.capability (asked per inode), ACLs, SELinux
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        rel = self._node(inode).rel()
        if name in STATE_XATTRS:
            state = await self.service.state(rel, self._is_dir(rel))
            if state is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            value = {
                b"user.omerofs.state": state.state,
                b"user.omerofs.error": state.error,
                b"user.omerofs.fileset": _text(state.fileset_id),
                b"user.omerofs.job": _text(state.job_id),
                b"user.omerofs.warning": state.warning,
            }[name]
            if value is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return value.encode()
        try:
            return os.getxattr(self._path(rel), name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if not self.xattrs_readable():
            raise pyfuse3.FUSEError(errno.ENOSYS)
        rel = self._node(inode).rel()
        names = [
            name
            for name in map(os.fsencode, os.listxattr(self._path(rel), follow_symlinks=False))
            if self._kept(name) and not name.startswith(b"user.omerofs.")
        ]
        state = await self.service.state(rel, self._is_dir(rel))
        if state is not None:
            names.append(b"user.omerofs.state")
            if state.error:
                names.append(b"user.omerofs.error")
            if state.fileset_id is not None:
                names.append(b"user.omerofs.fileset")
            if state.warning:
                names.append(b"user.omerofs.warning")
        return names

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        rel = self._node(inode).rel()
        if name in ACTION_XATTRS:
            await self.service.commit(rel, self._is_dir(rel))
            return
        if name.startswith(b"user.omerofs.") or name == CAPABILITY_XATTR:
            raise pyfuse3.FUSEError(errno.EPERM)
        if not self._kept(name):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self.service.check_mutable(rel)
        os.setxattr(self._path(rel), name, value, follow_symlinks=False)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        rel = self._node(inode).rel()
        if name.startswith(b"user.omerofs."):
            raise pyfuse3.FUSEError(errno.EPERM)
        if not self._kept(name):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        self.service.check_mutable(rel)
        try:
            os.removexattr(self._path(rel), name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    # -- the service changed staged files behind the kernel's back -------------------

    def forget_paths(self, rels: list[str]) -> None:
        for rel in rels:
            parent_rel, _, name = rel.rpartition("/")
            parent = self.tree.find(parent_rel)
            if parent is None or name not in parent.children:
                continue  # the kernel never saw this name: nothing cached to drop
            if not os.path.lexists(self._path(rel)):
                self.tree.detach(parent, name)
            pyfuse3.invalidate_entry_async(parent.inode, os.fsencode(name))


def killpriv_v2_granted() -> bool:
    """Did the kernel grant FUSE_HANDLE_KILLPRIV_V2 at INIT (only omerofs's patched
    pyfuse3 can ask for it and say so: tools/pyfuse3-passthrough)?"""
    granted = getattr(pyfuse3, "killpriv_v2_enabled", None)
    return bool(granted()) if granted is not None else False


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _fsync_directory(path: str | Path) -> None:
    """Flush a staging directory's entries to disk; off the loop, as ``fsync`` is (a
    journal commit can take long, and every other request would wait for it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
