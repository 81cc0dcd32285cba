"""From a path a user has in hand back to its fileset (``omerofs info PATH``).

A path in the view (``<mount>/<user>/ManagedRepository/<prefix>/...`` or the named tree
``<mount>/<user>/Groups/<group>/...``), in an ingest mount (``<mount>/<user>/...``, the
staging tree) or in the repository's own ManagedRepository. The view's names are made
by fs/layout.py in id order (the oldest object keeps the plain name, later ones get
``~<id>`` / ``~fs<id>``), so they can be read back without asking the daemon.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from omerofs.catalog.protocol import Catalog, Fileset, Snapshot
from omerofs.errors import NotFound, UsageError
from omerofs.fs.layout import DATASETS, GROUPS, MANAGED, ORPHANS, PROJECTS
from omerofs.template import sanitize_name

_FILESET_TAG = re.compile(r"~fs(\d+)(?:-\d+)?(?=\.|$)")
_CONTAINER_TAG = re.compile(r"~(\d+)(?:-\d+)?$")


@dataclass(frozen=True)
class Located:
    """Where a path lies: ``kind`` is view, ingest or managed."""

    kind: str
    mountpoint: str | None = None
    repo_path: str | None = None  # below ManagedRepository (view's own paths, managed)
    named: tuple[str, ...] = ()  # below <user>/Groups/ in the view
    staged: str | None = None  # below the staging directory (ingest)


def omerofs_mounts() -> dict[str, str]:
    """Mountpoint -> "view" | "ingest" for every omerofs mount this process can see."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype.startswith("fuse.omerofs-"):
                point = fields[4].encode().decode("unicode_escape")
                mounts[point] = fstype.removeprefix("fuse.omerofs-")
    return mounts


def locate(path: Path, managed_dir: Path) -> Located:
    """Classify ``path`` (not followed: an ``ln_s`` original stays where it is)."""
    absolute = os.path.normpath(os.path.abspath(path))
    best = ""
    mounts = omerofs_mounts()
    for point in mounts:
        if (absolute == point or absolute.startswith(point.rstrip("/") + "/")) and len(point) > len(
            best
        ):
            best = point
    if best:
        parts = [p for p in absolute[len(best) :].split("/") if p]
        if mounts[best] == "ingest":
            if len(parts) < 2:
                raise UsageError(f"{path}: not inside a user's directory of the ingest mount")
            return Located("ingest", best, staged="/".join(parts))
        if len(parts) >= 3 and parts[1] == MANAGED:
            return Located("view", best, repo_path="/".join(parts[2:]))
        if len(parts) >= 4 and parts[1] == GROUPS:
            return Located("view", best, named=tuple(parts[2:]))
        raise UsageError(f"{path}: not inside a fileset of the view")
    managed = os.path.normpath(os.path.abspath(managed_dir))
    if absolute.startswith(managed + "/"):
        return Located("managed", repo_path=absolute[len(managed) + 1 :])
    raise UsageError(
        f"{path}: not in an omerofs mount nor in {managed}; give a fileset id or a path there"
    )


def fileset_at(catalog: Catalog, repo_path: str) -> Fileset:
    """The fileset whose template directory holds ``repo_path`` (each prefix of the path
    is tried: one indexed query per directory level)."""
    parts = repo_path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        found = catalog.fileset_by_prefix("/".join(parts[:depth]) + "/")
        if found is not None:
            return found
    raise NotFound(f"no fileset holds ManagedRepository/{repo_path}")


def fileset_named(catalog: Catalog, snap: Snapshot, named: tuple[str, ...]) -> Fileset:
    """Read a named-tree path (``<group>/Orphans/<top>``, ``<group>/Datasets/<dataset>/
    <top>``, ``<group>/Projects/<project>/<dataset>/<top>``) back to its fileset."""
    group_name, kind, *rest = named
    groups = [g for g in snap.groups.values() if sanitize_name(g.name) == group_name]
    shape = {ORPHANS: 1, DATASETS: 2, PROJECTS: 3}.get(kind)
    if not groups or shape is None or len(rest) < shape:
        raise NotFound(f"{'/'.join(named)}: not a fileset of the view's Groups tree")
    group = groups[0]
    top = rest[shape - 1]
    tagged = _FILESET_TAG.search(top)
    if tagged:
        return fileset_by_id(catalog, int(tagged.group(1)))
    dataset_ids: set[int] | None = None
    if kind != ORPHANS:
        dataset_ids = _containers(snap.datasets, rest[shape - 2], group.id)
    candidates = [
        fs
        for fs in catalog.filesets_for(-1, {group.id}, snap.max_fileset_id)
        if fs.group_id == group.id
        and fs.entries
        and _top_name(fs) == top
        and (not fs.dataset_ids if dataset_ids is None else bool(dataset_ids & set(fs.dataset_ids)))
    ]
    if not candidates:
        raise NotFound(f"{'/'.join(named)}: no such fileset in group {group.name!r}")
    return min(candidates, key=lambda fs: fs.id)  # the oldest keeps the plain name


def _containers(table: dict, name: str, group_id: int) -> set[int]:
    tagged = _CONTAINER_TAG.search(name)
    if tagged and int(tagged.group(1)) in table:
        return {int(tagged.group(1))}
    return {
        c.id for c in table.values() if sanitize_name(c.name) == name and c.group_id == group_id
    }


def _top_name(fs: Fileset) -> str:
    rels = [e.repo_path[len(fs.template_prefix) :] for e in fs.entries]
    tops = {r.split("/", 1)[0] for r in rels}
    return tops.pop() if len(tops) == 1 else fs.entries[0].name


def fileset_by_id(catalog: Catalog, fileset_id: int) -> Fileset:
    found = catalog.filesets_for(-1, None, fileset_id, after=fileset_id - 1)
    if not found:
        raise NotFound(f"no such fileset {fileset_id}")
    return found[0]
