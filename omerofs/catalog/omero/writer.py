"""Import into an OMERO server without Java, through the ManagedRepository API.

The steps OMERO's own importer takes, from Python: as the user who wrote the data (a
sudo session of the service account), resolve ``-T`` style targets (created when
missing), send the Fileset (main file first) and ImportSettings to ``importFileset``,
then per file either upload the bytes through the server's uploader or, for in-place
modes, prove with a placeholder that the server's path is this machine's path and make
the hardlink/symlink/copy there; hand the SHA1s to ``verifyUpload`` and wait for the
server to finish. Non-upload transfers are recorded as OMERO records them (a
fileTransfer CommentAnnotation). If anything fails, every link or copy made here is
removed again: a failed import leaves nothing of ours in the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import omero
import omero.callbacks
import omero.cmd
import omero.grid
from omero.model import (
    ChecksumAlgorithmI,
    CommentAnnotationI,
    DatasetI,
    FilesetEntryI,
    FilesetI,
    ProjectDatasetLinkI,
    ProjectI,
    UploadJobI,
)
from omero.model.enums import ChecksumAlgorithmSHA1160
from omero.rtypes import rbool, rstring, unwrap
from omero_version import omero_version

from omerofs.catalog.omero import records
from omerofs.catalog.omero.catalog import OmeroCatalog
from omerofs.catalog.omero.session import translate
from omerofs.catalog.protocol import Experimenter, Fileset, Group
from omerofs.catalog.sqlite import Database
from omerofs.errors import CatalogUnavailable, ImportFailed, OmerofsError
from omerofs.ingest import transfer
from omerofs.ingest.filesets import SourceFileset
from omerofs.ingest.importer import ImportHooks, Target

log = logging.getLogger(__name__)
UPLOAD_BLOCK = 1024 * 1024
WAIT_STEP_MS = 500


# -- what is sent to the server (pure: tested with real omero-py objects) -------------------


def build_fileset(plan: SourceFileset, mode: str) -> Any:
    """The Fileset ``importFileset`` takes: one entry per file, main file first (the server
    runs Bio-Formats on the first), an UploadJob with the client's versions, and for
    in-place modes the fileTransfer annotation OMERO's importer writes."""
    fileset = FilesetI()
    for f in plan.files:
        entry = FilesetEntryI()
        entry.setClientPath(rstring(str(f.path)))
        fileset.addFilesetEntry(entry)
    job = UploadJobI()
    job.setVersionInfo(
        [
            omero.model.NamedValue("omero.version", omero_version),
            omero.model.NamedValue("os.name", platform.system()),
            omero.model.NamedValue("os.version", platform.release()),
            omero.model.NamedValue("os.architecture", platform.machine()),
            omero.model.NamedValue("client", "omerofs"),
        ]
    )
    fileset.linkJob(job)
    transfer_class = records.TRANSFER_CLASSES.get(mode)
    if transfer_class is not None:
        note = CommentAnnotationI()
        note.setNs(rstring(records.FILE_TRANSFER_NS))
        note.setTextValue(rstring(transfer_class))
        fileset.linkAnnotation(note)
    return fileset


def build_settings(dataset_id: int | None) -> Any:
    """ImportSettings: SHA1 checksums (what ``verifyUpload`` compares), thumbnails and
    statistics computed as a default CLI import would, the target dataset if any."""
    settings = omero.grid.ImportSettings()
    settings.doThumbnails = rbool(True)
    settings.noStatsInfo = rbool(False)
    settings.userSpecifiedTarget = None if dataset_id is None else DatasetI(dataset_id, False)
    settings.userSpecifiedName = None
    settings.userSpecifiedDescription = None
    settings.userSpecifiedAnnotationList = None
    settings.userSpecifiedPixels = None
    settings.checksumAlgorithm = ChecksumAlgorithmI()
    settings.checksumAlgorithm.value = rstring(ChecksumAlgorithmSHA1160)
    return settings


