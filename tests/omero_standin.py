"""The server's side of one OMERO import, played offline over real directories.

No OMERO server can run here, so the parts of the import protocol omerofs's writer
drives are played by these classes, each doing what the named Java source does (and
nothing more): real omero-py model objects and rtypes cross the boundary, files live
in a real ManagedRepository directory, and outcomes after ``verifyUpload`` are chosen
by the test. They stand in for the server, never for omerofs code.

- ``Store``: ``RawFileBean`` behind ``ManagedImportProcessI.getUploader`` — writes are
  not visible on disk until ``close``/``save`` flush them (an unflushed channel, as an
  NFS client sees it); ``save`` re-hashes only if the store wrote or the size on disk
  differs from the size on record (``isModified``) or the file is empty, and returns
  None otherwise; mode ``r`` (``omero.fs.mode``) cannot write.
- ``Process``: ``ManagedImportProcessI`` — one cached uploader per index until closed,
  ``verifyUpload`` compares the client's hashes with those on record.
- ``Handle``: a ``HandleI`` whose response the test scripts (``OK``, ``ERR``, none yet,
  or the connection lost), and which may commit the Images first (import step 0).
- Containers: ``findAllByQuery`` over the Screens/Datasets the test put there (newest
  first, as the writer's ``order by x.id desc`` asks), ``saveAndReturnObject`` giving a
  new one the next id in the caller's group. When the Images commit, the import's
  ``userSpecifiedTarget`` is linked as ``ome.formats.model.TargetProcessor`` does: a
  Dataset gets the Images, a Screen the Plate (if Bio-Formats made one: ``plate_id``,
  chosen by the test), and a Screen gets nothing for an import that made no Plate.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import Ice
import omero
import omero.clients  # noqa: F401
import omero.cmd
from omero.model import OriginalFileI, PermissionsI
from omero.rtypes import rint, rlong, rstring, rtime, unwrap

HASHERS = {"SHA1-160": hashlib.sha1, "MD5-128": hashlib.md5}


@dataclass
class Record:
    """An OriginalFile row: where the file is and what the server last hashed."""

    id: int
    path: str  # relative to the ManagedRepository, ends with "/"
    name: str
    size: int | None = None
    hash: str | None = None


class Store:
    def __init__(
        self, managed: Path, record: Record, mode: str, algorithm: str, eager: bool = False
    ) -> None:
        self.full = managed / record.path / record.name
        self.record, self.mode, self.algorithm = record, mode, algorithm
        self.eager = eager  # writes visible at once (a local disk), not only after close
        self.pending: list[tuple[bytes, int]] = []
        self.wrote = False
        self.closed = False
        # FileBuffer opens its channel lazily: nothing exists on disk before a write
        if mode == "r" and not os.access(self.full, os.R_OK):
            raise omero.ResourceError(None, None, f"cannot open {self.full}")

    def getFileId(self) -> int:
        return self.record.id

    def write(self, data: bytes, offset: int, length: int) -> None:
        if self.mode == "r":
            raise omero.SecurityViolation(None, None, "File not writeable!")
        self.pending.append((bytes(data[:length]), offset))
        self.wrote = True
        if self.eager:
            self._flush()

    def size(self) -> int:
        return os.path.getsize(self.full)

    def _flush(self) -> None:
        if not self.pending:
            return
        self.full.parent.mkdir(parents=True, exist_ok=True)
        with open(self.full, "ab") as f:  # created on first use
            pass
        with open(self.full, "r+b") as f:
            for data, offset in self.pending:
                f.seek(offset)
                f.write(data)
        self.pending.clear()

    def save(self) -> Any:
        if not self.pending and not os.path.exists(self.full):
            return None  # never written: nothing to hash
        size_now = os.path.getsize(self.full) if os.path.exists(self.full) else 0
        size_now += sum(len(d) for d, _ in self.pending)
        if not (self.wrote or size_now != self.record.size or size_now == 0):
            return None
        if self.mode != "r":
            self._flush()
        digest = HASHERS[self.algorithm]()
        digest.update(self.full.read_bytes())
        self.record.hash, self.record.size = digest.hexdigest(), os.path.getsize(self.full)
        self.wrote = False
        saved = OriginalFileI(self.record.id, True)
        saved.setHash(rstring(self.record.hash))
        return saved

    def close(self) -> None:
        if self.closed:
            raise Ice.ObjectNotExistException()
        try:
            self.save()
        finally:
            self.closed = True


@dataclass
class Handle:
    """The import request's handle, as the test wants it to end."""

    server: Server
    outcome: str  # "ok", "err-after-images", "err-before-images", "lost", "running"
    closed: bool = False

    def getResponse(self) -> Any:
        if self.outcome == "lost":
            self.server.reachable = False
            raise Ice.ConnectionLostException()
        if self.outcome == "running":
            return None
        if self.outcome in ("ok", "err-after-images"):
            self.server.commit_images()  # step 0 committed the Images (and their links)
        if self.outcome == "ok":
            return omero.cmd.OK()
        return omero.cmd.ERR("ome.conditions.InternalException", "thumbnail-failure", {"step": "2"})

    def close(self) -> None:
        self.closed = True


