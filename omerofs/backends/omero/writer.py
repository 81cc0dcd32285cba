"""Import into an OMERO server without Java, through the ManagedRepository API.

The steps OMERO's own importer takes, from Python: as the user who wrote the data (a
sudo session of the service account), resolve ``-T`` style targets (created when
missing; a Screen only for a plate, which the server then links to it), send the
Fileset (main file first) and ImportSettings to ``importFileset``, then per file either
upload the bytes through the server's uploader or, for in-place modes, prove with a
placeholder that the server's path is this machine's path and make the
hardlink/symlink/copy there; hand the checksums to ``verifyUpload`` and wait for the
server to finish. Non-upload transfers are recorded as OMERO records them (a
fileTransfer CommentAnnotation). If anything fails before the hand-off, every link or
copy made here is removed again; after it, ``handoff`` decides (the server may have
imported it already).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import omero
import omero.cmd
import omero.grid
from omero.model import (
    CommentAnnotationI,
    DatasetI,
    FilesetEntryI,
    FilesetI,
    ProjectDatasetLinkI,
    ProjectI,
    ScreenI,
    UploadJobI,
)
from omero.rtypes import rbool, rstring, unwrap
from omero_version import omero_version

from omerofs.backends.omero import checksums, records
from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.backends.omero.handoff import (
    ImportOutcomeUnknown,
    settle_failed_handoff,
    with_warning,
)
from omerofs.backends.omero.session import ALL_GROUPS, translate
from omerofs.catalog.protocol import Experimenter, Fileset, Group
from omerofs.catalog.sqlite import Database
from omerofs.errors import CatalogUnavailable, ImportFailed, OmerofsError, UsageError
from omerofs.formats import is_plate
from omerofs.imports import transfer
from omerofs.imports.filesets import SourceFileset
from omerofs.imports.importer import ImportHooks, Target

log = logging.getLogger(__name__)
UPLOAD_BLOCK = 1024 * 1024
DELETE_TIMEOUT = 600.0  # seconds to wait for the server to delete an image-less fileset
READ_ONLY = {"omero.fs.mode": "r"}  # ManagedImportProcessI.getUploader reads this key


# -- what is sent to the server (pure: tested with real omero-py objects) -------------------


def build_fileset(plan: SourceFileset, mode: str) -> Any:
    """The Fileset ``importFileset`` takes: one entry per file, main file first (the server
    runs Bio-Formats on the first), an UploadJob with the client's versions, and for
    in-place modes the fileTransfer annotation OMERO's importer writes."""
    fileset = FilesetI()
    for f in plan.files:
        entry = FilesetEntryI()
        # the Java form: the client's absolute path without its leading "/"
        entry.setClientPath(rstring(str(f.path).lstrip("/")))
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


def build_settings(
    dataset_id: int | None, checksum: str = checksums.SHA1, screen_id: int | None = None
) -> Any:
    """ImportSettings: the agreed checksum (what ``verifyUpload`` compares), thumbnails
    and statistics computed as a default CLI import would, the target if any. As
    OMERO's ``ImportContainer.fillData``, the target is the container itself: the
    server's ``TargetProcessor`` links the import's Images to a Dataset, its Plates to
    a Screen."""
    assert dataset_id is None or screen_id is None, "one -T names one container"
    settings = omero.grid.ImportSettings()
    settings.doThumbnails = rbool(True)
    settings.noStatsInfo = rbool(False)
    if screen_id is not None:
        settings.userSpecifiedTarget = ScreenI(screen_id, False)
    else:
        settings.userSpecifiedTarget = None if dataset_id is None else DatasetI(dataset_id, False)
    settings.userSpecifiedName = None
    settings.userSpecifiedDescription = None
    settings.userSpecifiedAnnotationList = None
    settings.userSpecifiedPixels = None
    settings.checksumAlgorithm = checksums.algorithm(checksum)
    return settings


def placeholder_token(source_size: int) -> bytes:
    """A random token whose length differs from the source's: OMERO re-hashes a file
    opened read-only only when its size differs from the one on record
    (``RawFileBean.isModified``), and the record holds the token's size."""
    token = str(uuid.uuid4()).encode()  # 36 bytes, as Java's UUID.toString()
    return token + b"\n" if len(token) == source_size else token


def write_placeholder(rfs: Any, location: Path, token: bytes) -> None:
    """Steps 1–2 of OMERO's ``AbstractExecFileTransfer.checkLocation``: the target must
    not exist yet; the server writes the token there through the uploader, which is then
    CLOSED — ``RawFileBean.write`` does not flush, only ``close`` does, and over NFS a
    file is only seen complete after its writer closed it."""
    try:
        if os.path.lexists(location):
            raise ImportFailed(
                f"{location}: already exists in the ManagedRepository; refusing to place "
                "a file over it"
            )
        rfs.write(token, 0, len(token))
    finally:
        rfs.close()


