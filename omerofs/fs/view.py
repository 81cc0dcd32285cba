"""The read-only repository view as a whole: one home directory per user, each user's
subtree built on first use, and catalog changes applied as they arrive.

The view never decides visibility itself (``identity.can_see`` does, via the layout)
and never talks to FUSE: ``apply`` returns what the kernel must forget, and the
operations layer tells the kernel.
"""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass, field

from omerofs.catalog.protocol import Changes, Snapshot
from omerofs.fs.inodes import InodeTable, Node, walk
from omerofs.fs.layout import UserLayout
from omerofs.identity import make_viewer
from omerofs.template import sanitize_name

HOME_MODE = stat.S_IFDIR | 0o500
_ADDITIVE = {
    ("Fileset", "INSERT"),
    ("Project", "INSERT"),
    ("Dataset", "INSERT"),
    ("ExperimenterGroup", "INSERT"),
    ("Experimenter", "INSERT"),
}
# changes that alter what one user (the event's entity id) may see
_PER_USER = {("GroupExperimenterMap", "INSERT"), ("GroupExperimenterMap", "UPDATE")}


@dataclass
class Invalidation:
    """What the kernel must drop from its caches after a change."""

    inodes: set[int] = field(default_factory=set)  # attributes/contents changed
    entries: list[tuple[int, str]] = field(default_factory=list)  # (parent inode, name) gone

    def __bool__(self) -> bool:
        return bool(self.inodes or self.entries)


class RepositoryView:
    def __init__(self, snapshot: Snapshot, root_depth: int) -> None:
        self.snapshot = snapshot
        self.root_depth = root_depth
        self.table = InodeTable(mtime_ns=time.time_ns())
        self._homes: dict[int, Node] = {}
        self._owner_of_home: dict[int, int] = {}  # home inode -> experimenter id
        self._layouts: dict[int, UserLayout] = {}
        self._sync_homes(Invalidation())

    @property
    def event_id(self) -> int:
        return self.snapshot.event_id

    # -- homes -----------------------------------------------------------------------

    def _sync_homes(self, inval: Invalidation) -> None:
        """One directory per experimenter, owned by their uid, mode 0500."""
        snap = self.snapshot
        for exp_id, home in list(self._homes.items()):
            if exp_id not in snap.experimenters:
                inval.entries.append((self.table.root.inode, home.name))
                self.table.remove(home)
                del self._homes[exp_id]
                del self._owner_of_home[home.inode]
                self._layouts.pop(exp_id, None)
        for exp in sorted(snap.experimenters.values(), key=lambda e: e.id):
            group = (
                snap.groups.get(exp.default_group_id) if exp.default_group_id is not None else None
            )
            gid = group.gid if group else 0
            home = self._homes.get(exp.id)
            if home is None:
                home = self.table.add(
                    self.table.root,
                    sanitize_name(exp.name),
                    exp.uid,
                    gid,
                    HOME_MODE,
                    self.table.root.mtime_ns,
                )
                self._homes[exp.id] = home
                self._owner_of_home[home.inode] = exp.id
                inval.inodes.add(self.table.root.inode)
            elif (home.uid, home.gid) != (exp.uid, gid):
                home.uid, home.gid = exp.uid, gid
                inval.inodes.add(home.inode)

    def is_home(self, node: Node) -> bool:
        return node.parent is self.table.root

    def materialize(self, node: Node) -> None:
        """Build a user's subtree the first time anything below their home is asked for."""
        if not self.is_home(node):
            return
        exp_id = self._owner_of_home.get(node.inode)
        if exp_id is None or exp_id in self._layouts:
            return
        self._layouts[exp_id] = self._build(exp_id, node)

    def _build(self, exp_id: int, home: Node) -> UserLayout:
        snap = self.snapshot
        exp = snap.experimenters[exp_id]
        viewer = make_viewer(
            exp.id,
            exp.admin,
            ((m.group_id, m.owner) for m in snap.memberships if m.experimenter_id == exp.id),
        )
        layout = UserLayout(self.table, home, viewer, snap, self.root_depth)
        layout.build()
        layout.touched.clear()
        return layout

    # -- following the catalog -------------------------------------------------------

    def apply(self, changes: Changes) -> Invalidation:
        """Bring the tree up to date with ``changes``; return what the kernel must forget."""
        inval = Invalidation()
        new = changes.snapshot
        known_projects, known_datasets = set(self.snapshot.projects), set(self.snapshot.datasets)
        new.filesets = {**self.snapshot.filesets, **new.filesets}
        added = sorted(set(new.filesets) - set(self.snapshot.filesets))
        self.snapshot = new
        for layout in self._layouts.values():
            layout.snapshot = new
        self._sync_homes(inval)
        kinds = {(e.entity, e.action) for e in changes.events}
        if kinds <= _ADDITIVE:
            affected: set[int] = set()
        elif kinds <= _ADDITIVE | _PER_USER:
            affected = {e.entity_id for e in changes.events if (e.entity, e.action) in _PER_USER}
        else:  # e.g. a group's permission level changed: everyone may see differently
            affected = set(self._layouts)
        new_projects = sorted(set(new.projects) - known_projects)
        new_datasets = sorted(set(new.datasets) - known_datasets)
        for exp_id, layout in list(self._layouts.items()):
            if exp_id in affected:
                self._rebuild(exp_id, inval)
                continue
            layout.add_containers(new_projects, new_datasets)
            for fileset_id in added:
                layout.add_fileset(new.filesets[fileset_id])
            inval.inodes.update(n.inode for n in layout.touched)
            layout.touched.clear()
        return inval

    def _rebuild(self, exp_id: int, inval: Invalidation) -> None:
        """Rebuild one user's subtree, keeping inode numbers of paths that survive."""
        home = self._homes[exp_id]
        old = dict(home.children or {})
        for child in old.values():
            self.table.remove(child)
        self._layouts[exp_id] = self._build(exp_id, home)
        for name, old_child in old.items():
            self._merge(home, name, old_child, inval)
        inval.inodes.add(home.inode)

    def _merge(self, parent: Node, name: str, old: Node, inval: Invalidation) -> None:
        new = self.table.child(parent, name)
        if new is None or new.is_dir != old.is_dir or new.entry != old.entry:
            inval.entries.append((parent.inode, name))
            return
        self.table.renumber(new, old.inode)
        if (new.uid, new.gid, new.mode) != (old.uid, old.gid, old.mode):
            inval.inodes.add(new.inode)
        if old.children:
            for child_name, child in old.children.items():
                self._merge(new, child_name, child, inval)
            if set(old.children) != set(new.children or {}):
                inval.inodes.add(new.inode)

    def stats(self) -> dict[str, int]:
        return {
            "inodes": len(self.table),
            "materialized_users": len(self._layouts),
            "filesets": len(self.snapshot.filesets),
            "nodes_below_homes": sum(1 for h in self._homes.values() for _ in walk(h)),
        }
