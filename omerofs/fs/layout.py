"""Where each visible fileset appears inside one user's directory of the view.

    <user>/ManagedRepository/<templatePrefix>/<files>        OMERO's own paths
    <user>/Groups/<group>/Projects/<project>/<dataset>/<fileset>
    <user>/Groups/<group>/Datasets/<dataset>/<fileset>          datasets in no project
    <user>/Groups/<group>/Screens/<screen>/<plate>/<fileset>    a plate and its fileset
    <user>/Groups/<group>/Plates/<plate>/<fileset>              plates in no screen
    <user>/Groups/<group>/Orphans/<fileset>                     filesets in neither

A fileset shows up in the named tree as its top-level name (the file itself, or its
directory). Names are claimed in id order, so they are deterministic: the oldest object
keeps the plain name, a later one with the same name gets ``~<id>`` (containers) or
``~fs<id>`` (filesets) before its extension. Adding objects never renames existing ones.

Originals OMERO's download policy (``omerofs.policy``) forbids this user to read are
listed with mode 0000: the kernel refuses them (EACCES) and the daemon refuses them to
root as well, as OMERO lists a plate's files but refuses their download.
"""

from __future__ import annotations

from collections.abc import Sequence

from omerofs.catalog.protocol import Container, Fileset, Snapshot
from omerofs.catalog.rows import BadRows, fileset_problem
from omerofs.fs.inodes import DENIED_MODE, DIR_MODE, FILE_MODE, InodeTable, Node
from omerofs.identity import Viewer, can_see
from omerofs.policy import can_edit, download_allowed
from omerofs.template import sanitize_name

MANAGED = "ManagedRepository"
GROUPS = "Groups"
PROJECTS = "Projects"
DATASETS = "Datasets"
ORPHANS = "Orphans"
SCREENS = "Screens"
PLATES = "Plates"


def suffixed(name: str, tag: str, is_dir: bool) -> str:
    """``img.ome.tif`` + ``fs7`` -> ``img~fs7.ome.tif``; directories get the tag at the end."""
    if is_dir or "." not in name.lstrip("."):
        return f"{name}~{tag}"
    lead = len(name) - len(name.lstrip("."))
    stem, _, ext = name[lead:].partition(".")
    return f"{name[:lead]}{stem}~{tag}.{ext}"


