"""The import engine shared by ``omerofs import`` and (later) the ingest mount.

One fileset at a time: read metadata (fail early on unknown formats), reserve the
template directory, place every file into a private temporary directory and verify
it, rename that directory into place, record everything in one catalog transaction,
write the import log, and only then remove sources for ``*_rm`` modes. Any failure
before the commit removes what was placed, so the repository and catalog never hold
half an import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omerofs.catalog.local import LocalCatalog
from omerofs.catalog.protocol import (
    Experimenter,
    Fileset,
    Group,
    ImageInfo,
    ImportRecord,
    PlacedFile,
)
from omerofs.config import RepoConfig
from omerofs.errors import AccessDenied, ImportFailed, OmerofsError, UnknownFormat, UsageError
from omerofs.ingest import transfer
from omerofs.ingest.filesets import SourceFileset, plan_fileset
from omerofs.ingest.metadata import looks_like_image, read_images
from omerofs.ingest.transfer import ByteCounter
from omerofs.template import TemplateContext, expand, resolve_increment

log = logging.getLogger(__name__)
TMP_PREFIX = ".omerofs-import-"


@dataclass(frozen=True)
class Target:
    """Where the images go: OMERO's ``-T Dataset:name:D`` or ``Project:name:P/Dataset:name:D``."""

    project: str | None = None
    dataset: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> Target:
        if not text:
            return cls()
        parts = text.split("/")
        if len(parts) > 2:
            raise UsageError(f"bad target {text!r}: at most Project:name:P/Dataset:name:D")
        found: dict[str, str] = {}
        for part in parts:
            kind, sep, rest = part.partition(":")
            key, sep2, name = rest.partition(":")
            if (
                not (sep and sep2)
                or key != "name"
                or kind not in ("Project", "Dataset")
                or not name
            ):
                raise UsageError(
                    f"bad target {text!r}: expected Dataset:name:D or Project:name:P/Dataset:name:D"
                )
            if name[0] in "+-%@":
                raise UsageError(f"bad target {text!r}: name qualifiers are not supported")
            found[kind] = name
        if "Dataset" not in found or (len(parts) == 2 and list(found) != ["Project", "Dataset"]):
            raise UsageError(f"bad target {text!r}: a Dataset is required (Project is optional)")
        return cls(found.get("Project"), found["Dataset"])


def _nothing(*_args: Any) -> None:
    return None


@dataclass(frozen=True)
class ImportHooks:
    """Where a caller (the ingest queue) follows an import: the reserved directory before
    anything is placed, bytes as they are transferred, SQL inside the catalog commit, and
    the sources removed by a ``*_rm`` mode."""

    on_prefix: Callable[[str], None] = _nothing
    on_bytes: ByteCounter = None
    on_commit: Callable[[Any, int], None] | None = None
    on_removed: Callable[[list[Path]], None] = _nothing


@dataclass(frozen=True)
class Outcome:
    source: Path
    fileset: Fileset | None
    error: str | None = None