def check_placeholder(location: Path, token: bytes) -> None:
    """Step 3 of ``checkLocation``: this machine must read exactly the server's token at
    the same path under its mount of the ManagedRepository, and be able to delete it.
    Otherwise a link made here would be invisible to the server (wrong ``managed_dir``,
    stale mount, no access)."""
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


def confirm_placed(proc: Any, index: int, location: Path, size: int, digest: str) -> None:
    """After the link or copy (``checkTarget`` + ``TransferState.save``): reopen the file
    read-only on the server, check it sees the whole file, and ``save()`` so the server
    hashes what was placed; its hash must be ours (else ``verifyUpload`` would fail
    later, with less to say)."""
    try:
        rfs = proc.getUploader(index, READ_ONLY)
        seen = rfs.size()
    except omero.ServerError as exc:
        raise ImportFailed(
            f"{location}: the OMERO server cannot read the placed file ({translate(exc)}); "
            "it likely has no read access there"
        ) from None
    try:
        if seen != size:
            raise ImportFailed(f"{location}: the OMERO server sees {seen} bytes, not {size}")
        saved = rfs.save()
    finally:
        with contextlib.suppress(Exception):
            rfs.close()
    server_hash = unwrap(saved.getHash()) if saved is not None else None
    if server_hash != digest:
        raise ImportFailed(
            f"{location}: the OMERO server's checksum {server_hash or '(none)'} of the placed "
            f"file differs from ours ({digest})"
        )


def upload(
    rfs: Any, source: Path, on_bytes: transfer.ByteCounter = None, checksum: str = checksums.SHA1
) -> str:
    """Send ``source`` through the server's uploader; return the digest of what was read."""
    digest = checksums.hasher(checksum)
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