class UserLayout:
    """Builds and extends one user's subtree in the inode table."""

    def __init__(
        self,
        table: InodeTable,
        home: Node,
        viewer: Viewer,
        snapshot: Snapshot,
        root_depth: int,
        bad_rows: BadRows | None = None,
    ) -> None:
        self.table = table
        self.bad_rows = bad_rows or BadRows()
        self.home = home
        self.viewer = viewer
        self.snapshot = snapshot
        self.root_depth = root_depth
        self.touched: set[Node] = set()
        self._dataset_dirs: dict[int, list[Node]] = {}
        self._project_dirs: dict[int, Node] = {}
        self._group_dirs: dict[int, Node] = {}
        self._screen_dirs: dict[int, Node] = {}
        self._plate_dirs: dict[int, list[Node]] = {}
        # the download policy's verdict (other files, *.txt) per (group, owner, in a plate)
        self._access: dict[tuple[int, int, bool], tuple[bool, bool]] = {}
        self._access_of = snapshot.binary_access
        uid, gid, mtime = home.uid, home.gid, home.mtime_ns
        self.managed = self._dir(home, MANAGED, uid, gid, mtime)
        self.groups = self._dir(home, GROUPS, uid, gid, mtime)

    # -- building --------------------------------------------------------------------

    def build(self, filesets: list[Fileset]) -> None:
        snap = self.snapshot
        for gid in sorted(
            g.group_id for g in snap.memberships if g.experimenter_id == self.viewer.experimenter_id
        ):
            if gid in snap.groups and snap.groups[gid].name != "system":
                self._group_dir(gid)
        self.add_containers(
            sorted(snap.projects), sorted(snap.datasets), sorted(snap.screens), sorted(snap.plates)
        )
        for fs in sorted(filesets, key=lambda f: f.id):
            self.add_fileset(fs)

    def visible(self, owner_id: int, group_id: int) -> bool:
        group = self.snapshot.groups.get(group_id)
        return group is not None and can_see(self.viewer, owner_id, group_id, group.level)

    def add_containers(
        self,
        project_ids: Sequence[int],
        dataset_ids: Sequence[int],
        screen_ids: Sequence[int] = (),
        plate_ids: Sequence[int] = (),
    ) -> None:
        snap = self.snapshot
        self._add_screens(screen_ids, plate_ids)
        for pid in project_ids:
            project = snap.projects[pid]
            if self.visible(project.owner_id, project.group_id):
                parent = self._dir(self._group_dir(project.group_id), PROJECTS)
                self._project_dirs[pid] = self._container_dir(parent, project)
        projects_of: dict[int, list[int]] = {}
        for pid, did in snap.project_dataset:
            projects_of.setdefault(did, []).append(pid)
        for did in dataset_ids:
            dataset = snap.datasets[did]
            if not self.visible(dataset.owner_id, dataset.group_id):
                continue
            parents = [
                self._project_dirs[p]
                for p in sorted(projects_of.get(did, []))
                if p in self._project_dirs
            ]
            if not parents:
                parents = [self._dir(self._group_dir(dataset.group_id), DATASETS)]
            self._dataset_dirs[did] = [self._container_dir(p, dataset) for p in parents]

    def _add_screens(self, screen_ids: Sequence[int], plate_ids: Sequence[int]) -> None:
        """Screens under ``Screens/``, each plate under its screens, or under ``Plates/``
        when it is in none the user sees (as datasets under ``Projects/``/``Datasets/``)."""
        snap = self.snapshot
        for sid in screen_ids:
            screen = snap.screens[sid]
            if self.visible(screen.owner_id, screen.group_id):
                parent = self._dir(self._group_dir(screen.group_id), SCREENS)
                self._screen_dirs[sid] = self._container_dir(parent, screen)
        screens_of: dict[int, list[int]] = {}
        for sid, pid in snap.screen_plate:
            screens_of.setdefault(pid, []).append(sid)
        for pid in plate_ids:
            plate = snap.plates[pid]
            if not self.visible(plate.owner_id, plate.group_id):
                continue
            parents = [
                self._screen_dirs[s]
                for s in sorted(screens_of.get(pid, []))
                if s in self._screen_dirs
            ]
            if not parents:
                parents = [self._dir(self._group_dir(plate.group_id), PLATES)]
            self._plate_dirs[pid] = [self._container_dir(p, plate) for p in parents]

    def _modes(self, fs: Fileset) -> list[int] | None:
        """Each entry's file mode under the download policy; None when all are readable
        (the common case: the files may then be made nodes lazily). Decided once per
        (group, owner, in a plate) and name kind: a million-fileset tree asks this for
        every fileset."""
        if fs.image_count <= 0:
            return None
        key = (fs.group_id, fs.owner_id, fs.plate_id is not None)
        rule = self._access.get(key)
        if rule is None or self._access_of is not self.snapshot.binary_access:
            if self._access_of is not self.snapshot.binary_access:
                self._access = {}
                self._access_of = self.snapshot.binary_access
            group = self.snapshot.groups[fs.group_id]
            editor = can_edit(self.viewer, fs.owner_id, fs.group_id, group.level)
            access = self.snapshot.binary_access.for_group(fs.group_id)
            rule = tuple(
                download_allowed(access, name=name, can_edit=editor, in_plate=key[2])
                for name in ("x", "x.txt")
            )
            self._access[key] = rule  # type: ignore[assignment]
        other, txt = rule
        if other and txt:
            return None
        return [
            FILE_MODE if (txt if e.name.endswith(".txt") else other) else DENIED_MODE
            for e in fs.entries
        ]

    def add_fileset(self, fs: Fileset) -> bool:
        """Place ``fs`` if this user may see it; return whether it was placed."""
        if not self.visible(fs.owner_id, fs.group_id) or not fs.entries:
            return False
        if problem := fileset_problem(fs):  # e.g. a hand-written "../" path: never served
            self.bad_rows.skip(f"fileset {fs.id}", problem)
            return False
        if self._placed(fs):
            return False
        owner = self.snapshot.experimenters.get(fs.owner_id)
        uid = owner.uid if owner else 0
        gid = self.snapshot.groups[fs.group_id].gid
        mtime = int(fs.created * 1e9)
        sources = [e.repo_path for e in fs.entries]  # one string each, shared by both trees
        modes = self._modes(fs)
        # OMERO's own path
        directory = self.managed
        for depth, part in enumerate(fs.template_prefix.rstrip("/").split("/")):
            own = depth >= self.root_depth
            directory = self._dir(directory, part, uid if own else 0, gid if own else 0, mtime)
        self._place_files(directory, fs, sources, uid, gid, mtime, modes=modes)
        # the named tree
        targets = [d for did in fs.dataset_ids for d in self._dataset_dirs.get(did, [])]
        if fs.plate_id is not None:
            targets += self._plate_dirs.get(fs.plate_id, [])
        if not targets:
            targets = [self._dir(self._group_dir(fs.group_id), ORPHANS)]
        for target in targets:
            self._place_named(target, fs, sources, uid, gid, mtime, modes)
        return True

    # -- helpers ---------------------------------------------------------------------

    def _placed(self, fs: Fileset) -> bool:
        """Is ``fs`` in the tree already? (A remote catalog may report a fileset twice.)
        Its template directory is its own, so holding its main file settles it."""
        node: Node | None = self.managed
        for part in fs.template_prefix.rstrip("/").split("/"):
            node = self.table.child(node, part) if node is not None and node.is_dir else None
        if node is None or not node.is_dir:
            return False
        main = fs.entries[0].repo_path[len(fs.template_prefix) :].split("/", 1)[0]
        return self.table.holds(node, main)

    def _place_named(
        self,
        target: Node,
        fs: Fileset,
        sources: list[str],
        uid: int,
        gid: int,
        mtime: int,
        modes: list[int] | None = None,
    ) -> None:
        rels = [src[len(fs.template_prefix) :] for src in sources]
        tops = {r.split("/", 1)[0] for r in rels}
        if len(tops) == 1:
            top = tops.pop()
            is_dir = "/" in rels[0]
            name = self._claim(target, top, f"fs{fs.id}", is_dir)
            if not is_dir:
                mode = modes[0] if modes else FILE_MODE
                self._file(target, name, sources[0], fs.entries[0].size, uid, gid, mtime, mode)
                return
            directory = self._dir(target, name, uid, gid, mtime)
            self._place_files(directory, fs, sources, uid, gid, mtime, top + "/", modes)
        else:  # several top-level names: keep them together under the main file's name
            name = self._claim(target, fs.entries[0].name, f"fs{fs.id}", True)
            directory = self._dir(target, name, uid, gid, mtime)
            self._place_files(directory, fs, sources, uid, gid, mtime, modes=modes)

    def _place_files(
        self,
        directory: Node,
        fs: Fileset,
        sources: list[str],
        uid: int,
        gid: int,
        mtime: int,
        strip: str = "",
        modes: list[int] | None = None,
    ) -> None:
        cut = len(fs.template_prefix) + len(strip)
        new = directory.children == {} and directory.pending is None
        if new and modes is None:  # new, every file readable: fill it lazily
            files = [(source, e.size) for e, source in zip(fs.entries, sources, strict=True)]
            self.table.defer_files(directory, cut, files, uid, gid, mtime)
            return
        for i, (entry, source) in enumerate(zip(fs.entries, sources, strict=True)):
            rel = source[cut:]
            *dirs, name = rel.split("/")
            parent = directory
            for part in dirs:
                parent = self._dir(parent, part, uid, gid, mtime)
            if self.table.child(parent, name) is None:
                mode = modes[i] if modes else FILE_MODE
                self._file(parent, name, source, entry.size, uid, gid, mtime, mode)

    def _file(
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
        node = self.table.add_file(parent, name, source, size, uid, gid, mtime, mode)
        self.touched.add(parent)
        return node

    def _dir(
        self,
        parent: Node,
        name: str,
        uid: int | None = None,
        gid: int | None = None,
        mtime: int | None = None,
    ) -> Node:
        """The directory ``name`` under ``parent``, created with the parent's ids if missing."""
        node = self.table.child(parent, name)
        if node is not None and node.is_dir:
            return node
        if node is not None:  # a file holds the name: the directory gets a tagged one
            name = self._claim(parent, name, "dir", True)
        node = self.table.add(
            parent,
            name,
            parent.uid if uid is None else uid,
            parent.gid if gid is None else gid,
            DIR_MODE,
            parent.mtime_ns if mtime is None else mtime,
        )
        self.touched.add(parent)
        return node

    def _group_dir(self, group_id: int) -> Node:
        node = self._group_dirs.get(group_id)
        if node is None:
            group = self.snapshot.groups[group_id]
            node = self._dir(self.groups, sanitize_name(group.name), 0, group.gid)
            self._group_dirs[group_id] = node
        return node

    def _container_dir(self, parent: Node, container: Container) -> Node:
        owner = self.snapshot.experimenters.get(container.owner_id)
        name = self._claim(parent, sanitize_name(container.name), str(container.id), True)
        gid = self.snapshot.groups[container.group_id].gid
        node = self.table.add(
            parent, name, owner.uid if owner else 0, gid, DIR_MODE, parent.mtime_ns
        )
        self.touched.add(parent)
        return node

    def _claim(self, parent: Node, name: str, tag: str, is_dir: bool) -> str:
        if self.table.child(parent, name) is None:
            return name
        candidate = suffixed(name, tag, is_dir)
        n = 2
        while self.table.child(parent, candidate) is not None:
            candidate = suffixed(name, f"{tag}-{n}", is_dir)
            n += 1
        return candidate
