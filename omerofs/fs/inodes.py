"""The inode table of a view: small ``__slots__`` nodes, one per name in the tree.

Every node has ONE set of attributes whoever asks (the kernel caches them per inode);
different users reach different nodes because each user has their own subtree.
Directory children are kept by name. Inode numbers only grow, and a rebuilt node takes
over the number of the node it replaces, so the inode number doubles as the position for
``readdir``: a listing resumes at a ``next_id`` by bisecting the children sorted by inode,
and never repeats or skips an entry even when entries come and go in between. The sorted
list is built when a directory is listed and dropped when it changes: most directories
(one per fileset) are never listed, and a sorted index per directory cost ~1 KB each
(measured: 4.1 KB per fileset for an admin's tree at 1M).

Nodes live as long as the catalog keeps them, not as long as the kernel holds their
inodes (FORGET frees nothing), so an inode number stays valid after eviction: what an
NFS server re-exporting the view needs (docs/shares.md).

For the same reason a fileset's own directory may hold its files only as a compact
``pending`` tuple (source paths and sizes) until someone looks inside: the nodes, inode
numbers and name strings of a million never-opened directories cost ~300 B each.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Iterator

import pyfuse3

from omerofs.errors import NotFound
from omerofs.fs.staging import start_generation

ROOT_INODE = pyfuse3.ROOT_INODE
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
DENIED_MODE = stat.S_IFREG  # an original the download policy forbids: no one may open it


class Node:
    """A directory (``children``, or ``pending`` files not made into nodes yet) or a file
    backed by a ManagedRepository entry (``source``: only its path is kept, not the
    catalog record: millions of these)."""

    __slots__ = (
        "inode",
        "parent",
        "name",
        "uid",
        "gid",
        "mode",
        "mtime_ns",
        "size",
        "children",
        "pending",
        "listed",
        "source",
        "stat_done",
    )

    def __init__(
        self,
        inode: int,
        parent: Node | None,
        name: str,
        uid: int,
        gid: int,
        mode: int,
        mtime_ns: int,
    ) -> None:
        self.inode = inode
        self.parent = parent
        self.name = name
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.size = 0
        self.children: dict[str, Node] | None = None
        # (cut, [uid, gid, mtime_ns,] source, size, source, size, ...): files whose path
        # below this directory is source[cut:]; ids default to the directory's own
        self.pending: tuple | None = None
        self.listed: list[Node] | None = None  # children in order, while unchanged
        self.source: str | None = None  # a file's path under ManagedRepository
        self.stat_done = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))


class InodeTable:
    """Owns inode numbers: allocation, lookup by number and by (parent, name), removal."""

    def __init__(
        self, uid: int = 0, gid: int = 0, mode: int = stat.S_IFDIR | 0o755, mtime_ns: int = 0
    ) -> None:
        self._nodes: dict[int, Node] = {}
        self._next_inode = ROOT_INODE + 1
        # numbers are handed out afresh at each start: a new generation makes an NFS
        # handle from an earlier daemon ESTALE instead of naming whatever has its number
        self.generation = start_generation()
        self.root = self._register(Node(ROOT_INODE, None, "", uid, gid, mode, mtime_ns))
        self._make_dir(self.root)

    def __len__(self) -> int:
        return len(self._nodes)

    def _register(self, node: Node) -> Node:
        self._nodes[node.inode] = node
        return node

    @staticmethod
    def _make_dir(node: Node) -> None:
        node.children = {}

    def get(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"stale inode {inode}")
        return node

    def child(self, parent: Node, name: str) -> Node | None:
        return self._children(parent).get(name)

    def holds(self, directory: Node, name: str) -> bool:
        """Whether ``name`` is in ``directory``, without making its pending files nodes."""
        if directory.pending is None:
            return name in self._children(directory)
        cut, _, files = _pending_files(directory)
        return any(source[cut:].split("/", 1)[0] == name for source in files[::2])

    def _children(self, directory: Node) -> dict[str, Node]:
        if directory.pending is not None:
            self._materialize(directory)
        assert directory.children is not None
        return directory.children

    def defer_files(
        self,
        directory: Node,
        cut: int,
        files: list[tuple[str, int]],
        uid: int,
        gid: int,
        mtime: int,
    ) -> None:
        """Give the new, empty ``directory`` its files (``(source, size)``, each at
        ``source[cut:]`` below it) without making nodes of them until it is looked into."""
        assert directory.children == {} and directory.pending is None
        flat = [item for pair in files for item in pair]
        if (uid, gid, mtime) == (directory.uid, directory.gid, directory.mtime_ns):
            directory.pending = (cut, *flat)
        else:
            directory.pending = (cut, uid, gid, mtime, *flat)
        directory.children = None
        directory.mtime_ns = max(directory.mtime_ns, mtime)

    def _materialize(self, directory: Node) -> None:
        cut, (uid, gid, mtime), files = _pending_files(directory)
        directory.pending = None
        directory.children = {}
        for source, size in zip(files[::2], files[1::2], strict=True):
            *dirs, name = source[cut:].split("/")
            parent: Node | None = directory
            for part in dirs:
                assert parent is not None and parent.children is not None
                sub = parent.children.get(part)
                if sub is None:
                    sub = self.add(parent, part, uid, gid, DIR_MODE, mtime)
                parent = sub if sub.is_dir else None  # a file holds the name: skip
            if parent is not None and parent.children is not None and name not in parent.children:
                self.add_file(parent, name, source, size, uid, gid, mtime)

    def traverse(self, node: Node) -> Iterator[Node]:
        """``node`` and everything below it, as a full traversal (``find``) sees it: pending
        files become nodes. (``walk`` visits only the nodes that exist.)"""
        yield node
        if node.is_dir:
            for child in list(self._children(node).values()):
                yield from self.traverse(child)

    def add_file(
        self,
        parent: Node,
        name: str,
        source: str,
        size: int,
        uid: int,
        gid: int,
        mtime: int,
        mode: int = FILE_MODE,
    ) -> Node:
        node = self.add(parent, name, uid, gid, mode, mtime)
        node.source = source
        node.size = size
        return node

    def add(
        self,
        parent: Node,
        name: str,
        uid: int,
        gid: int,
        mode: int,
        mtime_ns: int,
        inode: int | None = None,
    ) -> Node:
        """Create a node under ``parent``; a directory if ``mode`` says so."""
        children = self._children(parent)
        assert name not in children, name
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
        node = self._register(Node(inode, parent, name, uid, gid, mode, mtime_ns))
        if stat.S_ISDIR(mode):
            self._make_dir(node)
        children[name] = node
        parent.listed = None
        parent.mtime_ns = max(parent.mtime_ns, mtime_ns)
        return node

    def remove(self, node: Node) -> None:
        """Unlink ``node`` from its parent and forget it and everything below it."""
        parent = node.parent
        assert parent is not None and parent.children is not None
        del parent.children[node.name]
        parent.listed = None
        for gone in walk(node):
            self._nodes.pop(gone.inode, None)

    def renumber(self, node: Node, inode: int) -> None:
        """Give ``node`` the number ``inode`` of the node it replaces, so the kernel's cached
        dentries, open directories and listings in progress stay valid across a rebuild."""
        if node.inode == inode:
            return
        self._nodes.pop(node.inode, None)
        node.inode = inode
        self._nodes[inode] = node
        if node.parent is not None:
            node.parent.listed = None

    def listing(self, directory: Node, after: int) -> Iterator[Node]:
        """Children in inode order (creation order), starting after inode ``after``."""
        children = self._children(directory)
        if directory.listed is None:
            directory.listed = sorted(children.values(), key=_inode)
        listed = directory.listed
        yield from listed[bisect.bisect_right(listed, after, key=_inode) :]


def _inode(node: Node) -> int:
    return node.inode


def _pending_files(directory: Node) -> tuple[int, tuple[int, int, int], tuple]:
    """(cut, (uid, gid, mtime_ns), (source, size, source, size, ...)) of a pending dir."""
    pending = directory.pending
    assert pending is not None
    if isinstance(pending[1], int):  # explicit ids lead (sources are strings)
        return pending[0], pending[1:4], pending[4:]
    return pending[0], (directory.uid, directory.gid, directory.mtime_ns), pending[1:]


def walk(node: Node) -> Iterator[Node]:
    """``node`` and the nodes below it that exist (pending files are not made nodes)."""
    yield node
    if node.children:
        for child in list(node.children.values()):
            yield from walk(child)


def refresh_file_stat(node: Node, managed_dir: str) -> None:
    """Take the real size and mtime from the file on disk (following ``ln_s`` links)."""
    if node.stat_done or node.source is None:
        return
    try:
        st = os.stat(os.path.join(managed_dir, node.source))
        node.size, node.mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        pass  # keep the catalog's size; a missing original surfaces as EIO on open
    node.stat_done = True