def wait_for(handle: Any, timeout: float) -> Any:
    """Poll a command handle until the server answers (``HandleI.getResponse`` is None
    while it runs); raise ``TimeoutError`` after ``timeout`` seconds. Polling needs no
    callback adapter through Glacier2 and keeps the session busy while it waits."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        response = handle.getResponse()
        if response is not None:
            return response
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no answer within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(1.0, delay * 2)


def describe_response(response: Any) -> str:
    detail = "; ".join(f"{k}: {v}" for k, v in (response.parameters or {}).items())
    return f"{response.name}{': ' if detail else ''}{detail[:500]}"


# -- the writer -------------------------------------------------------------------------


class OmeroWriter:
    def __init__(
        self,
        catalog: OmeroCatalog,
        local_db: Database,
        sudo: Callable[[str, str], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.catalog = catalog
        self.server = catalog.server
        self.settings = catalog.settings
        self.managed = catalog.settings.managed_dir
        self.local_db = local_db  # the repository's own SQLite (the ingest queue lives there)
        self._sudo = sudo or self.server.sudo  # a session as the importing user

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
        state = _Progress()

        def remove(paths: list[Path]) -> None:  # our links and copies; ln sources unsealed
            self._remove(paths, state.seals)

        try:
            self._import(plan, owner, group, mode, target, hooks, placed, state)
            warning = None
        except Exception as exc:
            if not state.handed_off:
                remove(placed)
                raise _translated(exc, plan) from None
            error = str(_translated(exc, plan)).removeprefix(f"{plan.root}: ")
            warning = settle_failed_handoff(
                str(plan.root),
                error,
                state.fileset_id,
                placed,
                lambda: self._image_count(state.fileset_id),
                lambda: self._delete_fileset(owner, group, state.fileset_id),
                remove,
            )
        except BaseException:  # interrupted: after the hand-off the server may finish it
            if not state.handed_off:
                remove(placed)
            raise
        if hooks.on_commit is not None:
            with self.local_db.transaction() as db:
                hooks.on_commit(db, state.fileset_id)
        try:
            found = self.catalog.fileset_by_prefix(state.prefix or "")
        except CatalogUnavailable as exc:  # it landed: a retry would import it twice
            raise ImportOutcomeUnknown(
                f"{plan.root}: imported as fileset {state.fileset_id}, but the server went "
                f"away before it could be read back ({exc}); do not import it again"
            ) from None
        if found is None:
            raise ImportFailed(f"{plan.root}: OMERO finished the import but fileset is not visible")
        return found if warning is None else with_warning(found, warning)

    def _import(
        self,
        plan: SourceFileset,
        owner: Experimenter,
        group: Group,
        mode: str,
        target: Target,
        hooks: ImportHooks,
        placed: list[Path],
        state: _Progress,
    ) -> None:
        if target.screen is not None and is_plate(plan.main.path) is None:
            # OMERO would make the Screen and link nothing (TargetProcessor links only
            # Plates to a Screen): the images would land orphaned, silently
            raise UsageError(
                f"{plan.root}: a Screen target takes plates only, and this is no plate "
                "(use a Dataset target, or none)"
            )
        with self._sudo(owner.name, group.name) as client:
            sf = client.getSession()
            ctx = {"omero.group": str(group.id)}
            screen_id = self._resolve_screen(sf, target, ctx)
            dataset_id = self._resolve_target(sf, target, ctx)
            repo = client.getManagedRepository()
            if repo is None:
                raise ImportFailed("the OMERO server offers no ManagedRepository")
            checksum = checksums.negotiate(repo)
            proc = repo.importFileset(
                build_fileset(plan, mode), build_settings(dataset_id, checksum, screen_id)
            )
            try:
                hashes = []
                for i, f in enumerate(plan.files):
                    hashes.append(
                        self._send(proc, i, sf, ctx, mode, f.path, placed, hooks, state, checksum)
                    )
                hooks.on_handoff()
                state.handed_off = True
                handle = proc.verifyUpload(hashes)
                try:
                    try:
                        response = wait_for(handle, self.settings.import_timeout)
                    except TimeoutError:
                        raise ImportFailed(
                            f"{plan.root}: OMERO did not finish within "
                            f"{self.settings.import_timeout:.0f} s"
                        ) from None
                finally:
                    with contextlib.suppress(Exception):
                        handle.close()
                if isinstance(response, omero.cmd.ERR):
                    raise ImportFailed(
                        f"{plan.root}: OMERO could not import it ({describe_response(response)})"
                    )
            finally:
                with contextlib.suppress(Exception):  # the server may be gone already
                    proc.close()

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

    def _resolve_screen(self, sf: Any, target: Target, ctx: dict[str, str]) -> int | None:
        """OMERO's ``-T Screen:name:S`` (``ModelImportTarget``, as for a Dataset): the
        newest Screen of that name in the import group that the user may link to,
        created when there is none. The server links the new Plate to it."""
        if target.screen is None:
            return None
        query = sf.getQueryService()
        params = omero.sys.ParametersI()
        params.add("name", rstring(target.screen))
        found = records.newest_linkable(
            query.findAllByQuery(
                "select x from Screen x where x.name = :name order by x.id desc", params, ctx
            )
        )
        if found is not None:
            return found
        screen = ScreenI()
        screen.setName(rstring(target.screen))
        return int(unwrap(sf.getUpdateService().saveAndReturnObject(screen, ctx).getId()))

    def _resolve_target(self, sf: Any, target: Target, ctx: dict[str, str]) -> int | None:
        """OMERO's ``-T Dataset:name:D`` (``ModelImportTarget``): the newest Dataset of that
        name in the import group that the user may link to, created when there is none.
        omerofs's ``Project:name:P/Dataset:name:D``: the newest linkable Project P (created
        when missing) and in it the newest linkable Dataset D (created and linked to P
        when missing); a Dataset D elsewhere is not moved into P."""
        if target.dataset is None:
            return None
        query, update = sf.getQueryService(), sf.getUpdateService()

        def newest(hql: str, params: Any) -> int | None:
            return records.newest_linkable(
                query.findAllByQuery(hql + " order by x.id desc", params, ctx)
            )

        def named(name: str) -> Any:
            params = omero.sys.ParametersI()
            params.add("name", rstring(name))
            return params

        def create(obj: Any, name: str) -> int:
            obj.setName(rstring(name))
            return int(unwrap(update.saveAndReturnObject(obj, ctx).getId()))

        if target.project is None:
            found = newest("select x from Dataset x where x.name = :name", named(target.dataset))
            return found if found is not None else create(DatasetI(), target.dataset)
        project_id = newest("select x from Project x where x.name = :name", named(target.project))
        if project_id is None:
            project_id = create(ProjectI(), target.project)
        in_project = named(target.dataset)
        in_project.addLong("pid", project_id)
        found = newest(
            "select x from ProjectDatasetLink l join l.child x "
            "where l.parent.id = :pid and x.name = :name",
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

    def _send(
        self,
        proc: Any,
        index: int,
        sf: Any,
        ctx: dict[str, str],
        mode: str,
        source: Path,
        placed: list[Path],
        hooks: ImportHooks,
        state: _Progress,
        checksum: str,
    ) -> str:
        """One file to the server; returns its checksum for ``verifyUpload``."""
        rfs = proc.getUploader(index)
        kind = transfer.base_mode(mode)
        try:
            state.fileset_id, prefix, dest = self._location(sf, rfs, ctx)
            if state.prefix is None:
                state.prefix = prefix
                hooks.on_prefix(prefix)
            if kind == "upload":
                digest = upload(rfs, source, hooks.on_bytes, checksum)
                rfs.close()  # the server flushes and hashes on close
                return digest
            token = placeholder_token(os.stat(source).st_size)
        except BaseException:
            with contextlib.suppress(Exception):  # closed already, or the server is gone
                rfs.close()
            raise
        write_placeholder(rfs, dest, token)  # closes the uploader
        return place_in_place(
            proc, index, kind, source, dest, token, placed, hooks, checksum, self._sealing(state)
        )

    def _sealing(self, state: _Progress) -> tuple[transfer.Account | None, list[transfer.Seal]]:
        """The sealing of in-place originals: as the owner of the ManagedRepository
        directory (the OMERO server's account), which only root (or that account) can
        give a file; otherwise they stay as placed, said once per import."""
        if state.account is None:
            account = transfer.Account.of(self.managed)
            if os.geteuid() not in (0, account.uid):
                log.warning(
                    "%s belongs to uid %d: originals placed in it stay writable by this "
                    "daemon's uid %d (run it as root to seal them as the server's)",
                    self.managed,
                    account.uid,
                    os.geteuid(),
                )
                account = False
            state.account = account
        return (state.account or None, state.seals)

    def _image_count(self, fileset_id: int) -> int:
        """How many Images the server holds for a fileset (as the service account)."""
        params = omero.sys.ParametersI()
        params.addId(fileset_id)
        return records.scalar(
            self.server.call(
                lambda sf: sf.getQueryService().projection(
                    "select count(i.id) from Image i where i.fileset.id = :id", params, ALL_GROUPS
                )
            )
        )

    def _delete_fileset(self, owner: Experimenter, group: Group, fileset_id: int) -> None:
        """Delete an image-less Fileset on the server as its owner, and wait for it."""
        with self._sudo(owner.name, group.name) as client:
            request = omero.cmd.Delete2(targetObjects={"Fileset": [fileset_id]})
            handle = client.getSession().submit(request, {"omero.group": str(group.id)})
            try:
                response = wait_for(handle, DELETE_TIMEOUT)
            finally:
                with contextlib.suppress(Exception):
                    handle.close()
        if isinstance(response, omero.cmd.ERR):
            raise ImportFailed(f"Delete2 failed: {describe_response(response)}")

    def _remove(self, placed: list[Path], seals: list[transfer.Seal] | None = None) -> None:
        """Remove the links and copies this import made (the server's own files stay);
        ``ln`` sources get their owner and mode back (the user's files again)."""
        for path in placed:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("could not remove %s after a failed import: %s", path, exc)
        for seal in seals or ():
            transfer.unseal(seal)


def place_in_place(
    proc: Any,
    index: int,
    kind: str,
    source: Path,
    dest: Path,
    token: bytes,
    placed: list[Path],
    hooks: ImportHooks,
    checksum: str,
    sealing: tuple[transfer.Account | None, list[transfer.Seal]] = (None, []),
) -> str:
    """An in-place transfer after the placeholder was written and its uploader closed:
    check and delete the placeholder, link or copy (sealed as ``sealing``'s account,
    ``ln`` sources' seals appended to its list), then have the server hash what it now
    finds there (``AbstractExecFileTransfer.transfer``'s order)."""
    check_placeholder(dest, token)
    placed.append(dest)
    account, seals = sealing
    sha1 = transfer.place(kind, source, dest, hooks.on_bytes, seal_as=account, seals=seals)
    size = os.stat(dest).st_size
    if size != os.stat(source).st_size:
        raise ImportFailed(f"{dest}: size {size} differs from the source's")
    digest = sha1 if checksum == checksums.SHA1 else checksums.file_digest(dest, checksum)
    confirm_placed(proc, index, dest, size, digest)
    return digest


class _Progress:
    """How far an import got: what the server chose, and whether it took over."""

    def __init__(self) -> None:
        self.prefix: str | None = None
        self.fileset_id = 0
        self.handed_off = False
        self.account: transfer.Account | bool | None = None  # False: cannot seal
        self.seals: list[transfer.Seal] = []  # ln sources sealed, restored on removal


def _translated(exc: BaseException, plan: SourceFileset) -> OmerofsError:
    """Any failure of an import as the omerofs error it means."""
    if isinstance(exc, OmerofsError):
        return exc
    if isinstance(exc, omero.ServerError):
        return ImportFailed(f"{plan.root}: {translate(exc)}")
    if isinstance(exc, OSError):
        return ImportFailed(f"{plan.root}: {exc.strerror or exc}")
    if type(exc).__module__.startswith("Ice"):
        return CatalogUnavailable(f"{plan.root}: lost the OMERO server: {exc}")
    return ImportFailed(f"{plan.root}: {type(exc).__name__}: {exc}")
