"""The inode table of a view: small ``__slots__`` nodes, one per name in the tree.

Every node has ONE set of attributes whoever asks (the kernel caches them per inode);
different users reach different nodes because each user has their own subtree.
Directory children are kept by name for lookup and by insertion sequence for
``readdir``, so a listing resumed at a ``next_id`` never repeats or skips an entry
even when entries come and go in between.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pyfuse3
from sortedcontainers import SortedDict

from omerofs.catalog.protocol import FilesetEntry
from omerofs.errors import NotFound

ROOT_INODE = pyfuse3.ROOT_INODE
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444


class Node:
    """A directory (``children`` set) or a file backed by a ManagedRepository entry."""

    __slots__ = (
        "inode",
        "parent",
        "name",
        "seq",
        "uid",
        "gid",
        "mode",
        "mtime_ns",
        "size",
        "children",
        "order",
        "next_seq",
        "entry",
        "fileset_id",
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
        self.seq = 0
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.size = 0
        self.children: dict[str, Node] | None = None
        self.order: SortedDict | None = None
        self.next_seq = 1
        self.entry: FilesetEntry | None = None
        self.fileset_id = 0
        self.stat_done = False

    @property
    def is_dir(self) -> bool:
        return self.children is not None

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
        node.order = SortedDict()

    def get(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"stale inode {inode}")
        return node

    def child(self, parent: Node, name: str) -> Node | None:
        assert parent.children is not None
        return parent.children.get(name)

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
        assert parent.children is not None and parent.order is not None
        assert name not in parent.children, name
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
        node = self._register(Node(inode, parent, name, uid, gid, mode, mtime_ns))
        if stat.S_ISDIR(mode):
            self._make_dir(node)
        node.seq = parent.next_seq
        parent.next_seq += 1
        parent.children[name] = node
        parent.order[node.seq] = node
        parent.mtime_ns = max(parent.mtime_ns, mtime_ns)
        return node

    def remove(self, node: Node) -> None:
        """Unlink ``node`` from its parent and forget it and everything below it."""
        parent = node.parent
        assert parent is not None and parent.children is not None and parent.order is not None
        del parent.children[node.name]
        del parent.order[node.seq]
        for gone in walk(node):
            self._nodes.pop(gone.inode, None)

    def renumber(self, node: Node, inode: int) -> None:
        """Give ``node`` the number ``inode`` (of a node it replaces), so the kernel's
        cached dentries and open directories stay valid across a rebuild."""
        if node.inode == inode:
            return
        self._nodes.pop(node.inode, None)
        node.inode = inode
        self._nodes[inode] = node

    def listing(self, directory: Node, after: int) -> Iterator[Node]:
        """Children in insertion order, starting after sequence number ``after``."""
        assert directory.order is not None
        for seq in directory.order.irange(minimum=after + 1):
            yield directory.order[seq]


def walk(node: Node) -> Iterator[Node]:
    yield node
    if node.children:
        for child in list(node.children.values()):
            yield from walk(child)


def refresh_file_stat(node: Node, managed_dir: str) -> None:
    """Take the real size and mtime from the file on disk (following ``ln_s`` links)."""
    if node.stat_done or node.entry is None:
        return
    try:
        st = os.stat(os.path.join(managed_dir, node.entry.repo_path))
        node.size, node.mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        pass  # keep the catalog's size; a missing original surfaces as EIO on open
    node.stat_done = True