class Process:
    def __init__(self, server: Server, algorithm: str) -> None:
        self.server, self.algorithm = server, algorithm
        self.open: dict[int, Store] = {}
        self.verified: list[str] | None = None

    def getUploader(self, index: int, ctx: dict[str, str] | None = None) -> Store:
        store = self.open.get(index)
        if store is None or store.closed:
            mode = (ctx or {}).get("omero.fs.mode", "rw")
            if mode == "r" and self.server.unreadable:  # e.g. the server's uid may not read
                raise omero.ResourceError(None, None, "Permission denied")
            store = Store(
                self.server.managed,
                self.server.files[index],
                mode,
                self.algorithm,
                self.server.eager_writes,
            )
            self.open[index] = store
        return store

    def verifyUpload(self, hashes: list[str]) -> Handle:
        records = self.server.files
        failing = {
            i: r.hash or ""
            for i, (h, r) in enumerate(zip(hashes, records, strict=True))
            if h != r.hash
        }
        if failing:
            raise omero.ChecksumValidationException(
                None, None, "A checksum mismatch has occurred.", failing
            )
        self.verified = hashes
        self.server.handed_off = True
        return Handle(self.server, self.server.outcome)

    def close(self) -> None:
        pass


@dataclass
class Server:
    """One fileset's import, from ``importFileset`` to its outcome."""

    managed: Path
    prefix: str = "alice_2/2026-12/02/13-00-00.000/"
    outcome: str = "ok"
    fileset_id: int = 77
    owner_id: int = 2
    group_id: int = 5
    algorithms: tuple[str, ...] = ("SHA1-160", "MD5-128")  # omero.checksum.supported
    files: list[Record] = field(default_factory=list)
    images: int = 0
    handed_off: bool = False
    deleted: list[int] = field(default_factory=list)
    reachable: bool = True
    unreadable: bool = False  # the server cannot open placed files
    eager_writes: bool = False  # a local disk: written bytes visible before close
    process: Process | None = None
    on_delete: Any = None  # called before the server deletes (tests look at the disk then)
    settings: Any = None  # the ImportSettings importFileset was given
    image_count: int = 1  # Images the import makes (Bio-Formats' series)
    plate_id: int | None = None  # the Plate the import makes, if the file is one
    containers: list[Any] = field(default_factory=list)  # Screens, Datasets (model objects)
    saved: list[tuple[Any, dict[str, str]]] = field(default_factory=list)  # (object, ctx)
    screen_plate: list[tuple[int, int]] = field(default_factory=list)  # ScreenPlateLinks
    dataset_of_images: int | None = None  # the Dataset the Images were linked to
    next_id: int = 900

    # -- the repository ---------------------------------------------------------------

    def suggestChecksumAlgorithm(self, offered: list[Any]) -> Any:
        """``ManagedRepositoryI``: the first configured algorithm the client offers."""
        by_name = {unwrap(a.getValue()): a for a in offered}
        return next((by_name[n] for n in self.algorithms if n in by_name), None)

    def importFileset(self, fileset: Any, settings: Any) -> Process:
        """Each file under the template prefix at its path below the client paths'
        common directory (``ManagedRepositoryI`` trims the shared root)."""
        paths = [unwrap(e.getClientPath()) for e in fileset.copyUsedFiles()]
        common = os.path.commonpath([os.path.dirname("/" + p) for p in paths])
        for i, path in enumerate(paths):
            below, _, name = os.path.relpath("/" + path, common).rpartition("/")
            self.files.append(Record(1000 + i, self.prefix + (below + "/" if below else ""), name))
        self.settings = settings
        self.process = Process(self, unwrap(settings.checksumAlgorithm.getValue()))
        return self.process

    def commit_images(self) -> None:
        """Import step 0 saves the Images and ``TargetProcessor``'s references: a Dataset
        target collects the Image containers, a Screen target the Plate ones."""
        self.images = self.image_count
        target = self.settings.userSpecifiedTarget if self.settings is not None else None
        if isinstance(target, omero.model.Dataset):
            self.dataset_of_images = int(unwrap(target.getId()))
        elif isinstance(target, omero.model.Screen) and self.plate_id is not None:
            link = (int(unwrap(target.getId())), self.plate_id)
            if link not in self.screen_plate:  # a response polled twice saves once
                self.screen_plate.append(link)

    # -- containers (ModelImportTarget's queries and saves) ------------------------------

    def findAllByQuery(self, hql: str, params: Any, ctx: Any = None) -> list[Any]:
        if not self.reachable:
            raise Ice.ConnectionRefusedException()
        found = re.fullmatch(
            r"select x from (Screen|Dataset) x where x\.name = :name order by x\.id desc", hql
        )
        if found is None:
            raise AssertionError(f"unexpected query: {hql}")
        kind, name = getattr(omero.model, found[1]), unwrap(params.map["name"])
        matching = [
            c for c in self.containers if isinstance(c, kind) and unwrap(c.getName()) == name
        ]
        return sorted(matching, key=lambda c: -unwrap(c.getId()))

    def saveAndReturnObject(self, obj: Any, ctx: Any = None) -> Any:
        """A new container: the next id, owned by the caller, in ``ctx``'s group."""
        if not self.reachable:
            raise Ice.ConnectionRefusedException()
        self.next_id += 1
        obj.setId(rlong(self.next_id))
        obj.getDetails().setPermissions(PermissionsI("rwrw--"))  # the owner may link
        self.saved.append((obj, dict(ctx or {})))
        self.containers.append(obj)
        return obj

    # -- queries (only those the writer and catalog send) --------------------------------

    def projection(self, hql: str, params: Any, ctx: Any = None) -> list[list[Any]]:
        if not self.reachable:
            raise Ice.ConnectionRefusedException()
        values = {k: v for k, v in params.map.items()}
        if "where f.id = :id" in hql:
            record = next(r for r in self.files if r.id == unwrap(values["id"]))
            return [
                [rlong(self.fileset_id), rstring(self.prefix), rstring(record.path),
                 rstring(record.name)]
            ]  # fmt: skip
        if hql.startswith("select count(i.id) from Image i"):
            return [[rlong(self.images if self.fileset_id not in self.deleted else 0)]]
        landed = self.images and self.fileset_id not in self.deleted
        if "fs.templatePrefix = :prefix" in hql:  # OmeroCatalog.fileset_by_prefix
            if not landed or unwrap(values["prefix"]) != self.prefix:
                return []
            return [[rlong(self.fileset_id), rlong(self.owner_id), rlong(self.group_id),
                     rstring(self.prefix), rtime(1764680400000)]]  # fmt: skip
        if "fe.clientPath" in hql:
            return [
                [rlong(self.fileset_id), rint(i), rstring(r.name), rstring(r.path),
                 rstring(r.name), rlong(r.size), rstring(r.hash), rstring("SHA1-160"), None]
                for i, r in enumerate(self.files)
            ]  # fmt: skip
        if hql.startswith("select i.fileset.id, count(i.id)"):
            return [[rlong(self.fileset_id), rlong(self.images)]]
        if "from DatasetImageLink l join l.child i" in hql:  # OmeroCatalog._read
            if not landed or self.dataset_of_images is None:
                return []
            return [[rlong(self.fileset_id), rlong(self.dataset_of_images)]]
        if "ws.well.plate.id from WellSample ws" in hql:  # OmeroCatalog._plates_of
            if not landed or self.plate_id is None:
                return []
            return [[rlong(self.fileset_id), rlong(self.plate_id)]]
        if "FilesetAnnotationLink" in hql:
            return []
        raise AssertionError(f"unexpected query: {hql}")

    def submit(self, request: Any, ctx: Any = None) -> Handle:
        assert isinstance(request, omero.cmd.Delete2)
        if self.on_delete is not None:
            self.on_delete()
        for fs_id in request.targetObjects["Fileset"]:
            self.deleted.append(fs_id)
            for r in self.files:  # Delete2 removes the OriginalFiles' files too
                (self.managed / r.path / r.name).unlink(missing_ok=True)
        return Handle(self, "deleted")


class _Session:
    def __init__(self, server: Server) -> None:
        self.server = server

    def getQueryService(self) -> Server:
        return self.server

    def getUpdateService(self) -> Server:
        return self.server

    def submit(self, request: Any, ctx: Any = None) -> Any:
        handle = self.server.submit(request, ctx)
        handle.getResponse = lambda: omero.cmd.OK()  # type: ignore[method-assign]
        return handle


class Client:
    """A logged-in client (the sudo session, or the service account's)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def getSession(self) -> _Session:
        if not self.server.reachable:
            raise Ice.ConnectionRefusedException()
        return _Session(self.server)

    def getManagedRepository(self) -> Server:
        return self.server

    def closeSession(self) -> None:
        pass

    def __del__(self) -> None:
        pass


def sudo_of(server: Server):
    @contextmanager
    def sudo(user: str, group: str):
        if not server.reachable:
            raise Ice.ConnectionRefusedException()
        yield Client(server)

    return sudo