def check_placeholder(location: Path, write_token: Callable[[bytes], None]) -> None:
    """OMERO's in-place safety check. The server writes a random token at the path it
    chose; this machine must read exactly that token at the same path under its mount of
    the ManagedRepository and be able to delete it. Otherwise a link made here would be
    invisible to the server (wrong ``managed_dir``, stale mount, no access)."""
    token = uuid.uuid4().hex.encode()
    write_token(token)
    advice = "is [omero] managed_dir the server's ManagedRepository, mounted read-write here?"
    try:
        seen = location.read_bytes()
    except FileNotFoundError:
        raise ImportFailed(f"{location}: the server's placeholder is not there; {advice}") from None
    except OSError as exc:
        raise ImportFailed(
            f"{location}: cannot read the placeholder ({exc.strerror}); {advice}"
        ) from None
    if seen != token:
        raise ImportFailed(
            f"{location}: holds something other than the server's placeholder; {advice}"
        )
    try:
        location.unlink()
    except OSError as exc:
        raise ImportFailed(
            f"{location}: cannot remove the placeholder ({exc.strerror}); you likely do not "
            "have write access to the ManagedRepository"
        ) from None


def upload(rfs: Any, source: Path, on_bytes: transfer.ByteCounter = None) -> str:
    """Send ``source`` through the server's uploader; return the SHA1 of what was read."""
    digest = hashlib.sha1()
    offset = 0
    with open(source, "rb", buffering=0) as src:
        rfs.write(b"", 0, 0)  # creates the file even when the source is empty
        while block := src.read(UPLOAD_BLOCK):
            rfs.write(block, offset, len(block))
            digest.update(block)
            offset += len(block)
            if on_bytes:
                on_bytes(len(block))
    return digest.hexdigest()


# -- the writer -------------------------------------------------------------------------


