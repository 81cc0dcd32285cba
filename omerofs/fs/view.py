"""The read-only repository view as a whole: one home directory per user, each user's
subtree built on first use from just the filesets they may see (fetched through the
``loader``), and catalog changes applied as they arrive.

The view never decides visibility itself (``identity.can_see`` does, via the layout)
and never talks to FUSE: ``apply`` returns what the kernel must forget, and the
operations layer tells the kernel.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from omerofs.catalog.protocol import Changes, Fileset, Snapshot
from omerofs.catalog.rows import BadRows, clean_snapshot
from omerofs.fs.inodes import InodeTable, Node
from omerofs.fs.layout import UserLayout
from omerofs.identity import Viewer, make_viewer
from omerofs.template import sanitize_name

# (viewer, snapshot) -> the filesets up to snapshot.max_fileset_id the viewer may see, in
# chunks (a superset is fine: the layout applies can_see to each). Each chunk is one
# blocking catalog query: take them in a thread.
FilesetLoader = Callable[[Viewer, Snapshot], Iterator[list[Fileset]]]


def fetch_all(loader: FilesetLoader, viewer: Viewer, snap: Snapshot) -> list[Fileset]:
    return [fs for chunk in loader(viewer, snap) for fs in chunk]


HOME_MODE = stat.S_IFDIR | 0o500
_ADDITIVE = {
    ("Fileset", "INSERT"),
    ("Project", "INSERT"),
    ("Dataset", "INSERT"),
    ("Screen", "INSERT"),
    ("Plate", "INSERT"),
    ("ExperimenterGroup", "INSERT"),
    ("Experimenter", "INSERT"),
}
# changes that alter what one user (the event's entity id) may see
_PER_USER = {
    ("GroupExperimenterMap", "INSERT"),
    ("GroupExperimenterMap", "UPDATE"),
    ("GroupExperimenterMap", "DELETE"),  # others still see the data they saw in the group
}


@dataclass
class Invalidation:
    """What the kernel must drop from its caches after a change."""

    inodes: set[int] = field(default_factory=set)  # attributes/contents changed
    entries: list[tuple[int, str]] = field(default_factory=list)  # (parent inode, name) gone

    def __bool__(self) -> bool:
        return bool(self.inodes or self.entries)


class RepositoryView:
    """Every snapshot it takes passes ``clean_snapshot`` first, and every fileset the
    layout's checks: whatever a backend hands over, one bad record is skipped (logged
    once in ``bad_rows``) and never ends the daemon."""

    def __init__(self, snapshot: Snapshot, root_depth: int, loader: FilesetLoader) -> None:
        self.bad_rows = BadRows()
        snapshot.filesets = {}  # filesets live in the users' trees, fetched per user
        self.snapshot = clean_snapshot(snapshot, self.bad_rows)
        self.loader = loader
        self.root_depth = root_depth
        self.table = InodeTable(mtime_ns=time.time_ns())
        self._homes: dict[int, Node] = {}
        self._owner_of_home: dict[int, int] = {}  # home inode -> experimenter id
        self._layouts: dict[int, UserLayout] = {}
        self._sync_homes(Invalidation())

    @property
    def event_id(self) -> int:
        return self.snapshot.event_id

    @property
    def user_trees(self) -> int:
        """How many users' trees are built (each is loaded on first access): metrics."""
        return len(self._layouts)

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
                name = sanitize_name(exp.name)
                if self.table.child(self.table.root, name) is not None:
                    self.bad_rows.skip(f"user {exp.name!r} (id {exp.id})", f"{name!r} is taken")
                    continue
                home = self.table.add(
                    self.table.root,
                    name,
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

    def build_request(self, node: Node) -> tuple[int, Viewer] | None:
        """(experimenter, viewer) if ``node`` is a home whose tree is not built yet."""
        if not self.is_home(node):
            return None
        exp_id = self._owner_of_home.get(node.inode)
        if exp_id is None or exp_id in self._layouts:
            return None
        return exp_id, self.viewer_of(exp_id, self.snapshot)

    def build(self, exp_id: int, filesets: list[Fileset]) -> None:
        """Build a user's subtree from (the first chunk of) the filesets the loader
        fetched for them; ``extend`` adds the following chunks."""
        if exp_id not in self._layouts and exp_id in self._homes:
            self._layouts[exp_id] = self._build(exp_id, self._homes[exp_id], filesets)

    def extend(self, exp_id: int, filesets: list[Fileset]) -> None:
        layout = self._layouts[exp_id]
        for fs in filesets:
            layout.add_fileset(fs)
        layout.touched.clear()

    def materialize(self, node: Node) -> None:
        """Build a home's tree right here (blocking; the FUSE layer fetches in a thread)."""
        request = self.build_request(node)
        if request is not None:
            self.build(request[0], fetch_all(self.loader, request[1], self.snapshot))

    @staticmethod
    def viewer_of(exp_id: int, snap: Snapshot) -> Viewer:
        exp = snap.experimenters[exp_id]
        return make_viewer(
            exp.id,
            exp.admin,
            ((m.group_id, m.owner) for m in snap.memberships if m.experimenter_id == exp.id),
        )

    def _build(self, exp_id: int, home: Node, filesets: list[Fileset]) -> UserLayout:
        viewer = self.viewer_of(exp_id, self.snapshot)
        layout = UserLayout(self.table, home, viewer, self.snapshot, self.root_depth, self.bad_rows)
        layout.build(filesets)
        layout.touched.clear()
        return layout

    # -- following the catalog -------------------------------------------------------

    def rebuild_targets(self, changes: Changes) -> dict[int, Viewer]:
        """Built users whose trees ``changes`` invalidate (they must be fetched again),
        with their viewer under the new snapshot."""
        kinds = {(e.entity, e.action) for e in changes.events}
        if changes.snapshot.binary_access != self.snapshot.binary_access:
            affected = set(self._layouts)  # files may become readable or not, everywhere
        elif kinds <= _ADDITIVE:
            affected: set[int] = set()
        elif kinds <= _ADDITIVE | _PER_USER:
            affected = {e.entity_id for e in changes.events if (e.entity, e.action) in _PER_USER}
        else:  # e.g. a group's permission level changed: everyone may see differently
            affected = set(self._layouts)
        new = clean_snapshot(changes.snapshot, self.bad_rows)
        return {
            e: self.viewer_of(e, new)
            for e in affected & set(self._layouts)
            if e in new.experimenters
        }

    def apply(self, changes: Changes, refetched: dict[int, list[Fileset]]) -> Invalidation:
        """Bring the tree up to date with ``changes`` (and the filesets refetched for the
        ``rebuild_targets``); return what the kernel must forget."""
        inval = Invalidation()
        new = clean_snapshot(changes.snapshot, self.bad_rows)
        added = [new.filesets[i] for i in sorted(new.filesets)]
        new.filesets = {}
        known_projects, known_datasets = set(self.snapshot.projects), set(self.snapshot.datasets)
        known_screens, known_plates = set(self.snapshot.screens), set(self.snapshot.plates)
        self.snapshot = new
        for layout in self._layouts.values():
            layout.snapshot = new
        self._sync_homes(inval)
        new_projects = sorted(set(new.projects) - known_projects)
        new_datasets = sorted(set(new.datasets) - known_datasets)
        new_screens = sorted(set(new.screens) - known_screens)
        new_plates = sorted(set(new.plates) - known_plates)
        for exp_id, layout in list(self._layouts.items()):
            if exp_id in refetched:
                self._rebuild(exp_id, inval, refetched[exp_id])
                continue
            layout.add_containers(new_projects, new_datasets, new_screens, new_plates)
            for fs in added:
                layout.add_fileset(fs)
            inval.inodes.update(n.inode for n in layout.touched)
            layout.touched.clear()
        return inval

    def _rebuild(self, exp_id: int, inval: Invalidation, filesets: list[Fileset]) -> None:
        """Rebuild one user's subtree, keeping inode numbers of paths that survive."""
        home = self._homes[exp_id]
        old = dict(home.children or {})
        for child in old.values():
            self.table.remove(child)
        self._layouts[exp_id] = self._build(exp_id, home, filesets)
        for name, old_child in old.items():
            self._merge(home, name, old_child, inval)
        inval.inodes.add(home.inode)

    def _merge(self, parent: Node, name: str, old: Node, inval: Invalidation) -> None:
        new = self.table.child(parent, name)
        if new is None or new.is_dir != old.is_dir or new.source != old.source:
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
