"""The inode table of the ingest mount: names in the staging directory, by inode.

Inode numbers are ours (a counter), not the backing filesystem's, and each node knows
its parent and name, so a rename is one update and a node's path is always current.
No file descriptor is held per inode (the open-files limit is 20,000 here).

For NFS re-export (docs/shares.md) a number stays valid while its name exists, whether
or not the kernel still holds the inode, and never names another file in this daemon's
life (numbers are not reused). ``generation`` is drawn anew at each start: numbers are
handed out afresh then, so a handle from before a restart gets ESTALE, never the file
that took its number.
"""

from __future__ import annotations

import os

import pyfuse3


class StagedNode:
    __slots__ = ("inode", "parent", "name", "lookups", "children")

    def __init__(self, inode: int, parent: StagedNode | None, name: str) -> None:
        self.inode = inode
        self.parent = parent
        self.name = name
        self.lookups = 0
        self.children: dict[str, StagedNode] = {}

    def rel(self) -> str:
        """Path relative to the staging directory ('' for the root)."""
        parts = []
        node: StagedNode | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


class StagedTree:
    def __init__(self) -> None:
        self.root = StagedNode(pyfuse3.ROOT_INODE, None, "")
        self.root.lookups = 1
        self._nodes: dict[int, StagedNode] = {self.root.inode: self.root}
        self._next = pyfuse3.ROOT_INODE + 1
        self.generation = start_generation()

    def get(self, inode: int) -> StagedNode | None:
        return self._nodes.get(inode)

    def child(self, parent: StagedNode, name: str) -> StagedNode:
        """The node for ``name`` under ``parent``, created on first sight."""
        node = parent.children.get(name)
        if node is None:
            node = StagedNode(self._next, parent, name)
            self._next += 1
            parent.children[name] = node
            self._nodes[node.inode] = node
        return node

    def find(self, rel: str) -> StagedNode | None:
        node = self.root
        for part in filter(None, rel.split("/")):
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def detach(self, parent: StagedNode, name: str) -> StagedNode | None:
        """The name is gone from the directory; the node lives on while the kernel knows it."""
        node = parent.children.pop(name, None)
        if node is not None:
            node.parent = None if node.lookups == 0 else node.parent
            if node.lookups == 0:
                self._drop(node)
        return node

    def move(self, node: StagedNode, new_parent: StagedNode, new_name: str) -> None:
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        replaced = new_parent.children.get(new_name)
        if replaced is not None and replaced is not node:
            self.detach(new_parent, new_name)
        node.parent, node.name = new_parent, new_name
        new_parent.children[new_name] = node

    def forget(self, inode: int, count: int) -> None:
        """The kernel let go of the inode. A node whose name is still in the staging tree
        stays (with its number): an NFS server holding a handle of it asks for it again by
        number (LOOKUP of "."). Only a node that lost its name is dropped."""
        node = self._nodes.get(inode)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        attached = node.parent is not None and node.parent.children.get(node.name) is node
        if node.lookups == 0 and not attached:
            self._drop(node)

    def _drop(self, node: StagedNode) -> None:
        self._nodes.pop(node.inode, None)

    def __len__(self) -> int:
        return len(self._nodes)


def start_generation() -> int:
    """A 32-bit inode generation for one daemon's life (the kernel keeps 32 bits)."""
    return int.from_bytes(os.urandom(4), "little") or 1
