"""The import engine shared by ``omerofs import`` and the ingest mount, whatever the backend.

One fileset at a time: identity rules (who may import as whom), sources never taken
from the repository itself, then the backend's writer places, verifies and records the
fileset (all or nothing), and only then are ``*_rm`` sources removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omerofs.catalog.protocol import Catalog, Experimenter, Fileset, Group
from omerofs.config import RepoConfig
from omerofs.errors import AccessDenied, OmerofsError, UsageError
from omerofs.imports import transfer
from omerofs.imports.filesets import SourceFileset, plan_fileset, plan_filesets
from omerofs.imports.transfer import ByteCounter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where the images go: OMERO's ``-T Dataset:name:D`` or ``Project:name:P/Dataset:name:D``,
    or for a plate ``Screen:name:S`` (the plate is linked to the Screen; a Screen and a
    Dataset are exclusive, as one ``-T`` names one container).

    OMERO puts a qualifier before the key: ``+name`` the newest container of that name,
    created when missing (the default), ``-name`` the oldest, ``@name`` always a new
    one, ``%name`` the only one (an error if several). The embedded catalog and the
    OMERO writer resolve targets the default way, so ``+`` is accepted and the others
    are refused rather than silently treated as ``+``."""

    project: str | None = None
    dataset: str | None = None
    screen: str | None = None

    FORM = "Dataset:name:D, Project:name:P/Dataset:name:D or Screen:name:S"
    QUALIFIERS = {"-": "oldest", "@": "always new", "%": "unique"}

    @classmethod
    def parse(cls, text: str | None) -> Target:
        """None: no target (an orphan fileset); anything else must name a Dataset."""
        if text is None:
            return cls()
        if not text.strip():
            raise UsageError(f"empty target: expected {cls.FORM} (or no -T for no dataset)")
        parts = text.split("/")
        if len(parts) > 2:
            raise UsageError(f"bad target {text!r}: at most Project:name:P/Dataset:name:D")
        found: dict[str, str] = {}
        for part in parts:
            kind, sep, rest = part.partition(":")
            key, sep2, name = rest.partition(":")
            qualifier = key[:1] if key[:1] in "+-@%" else ""
            key = key[len(qualifier) :]
            if qualifier in cls.QUALIFIERS:
                raise UsageError(
                    f"target {text!r}: the {qualifier!r} qualifier "
                    f"({cls.QUALIFIERS[qualifier]}) is not supported here; use '+' "
                    "(the newest container of that name, created when missing: the default)"
                )
            if sep and key == "id":
                raise UsageError(f"target {text!r}: containers are named here, not given by id")
            kinds = ("Project", "Dataset", "Screen")
            if not (sep and sep2 and name) or key != "name" or kind not in kinds:
                raise UsageError(f"bad target {text!r}: expected {cls.FORM}")
            if name[0] in "+-%@":
                raise UsageError(
                    f"bad target {text!r}: a qualifier goes before the key, as in "
                    f"{kind}:{name[0]}name:{name[1:] or 'NAME'}"
                )
            found[kind] = name
        if "Screen" in found:
            if len(parts) > 1:
                raise UsageError(
                    f"bad target {text!r}: a Screen stands alone (Screen:name:S); Screen and "
                    "Project/Dataset targets are exclusive"
                )
            return cls(screen=found["Screen"])
        if "Dataset" not in found or (len(parts) == 2 and list(found) != ["Project", "Dataset"]):
            raise UsageError(f"bad target {text!r}: a Dataset is required (Project is optional)")
        return cls(found.get("Project"), found["Dataset"])

    def describe(self) -> str:
        if self.screen is not None:
            return f"screen {self.screen!r}"
        if self.dataset is None:
            return "no dataset (orphaned)"
        where = f"project {self.project!r} / " if self.project else ""
        return f"{where}dataset {self.dataset!r}"


def _nothing(*_args: Any) -> None:
    return None


