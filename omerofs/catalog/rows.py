"""What a record read from any catalog must satisfy before a daemon serves it.

A catalog row can be wrong however carefully omerofs writes it: an older omerofs did
not validate uids, an admin may edit the SQLite file by hand, an OMERO server may hold
odd data. One such row must never take a mount down for everybody (pyfuse3 raises
OverflowError for a uid it cannot encode, and that ends the daemon). So every backend's
records pass these checks; a record that fails is skipped, logged once, and everyone
else is served as before.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from omerofs.catalog.protocol import Container, Experimenter, Fileset, Group, Snapshot
from omerofs.identity import PermissionLevel, posix_id_problem

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 2**63 - 1  # st_size is a signed 64-bit number


def _name_problem(kind: str, name: object) -> str | None:
    if not isinstance(name, str) or not name or "\0" in name:
        return f"{kind} name {name!r} is not usable"
    if kind in ("user", "group") and ("/" in name or name in (".", "..")):
        return f"{kind} name {name!r} would be a path (staging/<user>/ is made from it)"
    return None


def _id_problem(kind: str, value: object, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{kind} {value!r} is not an id"
    return None


def experimenter_problem(exp: Experimenter) -> str | None:
    return (
        _id_problem("id", exp.id)
        or _name_problem("user", exp.name)
        or posix_id_problem("uid", exp.uid)
        or _id_problem("default group", exp.default_group_id, optional=True)
    )


def group_problem(group: Group) -> str | None:
    return (
        _id_problem("id", group.id)
        or _name_problem("group", group.name)
        or posix_id_problem("gid", group.gid)
        or (None if isinstance(group.level, PermissionLevel) else f"level {group.level!r}")
    )


def container_problem(container: Container) -> str | None:
    return (
        _id_problem("id", container.id)
        or _name_problem("container", container.name)
        or _id_problem("owner", container.owner_id)
        or _id_problem("group", container.group_id)
    )


def relative_path_problem(path: object) -> str | None:
    """A path inside ManagedRepository: relative, no ``..``, no empty parts."""
    if type(path) is not str or not path or path[0] == "/" or "\0" in path:
        return f"path {path!r} is not a relative path"
    wrapped = "/" + path.rstrip("/") + "/"  # substring tests: a view checks millions
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        return f"path {path!r} leaves or skips a directory"
    return None


def fileset_problem(fs: Fileset) -> str | None:
    """Checked for every fileset a view places, so cheap (~1 us: a few C-level string
    tests per file), and it keeps a hand-edited ``../`` from exposing files outside
    ManagedRepository."""
    if type(fs.id) is not int or type(fs.owner_id) is not int or type(fs.group_id) is not int:
        return f"ids {fs.id!r}, {fs.owner_id!r}, {fs.group_id!r} are not all ids"
    prefix = fs.template_prefix
    if type(prefix) is not str or not prefix.endswith("/"):
        return f"template prefix {prefix!r} is not a directory path"
    if type(fs.created) is not float and type(fs.created) is not int:
        return f"creation time {fs.created!r} is not a time"
    if not math.isfinite(fs.created):
        return f"creation time {fs.created!r} is not a time"
    for entry in fs.entries:
        name, path = entry.name, entry.path
        if type(name) is not str or type(path) is not str or not name or "/" in name:
            return f"file name {name!r} in {path!r} is not a file name"
        repo_path = path + name
        if not repo_path.startswith(prefix):
            return f"file {repo_path!r} lies outside {prefix!r}"
        if problem := relative_path_problem(repo_path):
            return problem
        size = entry.size
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            return f"file {repo_path!r} has size {size!r}"
    return relative_path_problem(prefix) if not fs.entries else None


class BadRows:
    """Skipped records, each logged once per process (a view polls many times a second)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def skip(self, what: str, problem: str) -> None:
        if self.seen.get(what) != problem:
            self.seen[what] = problem
            log.warning("skipping %s from the catalog: %s", what, problem)


def clean_snapshot(snap: Snapshot, bad: BadRows) -> Snapshot:
    """``snap`` without the experimenters, groups and containers that fail their checks,
    and without what refers to a record that is not there. Changed in place, returned."""
    for exp_id, exp in list(snap.experimenters.items()):
        if problem := experimenter_problem(exp):
            bad.skip(f"user {exp.name!r} (id {exp_id})", problem)
            del snap.experimenters[exp_id]
    for group_id, group in list(snap.groups.items()):
        if problem := group_problem(group):
            bad.skip(f"group {group.name!r} (id {group_id})", problem)
            del snap.groups[group_id]
    for exp_id, exp in list(snap.experimenters.items()):
        if exp.default_group_id is not None and exp.default_group_id not in snap.groups:
            snap.experimenters[exp_id] = replace(exp, default_group_id=None)
    snap.memberships = [
        m
        for m in snap.memberships
        if m.group_id in snap.groups and m.experimenter_id in snap.experimenters
    ]
    tables = (
        (snap.projects, "project"),
        (snap.datasets, "dataset"),
        (snap.screens, "screen"),
        (snap.plates, "plate"),
    )
    for table, kind in tables:
        for cid, container in list(table.items()):
            problem = container_problem(container)
            if problem is None and container.group_id not in snap.groups:
                problem = f"its group {container.group_id} is not in the catalog"
            if problem:
                bad.skip(f"{kind} {container.name!r} (id {cid})", problem)
                del table[cid]
    snap.project_dataset = [
        (p, d) for p, d in snap.project_dataset if p in snap.projects and d in snap.datasets
    ]
    snap.screen_plate = [
        (s, p) for s, p in snap.screen_plate if s in snap.screens and p in snap.plates
    ]
    return snap