class OmeroWriter:
    def __init__(self, catalog: OmeroCatalog, local_db: Database) -> None:
        self.catalog = catalog
        self.server = catalog.server
        self.settings = catalog.settings
        self.managed = catalog.settings.managed_dir
        self.local_db = local_db  # the repository's own SQLite (the ingest queue lives there)

    def write(
        self,
        plan: SourceFileset,
        owner: Experimenter,
        group: Group,
        mode: str,
        target: Target,
        hooks: ImportHooks,
    ) -> Fileset:
        placed: list[Path] = []
        prefix, fileset_id = None, 0
        try:
            with self.server.sudo(owner.name, group.name) as client:
                sf = client.getSession()
                ctx = {"omero.group": str(group.id)}
                dataset_id = self._resolve_target(sf, target, owner, ctx)
                repo = client.getManagedRepository()
                if repo is None:
                    raise ImportFailed("the OMERO server offers no ManagedRepository")
                proc = repo.importFileset(build_fileset(plan, mode), build_settings(dataset_id))
                try:
                    hashes = []
                    for i, f in enumerate(plan.files):
                        rfs = proc.getUploader(i)
                        try:
                            fileset_id, fs_prefix, dest = self._location(sf, rfs, ctx)
                            if prefix is None:
                                prefix = fs_prefix
                                hooks.on_prefix(prefix)
                            hashes.append(self._transfer(mode, rfs, f.path, dest, placed, hooks))
                        finally:
                            rfs.close()
                    hooks.on_handoff()
                    handle = proc.verifyUpload(hashes)
                    self._wait(client, handle, plan)
                finally:
                    proc.close()
        except BaseException as exc:
            self._remove(placed)
            if isinstance(exc, OmerofsError):
                raise
            if isinstance(exc, omero.ServerError):
                raise ImportFailed(f"{plan.root}: {translate(exc)}") from None
            if isinstance(exc, OSError):
                raise ImportFailed(f"{plan.root}: {exc.strerror or exc}") from None
            if isinstance(exc, Exception) and type(exc).__module__.startswith("Ice"):
                raise CatalogUnavailable(f"{plan.root}: lost the OMERO server: {exc}") from None
            raise
        if hooks.on_commit is not None:
            with self.local_db.transaction() as db:
                hooks.on_commit(db, fileset_id)
        found = self.catalog.fileset_by_prefix(prefix or "")
        if found is None:
            raise ImportFailed(f"{plan.root}: OMERO finished the import but fileset is not visible")
        return found

    def discard(self, prefix: str) -> None:
        """After a crash before ``verifyUpload``: remove what was linked or copied under
        ``prefix``. The server never imported it; its Fileset row stays without images,
        as after any abandoned OMERO upload, and is never shown."""
        if self.catalog.fileset_by_prefix(prefix) is not None:
            return
        for directory, _, files in os.walk(self.managed / prefix):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))

    # -- steps ---------------------------------------------------------------------------

    def _resolve_target(
        self, sf: Any, target: Target, owner: Experimenter, ctx: dict[str, str]
    ) -> int | None:
        """OMERO's ``-T``: the user's newest Dataset (in the Project) of that name in the
        import group, created when missing."""
        if target.dataset is None:
            return None
        query, update = sf.getQueryService(), sf.getUpdateService()

        def newest(hql: str, params: Any) -> int | None:
            params.addLong("uid", owner.id)
            params.page(0, 1)
            found = query.projection(hql + " order by x.id desc", params, ctx)
            return int(unwrap(found[0][0])) if found else None

        def named(name: str) -> Any:
            params = omero.sys.ParametersI()
            params.add("name", rstring(name))
            return params

        def create(obj: Any, name: str) -> int:
            obj.setName(rstring(name))
            return int(unwrap(update.saveAndReturnObject(obj, ctx).getId()))

        mine = "x.details.owner.id = :uid and x.name = :name"
        if target.project is None:
            found = newest(f"select x.id from Dataset x where {mine}", named(target.dataset))
            return found if found is not None else create(DatasetI(), target.dataset)
        project_id = newest(f"select x.id from Project x where {mine}", named(target.project))
        if project_id is None:
            project_id = create(ProjectI(), target.project)
        in_project = named(target.dataset)
        in_project.addLong("pid", project_id)
        found = newest(
            "select x.id from ProjectDatasetLink l join l.child x "
            f"where l.parent.id = :pid and {mine}",
            in_project,
        )
        if found is not None:
            return found
        dataset_id = create(DatasetI(), target.dataset)
        link = ProjectDatasetLinkI()
        link.setParent(ProjectI(project_id, False))
        link.setChild(DatasetI(dataset_id, False))
        update.saveObject(link, ctx)
        return dataset_id

    def _location(self, sf: Any, rfs: Any, ctx: dict[str, str]) -> tuple[int, str, Path]:
        """Where the server put this upload: its fileset, template prefix, and local path."""
        params = omero.sys.ParametersI()
        params.addId(rfs.getFileId())
        rows = records.rows(
            sf.getQueryService().projection(
                "select fs.id, fs.templatePrefix, f.path, f.name from Fileset fs "
                "join fs.usedFiles fe join fe.originalFile f where f.id = :id",
                params,
                ctx,
            )
        )
        if not rows:
            raise ImportFailed("the server created an upload that belongs to no fileset")
        fileset_id, prefix, path, name = rows[0]
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        return int(fileset_id), prefix, self.managed / path / name

    def _transfer(
        self,
        mode: str,
        rfs: Any,
        source: Path,
        dest: Path,
        placed: list[Path],
        hooks: ImportHooks,
    ) -> str:
        kind = transfer.base_mode(mode)
        if kind == "upload":
            return upload(rfs, source, hooks.on_bytes)
        check_placeholder(dest, lambda token: rfs.write(token, 0, len(token)))
        placed.append(dest)
        sha1 = transfer.place(kind, source, dest, hooks.on_bytes)
        size = os.stat(dest).st_size
        if size != os.stat(source).st_size:
            raise ImportFailed(f"{dest}: size {size} differs from the source's")
        return sha1

    def _wait(self, client: Any, handle: Any, plan: SourceFileset) -> None:
        callback = omero.callbacks.CmdCallbackI(client, handle)
        try:
            loops = max(1, int(self.settings.import_timeout * 1000 / WAIT_STEP_MS))
            try:
                callback.loop(loops, WAIT_STEP_MS)
            except omero.LockTimeout:
                raise ImportFailed(
                    f"{plan.root}: OMERO did not finish within {self.settings.import_timeout:.0f} s"
                ) from None
            response = callback.getResponse()
        finally:
            callback.close(True)
        if isinstance(response, omero.cmd.ERR):
            detail = "; ".join(f"{k}: {v}" for k, v in (response.parameters or {}).items())
            raise ImportFailed(
                f"{plan.root}: OMERO could not import it ({response.name}{': ' if detail else ''}"
                f"{detail[:500]})"
            )

    def _remove(self, placed: list[Path]) -> None:
        """Remove the links and copies this import made (the server's own files stay)."""
        for path in placed:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("could not remove %s after a failed import: %s", path, exc)