@dataclass(frozen=True)
class ImportHooks:
    """Where a caller (the ingest queue) follows an import: the reserved directory before
    anything is placed, bytes as they are transferred, the moment a remote catalog takes
    over (from then on it may finish without us), SQL inside the catalog commit, and the
    sources removed by a ``*_rm`` mode."""

    on_prefix: Callable[[str], None] = _nothing
    on_handoff: Callable[[], None] = _nothing
    on_bytes: ByteCounter = None
    on_commit: Callable[[Any, int], None] | None = None
    on_removed: Callable[[list[Path]], None] = _nothing


@dataclass(frozen=True)
class Outcome:
    source: Path
    fileset: Fileset | None
    error: str | None = None


class RepositoryWriter(Protocol):
    """How a backend puts one planned fileset into its repository and catalog: all of
    it, verified and recorded, or nothing (a failure leaves no file behind)."""

    def write(
        self,
        plan: SourceFileset,
        owner: Experimenter,
        group: Group,
        mode: str,
        target: Target,
        hooks: ImportHooks,
    ) -> Fileset: ...

    def discard(self, prefix: str) -> None:
        """Undo what an import a crash interrupted placed under ``prefix`` (it was not
        handed off, and the catalog has no finished fileset there)."""
        ...


class Importer:
    """The import rules every backend shares: who may import as whom, sources never taken
    from the repository itself, and ``*_rm`` sources removed only after a verified import
    and only when unchanged since they were hashed. The writer does the rest: the one
    ``backend.open_backend`` chose (these rules know no backend)."""

    def __init__(self, config: RepoConfig, catalog: Catalog, writer: RepositoryWriter) -> None:
        self.config = config
        self.catalog = catalog
        self.writer = writer

    # -- who imports -----------------------------------------------------------------

    def resolve_identity(
        self, user: str, group: str | None, caller_uid: int | None = None
    ) -> tuple[Experimenter, Group]:
        """Resolve the importing user and group, enforcing OMERO's import-as rules: one may
        import as oneself; admins (and root) as anyone; group owners for their members."""
        owner = self.catalog.experimenter_by_name(user)
        memberships = {m.group_id: m for m in self.catalog.memberships_of(owner.id)}
        if group is None:
            if owner.default_group_id is None:
                raise UsageError(f"user {user!r} has no default group; pass --group")
            grp = self.catalog.group_by_id(owner.default_group_id)
        else:
            grp = self.catalog.group_by_name(group)
        if grp.id not in memberships:
            raise AccessDenied(f"user {user!r} is not a member of group {grp.name!r}")
        if caller_uid not in (None, 0, owner.uid):
            self._authorize_caller(caller_uid, owner, grp)
        return owner, grp

    def _authorize_caller(self, caller_uid: int, owner: Experimenter, grp: Group) -> None:
        caller = self.catalog.experimenter_by_uid(caller_uid)
        if caller is None:
            raise AccessDenied(f"uid {caller_uid} is not mapped to any OMERO user")
        if caller.admin:
            return
        if any(m.group_id == grp.id and m.owner for m in self.catalog.memberships_of(caller.id)):
            return
        raise AccessDenied(
            f"{caller.name!r} may not import as {owner.name!r} "
            f"(needs to be an admin or an owner of {grp.name!r})"
        )

    # -- importing -------------------------------------------------------------------

    def import_paths(
        self,
        sources: list[Path],
        owner: Experimenter,
        group: Group,
        mode: str,
        target: Target,
        hooks: Callable[[SourceFileset], ImportHooks] | None = None,
    ) -> list[Outcome]:
        """Import every fileset each source holds (a directory may hold several, grouped
        as Bio-Formats would); one failure does not stop the others. ``hooks(plan)``, if
        given, is asked for each fileset's hooks as it starts (a progress display)."""
        transfer.base_mode(mode)
        outcomes = []
        for source in sources:
            try:
                plans = plan_filesets(source)
            except OmerofsError as exc:
                log.error("import of %s failed: %s", source, exc, extra={"reported": True})
                outcomes.append(Outcome(Path(source), None, str(exc)))
                continue
            for plan in plans:
                shown = Path(source) if len(plans) == 1 else plan.main.path
                try:
                    fileset = self.import_fileset(
                        plan, owner, group, mode, target, hooks(plan) if hooks else None
                    )
                    outcomes.append(Outcome(shown, fileset))
                except OmerofsError as exc:
                    log.error("import of %s failed: %s", shown, exc, extra={"reported": True})
                    outcomes.append(Outcome(shown, None, str(exc)))
        return outcomes

    def import_fileset_path(
        self, source: Path, owner: Experimenter, group: Group, mode: str, target: Target
    ) -> Fileset:
        """Import one file or directory as one fileset."""
        return self.import_fileset(plan_fileset(source), owner, group, mode, target)

    def import_fileset(
        self,
        plan: SourceFileset,
        owner: Experimenter,
        group: Group,
        mode: str,
        target: Target,
        hooks: ImportHooks | None = None,
        remove_sources: bool = True,
    ) -> Fileset:
        """Import one planned fileset (all or nothing). ``remove_sources=False``: an
        ``*_rm`` import leaves its sources in place for the caller to remove later with
        ``Importer.remove_sources`` (the ingest mount keeps the names a while for a writer
        that comes back). The fileset may be a ``FilesetWithWarning`` (imported, but the
        server reported an error after saving the images)."""
        hooks = hooks or ImportHooks()
        self._refuse_repository_sources(plan)
        before = {f.path: _signature(f.path) for f in plan.files}
        fileset = self.writer.write(plan, owner, group, mode, target, hooks)
        log.info(
            "imported %s as fileset %d (%s, %s) into %s",
            plan.root,
            fileset.id,
            owner.name,
            group.name,
            fileset.template_prefix,
        )
        if remove_sources and transfer.removes_source(mode):
            hooks.on_removed(self.remove_sources(before, plan.root).files)
        return fileset

    def discard(self, prefix: str) -> None:
        """Undo what an import interrupted by a crash placed under ``prefix``, unless the
        catalog holds a fileset there (then it finished and must stay)."""
        self.writer.discard(prefix)

    def _refuse_repository_sources(self, plan: SourceFileset) -> None:
        managed = os.path.realpath(self.config.managed_dir) + os.sep
        for f in plan.files:
            if os.path.realpath(f.path).startswith(managed):
                raise UsageError(f"{f.path}: already inside the ManagedRepository; not importing")

    @staticmethod
    def remove_sources(sources: Mapping[Path, Signature], root: Path) -> Removed:
        """Delete the sources of a verified ``*_rm`` import, except any that changed since
        they were hashed, then the directories that leaves empty: every one in ``root``
        (and ``root``) when the fileset is a directory, and those between a removed file
        and the directory holding ``root`` (an ``X.oif``'s ``X.oif.files/``).

        ``sources``: path -> (size, mtime_ns) when hashed; a None time compares the size
        only (the ingest mount, where the kernel may rewrite times after the data and
        every change is seen anyway). A source already gone counts as removed."""
        removed = Removed([], [])
        for path in sorted(sources):
            size, mtime_ns = sources[path]
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if not os.path.lexists(path):
                    removed.files.append(path)
                continue
            if st.st_size != size or (mtime_ns is not None and st.st_mtime_ns != mtime_ns):
                log.warning("%s changed after it was hashed for import; kept, not removed", path)
                continue
            os.unlink(path)
            removed.files.append(path)
        base = root.parent
        for path in list(removed.files):
            directory = path.parent
            while directory != base and base in directory.parents:
                try:
                    os.rmdir(directory)
                except OSError:
                    break  # not empty (or gone): something stays, fine
                removed.directories.append(directory)
                directory = directory.parent
        if root.is_dir():
            for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):  # not empty: something stays, fine
                    os.rmdir(dirpath)
                    removed.directories.append(Path(dirpath))
        return removed


Signature = tuple[int, int | None]  # (size, mtime_ns); None: the size alone decides


@dataclass(frozen=True)
class Removed:
    """What ``Importer.remove_sources`` deleted."""

    files: list[Path]
    directories: list[Path]


def _signature(path: Path) -> Signature:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
