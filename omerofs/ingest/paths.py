"""What a path in the ingest mount means: whose it is, which group, which target, which
fileset it belongs to, and whether it is ignored for now.

    <user>/file                          an orphan fileset
    <user>/<Dataset>/file                a fileset in a dataset without a project
    <user>/<Project>/<Dataset>/file      a fileset in a dataset of a project
    <user>/<Project>/<Dataset>/<dir>/... one multi-file fileset: everything below <dir>
    <user>/@<group>/...                  the same, imported into <group> instead of the
                                         user's default group
    <user>/[@<group>/]#<Screen>/<plate>  a plate (a file, or a directory with all below
                                         it) into Screen <Screen>: ``-T Screen:name:S``;
                                         a ``#`` directory there is never a Project or
                                         Dataset (``#`` is valid on Windows and Samba)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

IGNORED_PATTERNS = (".*", "*.tmp", "*.part", "~*", "*~", "*.swp")
# Dot names that are data: Zarr v2's metadata (an OME-Zarr image or plate is unreadable
# without them). A writer's temporary copy of one (rsync's ``..zattrs.Xy12``) stays hidden.
ZARR_METADATA = frozenset({".zattrs", ".zarray", ".zgroup", ".zmetadata"})
# What desktops leave behind (compared in lower case): never imported, never a failure.
# Dot names (.DS_Store, ._*, .Trashes, .Spotlight-V100, .fseventsd) and Office locks
# (~$*) are already hidden or temporary names.
CLUTTER_PATTERNS = (
    "thumbs.db",
    "ehthumbs.db",
    "ehthumbs_vista.db",
    "desktop.ini",
    "$recycle.bin",
    "recycler",
    "recycled",
    "system volume information",
    "icon\r",
    "network trash folder",
    "temporary items",
)
ERROR_REPORT_SUFFIX = ".import-error.txt"
GROUP_PREFIX = "@"
SCREEN_PREFIX = "#"
# Commit markers: ``X.done`` beside a fileset X, or ``.omerofs-commit`` in a directory,
# close what they name at once; ``.omerofs-commit-only`` in a directory makes everything
# below it wait for such a commit (software that writes with long pauses).
DONE_SUFFIX = ".done"
COMMIT_MARKER = ".omerofs-commit"
COMMIT_ONLY_MARKER = ".omerofs-commit-only"


def is_ignored_name(name: str) -> bool:
    """Hidden and temporary names wait until renamed to a real name; desktop clutter,
    our reports and commit markers are never imported."""
    if name in ZARR_METADATA:
        return False
    if name.endswith((ERROR_REPORT_SUFFIX, DONE_SUFFIX)):
        return True
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_PATTERNS):
        return True
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, pattern) for pattern in CLUTTER_PATTERNS)


def commit_target(rel_path: str) -> str | None:
    """What a commit marker at ``rel_path`` commits (a staged path), or None."""
    parent, _, name = rel_path.strip("/").rpartition("/")
    if name == COMMIT_MARKER and parent:
        return parent
    if name.endswith(DONE_SUFFIX) and len(name) > len(DONE_SUFFIX) and parent:
        return f"{parent}/{name[: -len(DONE_SUFFIX)]}"
    return None


@dataclass(frozen=True)
class FilesetKey:
    """One fileset in the staging tree, named by its root (a file or a directory)."""

    user: str
    group: str | None  # None: the user's default group
    project: str | None
    dataset: str | None
    root: str  # path of the fileset's root relative to the staging directory
    is_dir: bool

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    @property
    def error_report(self) -> str:
        return self.root + ERROR_REPORT_SUFFIX

    @property
    def screen(self) -> str | None:
        """The Screen of a ``<user>/[@<group>/]#<Screen>/<plate>`` fileset, read from its
        root (so a queue row, which keeps the root, needs no column of its own)."""
        parts = self.root.split("/")[1:]
        if parts and parts[0].startswith(GROUP_PREFIX):
            parts = parts[1:]
        if len(parts) >= 2 and parts[0].startswith(SCREEN_PREFIX):
            return parts[0][len(SCREEN_PREFIX) :]
        return None


def fileset_of(rel_path: str) -> FilesetKey | None:
    """The fileset a regular file at ``rel_path`` belongs to; None if it is ignored."""
    parts = rel_path.strip("/").split("/")
    if len(parts) < 2 or any(is_ignored_name(p) for p in parts[1:]):
        return None
    user, rest = parts[0], parts[1:]
    prefix = [user]
    group = None
    if rest[0].startswith(GROUP_PREFIX):
        group = rest[0][len(GROUP_PREFIX) :]
        prefix.append(rest[0])
        rest = rest[1:]
        if not rest or not group:
            return None
    if rest[0].startswith(SCREEN_PREFIX) and len(rest) >= 2:
        if rest[0] == SCREEN_PREFIX:
            return None  # "#" alone names no screen
        return FilesetKey(user, group, None, None, "/".join(prefix + rest[:2]), len(rest) > 2)
    depth = len(rest)
    project = rest[0] if depth >= 3 else None
    dataset = rest[-2] if depth in (2, 3) else (rest[1] if depth >= 4 else None)
    if depth <= 3:
        return FilesetKey(user, group, project, dataset, "/".join(prefix + rest), False)
    return FilesetKey(user, group, project, dataset, "/".join(prefix + rest[:3]), True)


def fileset_at(rel_path: str, is_dir: bool) -> FilesetKey | None:
    """The fileset a path belongs to: a file's own (``fileset_of``), or for a directory
    the multi-file fileset it is the root of or lies inside; None for other directories
    (a user's, a project's or a dataset's)."""
    if not is_dir:
        return fileset_of(rel_path)
    key = fileset_of(rel_path.strip("/") + "/_")  # what a file inside it would belong to
    return key if key is not None and key.is_dir else None


def tracking_key(rel_path: str) -> FilesetKey | None:
    """The fileset whose closing ``rel_path`` holds up: its own, or for a temporary file
    inside a multi-file fileset directory, that directory's (so a slow ``.part`` writer
    keeps the directory open until it renames its file)."""
    key = fileset_of(rel_path)
    if key is not None:
        return key
    parts = rel_path.strip("/").split("/")
    for i, part in enumerate(parts[1:], start=1):
        if is_ignored_name(part):
            return fileset_at("/".join(parts[:i]), is_dir=True)
    return None


def group_dir_name(path: str) -> str | None:
    """The group a ``<user>/@<group>`` directory names, or None for any other path."""
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[1].startswith(GROUP_PREFIX):
        return parts[1][len(GROUP_PREFIX) :]
    return None
