"""How a fileset enters the embedded backend: the repository directory and the SQLite
catalog, written by omerofs itself.

Metadata first (an unknown format fails before anything is placed), then the template
directory is reserved, every file is placed into a private temporary directory and
verified, that directory is renamed over the reservation, and everything is recorded
in one catalog transaction. Any failure before the commit removes what was placed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.catalog.protocol import (
    Experimenter,
    Fileset,
    Group,
    ImageInfo,
    ImportRecord,
    PlacedFile,
)
from omerofs.config import RepoConfig
from omerofs.errors import ImportFailed, UnknownFormat, UsageError
from omerofs.formats import group_files, is_plate, looks_like_image, read_images
from omerofs.formats import mimetype as format_mimetype
from omerofs.imports import transfer
from omerofs.imports.filesets import SourceFileset
from omerofs.imports.importer import ImportHooks, Target
from omerofs.ownership import secure_dir
from omerofs.pids import alive
from omerofs.template import TemplateContext, expand, resolve_increment

log = logging.getLogger(__name__)
TMP_PREFIX = ".omerofs-import-"


class LocalWriter:
    def __init__(self, config: RepoConfig, catalog: LocalCatalog) -> None:
        self.config = config
        self.catalog = catalog
        self.managed = config.managed_dir
        self._checked_private = False

    def write(
        self,
        plan: SourceFileset,
        owner: Experimenter,
        group: Group,
        mode: str,
        target: Target,
        hooks: ImportHooks,
    ) -> Fileset:
        images = self._read_images(plan)
        plate = is_plate(plan.main.path)
        if target.screen is not None and plate is None:
            raise UsageError(
                f"{plan.root}: a Screen target takes plates only, and this is no plate "
                "(use a Dataset target, or none)"
            )
        started = datetime.now()
        prefix = self._reserve_prefix(owner, group, started)
        final = self.managed / prefix
        staging = final.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        placed: list[PlacedFile] = []
        seals: list[transfer.Seal] = []  # ln sources sealed so far, restored on rollback
        try:
            hooks.on_prefix(prefix)
            staging.mkdir()
            account = self._account()
            for f in plan.files:
                dest = staging / f.rel_name
                dest.parent.mkdir(parents=True, exist_ok=True)
                sha1 = self._place(mode, f.path, dest, hooks, account, seals)
                rel_dir, _, name = (prefix + f.rel_name).rpartition("/")
                placed.append(
                    PlacedFile(
                        f.client_path,
                        rel_dir + "/",
                        name,
                        os.stat(dest).st_size,
                        sha1,
                        mimetype(f.path),
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
                    screen_name=target.screen,
                    plate=plate,
                ),
                on_commit=hooks.on_commit,
            )
        except BaseException as exc:
            for seal in seals:
                transfer.unseal(seal)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            self._prune_empty_parents(final.parent)
            if isinstance(exc, OSError):
                raise ImportFailed(f"{plan.root}: {exc.strerror or exc}") from None
            raise
        self._write_log(final, fileset, mode, owner, group, target)
        return fileset

    def discard(self, prefix: str) -> None:
        """Remove what an interrupted import placed under ``prefix`` (its reserved directory,
        its private temporary directory, an import log) unless the catalog recorded it."""
        final = self.managed / prefix
        if self.catalog.fileset_by_prefix(prefix) is not None:
            return
        shutil.rmtree(final, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(final.parent / (final.name + ".log"))
        if final.parent.is_dir():
            for tmp in final.parent.glob(TMP_PREFIX + "*"):
                pid = tmp.name[len(TMP_PREFIX) :].split("-", 1)[0]
                if pid.isdigit() and not alive(int(pid)):
                    shutil.rmtree(tmp, ignore_errors=True)

    def _account(self) -> transfer.Account:
        """Who owns what this import places; an older repository's ManagedRepository is
        made private on the way (as every daemon start does: omerofs/ownership.py)."""
        if os.geteuid() == 0 and not self._checked_private:
            for line in secure_dir(self.managed):
                log.warning("%s", line)
            self._checked_private = True
        return transfer.Account.of(self.managed)

    def _place(
        self,
        mode: str,
        source: Path,
        dest: Path,
        hooks: ImportHooks,
        account: transfer.Account,
        seals: list[transfer.Seal],
    ) -> str:
        """Place one file, sealed as the repository's (docs/repository.md)."""
        try:
            return transfer.place(mode, source, dest, hooks.on_bytes, seal_as=account, seals=seals)
        except OSError as exc:
            raise ImportFailed(f"{source}: {exc.strerror or exc}") from None

    @staticmethod
    def _read_images(plan: SourceFileset) -> list[ImageInfo]:
        """Images of the main file (must be readable) and of every other fileset the plan
        holds (a whole directory imported as one); files no reader knows are companions.
        A damaged file fails the import: nothing is imported silently wrong."""
        groups = group_files(f.path for f in plan.files)
        main = plan.main.path
        images = list(read_images(main))
        for group in groups:
            if main in group.files or not looks_like_image(group.main):
                continue
            try:
                more = read_images(group.main)
            except UnknownFormat:
                continue
            images.extend(replace(m, series=len(images) + i) for i, m in enumerate(more))
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

    @staticmethod
    def _write_log(
        final: Path,
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
            f"target: {target.describe()}",
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


def mimetype(path: Path) -> str:
    return format_mimetype(path)
