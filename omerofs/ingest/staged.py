"""The staged filesets as they are on disk: which files form the fileset a closing
file belongs to (a group as Bio-Formats makes it, or a run directory's files not yet
imported), whether it is all there, and the commit markers and commit-only areas that
decide when it closes. Read in worker threads; the sets of imported names are the
service's own (shared, only read here)."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sortedcontainers import SortedSet

from omerofs.ingest.holds import completeness, group_files
from omerofs.ingest.paths import (
    COMMIT_MARKER,
    COMMIT_ONLY_MARKER,
    DONE_SUFFIX,
    FilesetKey,
    fileset_at,
    fileset_of,
    is_ignored_name,
)
from omerofs.ingest.queue import Manifest
from omerofs.ingest.settings import IngestRules

# Directories that hold the parts of the file they are named after (Olympus FluoView):
# arriving first, they wait for it instead of becoming a run fileset of their own.
COMPANION_DIRS = (".oif.files",)
CACHE_LIMIT = 100_000  # entries of the per-file caches below


@dataclass(frozen=True)
class Closing:
    """What a closing fileset is: its canonical key (a group's main file), its files."""

    key: FilesetKey
    manifest: Manifest
    missing: tuple[str, ...] = ()


class StagedFilesets:
    def __init__(
        self,
        staging: Path,
        frozen: SortedSet,
        lingering: SortedSet,
        failed_writes: dict[str, str],
    ) -> None:
        self.staging = staging
        self.frozen = frozen  # imported in place (non-rm): not part of any new fileset
        self.lingering = lingering  # imported (rm), names kept a while: likewise
        self.failed_writes = failed_writes  # staged file -> why its last write failed
        self.group_root: dict[str, str] = {}  # a group member's root -> the group's root
        self._alone: dict[Path, tuple[int, int, tuple[str, ...]]] = {}  # (size, mtime, parts)

    def closing(self, key: FilesetKey) -> Closing | None:
        """The fileset ``key`` belongs to as it is now: for a file, the group its
        directory's files form with it (a multi-file OME-TIFF dropped into a Dataset
        directory is one fileset, whatever order its files came in; an ``X.oif`` brings
        its ``X.oif.files/`` directory, which then is not a run fileset of its own)."""
        if key.is_dir:
            owner = self.claimed_by(key)
            if owner is not None:
                return self.closing(owner)
            manifest = self.dir_manifest(key)
            missing: dict[str, None] = {}  # (ordered, each once)
            root = self.staging / key.root
            for suffix in COMPANION_DIRS:  # X.oif.files/ before its X.oif: wait for it
                if root.name.lower().endswith(suffix):
                    owner = root.with_name(root.name[: -len(".files")])
                    if not owner.exists():
                        missing[f"../{owner.name}"] = None
            files = [self.staging / p for p in manifest]
            for group in group_files(files):
                missing.update(dict.fromkeys(group.missing))
            return Closing(key, manifest, tuple(missing))
        path = self.staging / key.root
        siblings = self.loose_files(path.parent)
        if path not in siblings:
            return Closing(key, {})
        if all(self.standalone(p) for p in siblings):
            return Closing(key, self.file_manifest(key))
        for group in group_files(siblings + self.claimed_parts(path.parent, siblings)):
            if path in group.files:
                main = os.path.relpath(group.main, self.staging)
                canonical = fileset_of(main) or key
                manifest: Manifest = {}
                for member in group.files:
                    rel = os.path.relpath(member, self.staging)
                    with contextlib.suppress(FileNotFoundError):
                        st = os.lstat(member)
                        manifest[rel] = (st.st_size, st.st_mtime_ns)
                    if len(self.group_root) >= CACHE_LIMIT:
                        self.group_root.clear()  # only for state(): recomputed at closes
                    self.group_root[rel] = canonical.root
                    member_key = fileset_of(rel)
                    if member_key is not None and member_key.is_dir:
                        self.group_root[member_key.root] = canonical.root
                return Closing(canonical, manifest, tuple(group.missing))
        return Closing(key, self.file_manifest(key))

    def standalone(self, path: Path) -> bool:
        """A file that is a whole fileset by itself, naming no other file (most are):
        asked once per version of the file, so a directory of thousands of single files
        is not regrouped at every close."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        return not self.named_parts(path, st)

    def named_parts(self, path: Path, st: os.stat_result | None = None) -> tuple[str, ...]:
        """The other files ``path`` names (relative to its directory), from its own
        grouping alone; cached per version of the file."""
        if st is None:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return ()
        known = self._alone.get(path)
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        (group,) = group_files([path]) or [None]
        parts: tuple[str, ...] = ()
        if group is not None:
            others = [os.path.relpath(f, path.parent) for f in group.files if f != path]
            parts = (*others, *group.missing)
        if len(self._alone) >= CACHE_LIMIT:  # a cache: months of files must not pile up
            self._alone.clear()
        self._alone[path] = (st.st_size, st.st_mtime_ns, parts)
        return parts

    def claimed_parts(self, directory: Path, siblings: list[Path]) -> list[Path]:
        """Files in subdirectories that a file of ``directory`` names as its parts (an
        ``.oif`` and its ``.oif.files/``): they group with it, not as a run directory."""
        subdirs = set()
        for sibling in siblings:
            for part in self.named_parts(sibling):
                head, sep, _ = part.partition("/")
                if sep and head not in (".", "..") and (directory / head).is_dir():
                    subdirs.add(head)
        found: list[Path] = []
        for head in sorted(subdirs):
            rel = os.path.relpath(directory / head, self.staging)
            key = fileset_at(rel, is_dir=True)
            if key is not None and key.root == rel:
                found.extend(self.staging / p for p in self.dir_manifest(key))
        return found

    def claimed_by(self, key: FilesetKey) -> FilesetKey | None:
        """The file fileset beside run directory ``key`` that names it as its parts."""
        root = self.staging / key.root
        prefix = root.name + "/"
        for sibling in self.loose_files(root.parent):
            if any(part.startswith(prefix) for part in self.named_parts(sibling)):
                return fileset_of(os.path.relpath(sibling, self.staging))
        return None

    def file_manifest(self, key: FilesetKey) -> Manifest:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.staging / key.root)
            if stat.S_ISREG(st.st_mode):
                return {key.root: (st.st_size, st.st_mtime_ns)}
        return {}

    def loose_files(self, directory: Path) -> list[Path]:
        """The files of a directory that form file filesets (not imported, not ignored)."""
        found = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if not entry.is_file(follow_symlinks=False) or is_ignored_name(entry.name):
                    continue
                rel = os.path.relpath(entry.path, self.staging)
                if rel in self.frozen or rel in self.lingering or fileset_of(rel) is None:
                    continue
                found.append(Path(entry.path))
        return sorted(found)

    def manifest(self, key: FilesetKey) -> Manifest:
        """The files of a fileset as they are now: path -> (size, mtime_ns)."""
        if key.is_dir:
            return self.dir_manifest(key)
        closing = self.closing(key)
        return closing.manifest if closing is not None else {}

    def dir_manifest(self, key: FilesetKey) -> Manifest:
        """Files below a run directory, except those already imported (a follow-up)."""
        root = self.staging / key.root
        found: Manifest = {}
        try:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if is_ignored_name(name) or os.path.islink(path):
                        continue
                    rel = os.path.relpath(path, self.staging)
                    if rel in self.frozen or rel in self.lingering:
                        continue
                    st = os.lstat(path)
                    found[rel] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return {}
        return found

    def hold_reason(self, closing: Closing) -> str | None:
        """Why a closed fileset is not imported as it is (held ``incomplete``), or None."""
        for path in closing.manifest:
            if path in self.failed_writes:
                name = path.rsplit("/", 1)[-1]
                return f"{name}: its last write failed ({self.failed_writes[path]})"
        if closing.missing:
            present = len(closing.manifest)
            total = present + len(closing.missing)
            shown = ", ".join(closing.missing[:3]) + (", ..." if len(closing.missing) > 3 else "")
            return f"{present} of {total} files present; waiting for {shown}"
        for path in closing.manifest:
            try:
                reason = completeness(self.staging / path)
            except OSError:
                continue
            if reason:
                return f"{path.rsplit('/', 1)[-1]}: {reason}"
        return None

    def drop_member_reports(self, key: FilesetKey, manifest: Manifest) -> list[str]:
        """A group's members were reported alone before (held, failed): no more."""
        dropped = []
        for member in manifest if not key.is_dir else ():
            if member != key.root:
                report = fileset_of(member)
                if report is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.staging / report.error_report)
                        dropped.append(report.error_report)
        return dropped

    def commit_only(self, key: FilesetKey, rules: IngestRules) -> bool:
        """Does ``key`` close on a commit only (the mount, its user, a directory)?"""
        if rules.commit_only or key.user in rules.commit_only_users:
            return True
        parts = key.root.split("/")
        upto = len(parts) if key.is_dir else len(parts) - 1
        return any(
            os.path.exists(self.staging / "/".join(parts[:i]) / COMMIT_ONLY_MARKER)
            for i in range(1, upto + 1)
        )

    def markers(self, key: FilesetKey) -> list[Path]:
        root = self.staging / key.root
        found = [root.with_name(root.name + DONE_SUFFIX)]
        if key.is_dir:
            found.append(root / COMMIT_MARKER)
        return found

    def has_marker(self, key: FilesetKey) -> bool:
        return any(os.path.lexists(m) for m in self.markers(key))

    def use_up_markers(self, key: FilesetKey) -> list[str]:
        used = []
        for marker in self.markers(key):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
                used.append(os.path.relpath(marker, self.staging))
        return used

    def keys_in(self, rel: str) -> list[FilesetKey]:
        """The filesets of the files directly in directory ``rel`` and of the run
        directories directly below it."""
        keys = set()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.staging / rel):
                child = f"{rel.strip('/')}/{entry.name}"
                key = fileset_at(child, entry.is_dir(follow_symlinks=False))
                done = child in self.lingering or child in self.frozen
                if key is not None and not done:
                    keys.add(key)
        return sorted(keys, key=lambda k: k.root)