class Importer:
    def __init__(self, config: RepoConfig, catalog: LocalCatalog) -> None:
        self.config = config
        self.catalog = catalog
        self.managed = config.managed_dir

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
        self, sources: list[Path], owner: Experimenter, group: Group, mode: str, target: Target
    ) -> list[Outcome]:
        """Import each source as its own fileset; one failure does not stop the others."""
        transfer.base_mode(mode)
        outcomes = []
        for source in sources:
            try:
                fileset = self.import_fileset_path(source, owner, group, mode, target)
                outcomes.append(Outcome(Path(source), fileset))
            except OmerofsError as exc:
                log.error("import of %s failed: %s", source, exc, extra={"reported": True})
                outcomes.append(Outcome(Path(source), None, str(exc)))
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
    ) -> Fileset:
        hooks = hooks or ImportHooks()
        self._refuse_repository_sources(plan)
        before = {f.path: _signature(f.path) for f in plan.files}
        images = self._read_images(plan)
        started = datetime.now()
        prefix = self._reserve_prefix(owner, group, started)
        final = self.managed / prefix
        staging = final.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        placed: list[PlacedFile] = []
        try:
            hooks.on_prefix(prefix)
            staging.mkdir()
            for f in plan.files:
                dest = staging / f.rel_name
                dest.parent.mkdir(parents=True, exist_ok=True)
                sha1 = self._place(mode, f.path, dest, hooks.on_bytes)
                rel_dir, _, name = (prefix + f.rel_name).rpartition("/")
                placed.append(
                    PlacedFile(
                        f.client_path,
                        rel_dir + "/",
                        name,
                        os.stat(dest).st_size,
                        sha1,
                        _mimetype(f.path),
                    )
                )
            os.rename(staging, final)  # replaces our own empty reservation atomically
            fileset = self.catalog.record_import(
                ImportRecord(
                    owner_id=owner.id,
                    group_id=group.id,
                    template_prefix=prefix,
                    transfer=mode,
                    created=started.timestamp(),
                    files=tuple(placed),
                    images=tuple(images),
                    project_name=target.project,
                    dataset_name=target.dataset,
                ),
                on_commit=hooks.on_commit,
            )
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            self._prune_empty_parents(final.parent)
            if isinstance(exc, OSError):
                raise ImportFailed(f"{plan.root}: {exc.strerror or exc}") from None
            raise
        self._write_log(final, plan, fileset, mode, owner, group, target)
        log.info(
            "imported %s as fileset %d (%s, %s) into %s",
            plan.root,
            fileset.id,
            owner.name,
            group.name,
            prefix,
        )
        if transfer.removes_source(mode):
            hooks.on_removed(self._remove_sources(plan, before))
        return fileset

    def _place(self, mode: str, source: Path, dest: Path, on_bytes: ByteCounter) -> str:
        try:
            return transfer.place(mode, source, dest, on_bytes)
        except OSError as exc:
            raise ImportFailed(f"{source}: {exc.strerror or exc}") from None

    def _refuse_repository_sources(self, plan: SourceFileset) -> None:
        managed = os.path.realpath(self.managed) + os.sep
        for f in plan.files:
            if os.path.realpath(f.path).startswith(managed):
                raise UsageError(f"{f.path}: already inside the ManagedRepository; not importing")

    @staticmethod
    def _read_images(plan: SourceFileset) -> list[ImageInfo]:
        """Images of the main file (must be readable) and of every other image-like file."""
        images = list(read_images(plan.main.path))
        for f in plan.files[1:]:
            if not looks_like_image(f.path):
                continue
            try:
                more = read_images(f.path)
            except UnknownFormat:
                continue  # a companion file, fine inside a multi-file fileset
            images.extend(
                ImageInfo(
                    len(images) + i,
                    m.name,
                    m.size_x,
                    m.size_y,
                    m.size_z,
                    m.size_c,
                    m.size_t,
                    m.pixel_type,
                )
                for i, m in enumerate(more)
            )
        return images

    def _reserve_prefix(self, owner: Experimenter, group: Group, when: datetime) -> str:
        """Create the (empty) fileset directory; its existence reserves the name."""
        for attempt in range(20):
            if attempt:
                time.sleep(0.001)
                when = datetime.now()
            ctx = TemplateContext(
                owner.name,
                owner.id,
                group.name,
                group.id,
                group.level.perms,
                when,
                session=uuid.uuid4().hex,
                session_id=os.getpid(),
            )
            prefix = expand(self.config.template, ctx)
            parts = prefix.rstrip("/").split("/")
            if attempt >= 5:  # a template without a unique last part: add a counter
                parts[-1] += "-%increment%"
            parent = self.managed
            for i, part in enumerate(parts):
                if "%increment%" in part:
                    parent.mkdir(parents=True, exist_ok=True)
                    parts[i] = part = resolve_increment(part, set(os.listdir(parent)))
                parent = parent / part
            parent.parent.mkdir(parents=True, exist_ok=True)
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            return "/".join(parts) + "/"
        raise ImportFailed("could not reserve a unique fileset directory from the template")

    def _prune_empty_parents(self, directory: Path) -> None:
        while directory != self.managed and self.managed in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _write_log(
        self,
        final: Path,
        plan: SourceFileset,
        fileset: Fileset,
        mode: str,
        owner: Experimenter,
        group: Group,
        target: Target,
    ) -> None:
        lines = [
            f"{datetime.now().isoformat(timespec='milliseconds')} omerofs import",
            f"fileset: {fileset.id}",
            f"user: {owner.name} (id {owner.id}); group: {group.name} (id {group.id})",
            f"transfer: {mode}",
            f"target: {target.project or '-'} / {target.dataset or '-'}",
            f"images: {fileset.image_count}",
        ]
        lines += [
            f"file: {e.client_path} -> {e.repo_path} sha1={e.hash} size={e.size}"
            for e in fileset.entries
        ]
        log_path = final.parent / (final.name + ".log")
        try:
            log_path.write_text("\n".join(lines) + "\n")
        except OSError as exc:  # the import itself is committed; a missing log is not fatal
            log.warning("could not write import log %s: %s", log_path, exc)

    @staticmethod
    def _remove_sources(plan: SourceFileset, before: dict[Path, tuple[int, int]]) -> list[Path]:
        """Delete verified sources, except any that changed after they were hashed."""
        removed = []
        for f in plan.files:
            if _signature(f.path) != before[f.path]:
                log.warning("%s changed during import; kept, not removed", f.path)
                continue
            os.unlink(f.path)
            removed.append(f.path)
        if plan.root.is_dir():
            for dirpath, _, _ in sorted(os.walk(plan.root), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):  # not empty: something stays, fine
                    os.rmdir(dirpath)
        return removed


def _signature(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _mimetype(path: Path) -> str:
    if looks_like_image(path):
        return "image/tiff"
    return "application/octet-stream"
