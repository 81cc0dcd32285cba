"""The OMERO import writer against the server's side played offline (tests/omero_standin.py:
RawFileBean, ManagedImportProcessI and a scripted import handle over a real
ManagedRepository directory), with real omero-py objects crossing the boundary."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import Glacier2
import omero
import omero.clients  # noqa: F401
import pytest
from omero.model import DatasetI, PermissionsI, ScreenI
from omero.rtypes import rlong, rstring, unwrap

from omerofs.backends.omero import checksums, records
from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.backends.omero.handoff import (
    FilesetWithWarning,
    ImportOutcomeUnknown,
    settle_failed_handoff,
)
from omerofs.backends.omero.session import ServerConnection, create_sudo_session
from omerofs.backends.omero.settings import OmeroSettings
from omerofs.backends.omero.writer import OmeroWriter, placeholder_token
from omerofs.catalog.protocol import Experimenter, Group, Snapshot
from omerofs.catalog.sqlite import Database
from omerofs.errors import CatalogUnavailable, ImportFailed, UsageError
from omerofs.identity import IdMap, PermissionLevel
from omerofs.imports.filesets import plan_fileset
from omerofs.imports.importer import ImportHooks, Target
from tests.conftest import make_tiff, needs_root
from tests.omero_standin import Client, Server, sudo_of
from tests.test_plates import copy_plate

ALICE = Experimenter(2, "alice", 3001, False, 5)
LAB = Group(5, "lab", PermissionLevel.READ_WRITE, 71001)


class Setup:
    def __init__(self, root: Path, outcome: str = "ok", import_timeout: float = 5.0) -> None:
        self.managed = root / "ManagedRepository"
        self.managed.mkdir(parents=True)
        self.sources = root / "sources"  # same filesystem: ln works
        self.sources.mkdir()
        self.server = Server(self.managed, outcome=outcome)
        cred = root / "cred.toml"
        cred.write_text('username = "svc"\npassword = "x"\n')
        cred.chmod(0o600)
        idmap = root / "idmap.toml"
        idmap.write_text("[users]\nalice = 3001\n[groups]\nlab = 71001\n")
        settings = OmeroSettings(
            "127.0.0.1", 4064, cred, self.managed, import_timeout=import_timeout
        )
        conn = ServerConnection(settings, connect=lambda s: Client(self.server))
        self.catalog = OmeroCatalog(settings, conn, IdMap.load(idmap))
        # the people as last read from the server (their queries are not played here)
        self.catalog._people = Snapshot(1, experimenters={2: ALICE}, groups={5: LAB})
        self.catalog._people_at = time.monotonic() + 1e9
        self.db = Database(root / "state.db", "repository state")
        self.writer = OmeroWriter(self.catalog, self.db, sudo=sudo_of(self.server))

    def source(self, name: str = "cells.tif", seed: int = 1) -> Path:
        return make_tiff(self.sources / name, seed=seed)

    def placed(self, name: str = "cells.tif") -> Path:
        return self.managed / self.server.prefix / name

    def write(self, source: Path, mode: str, target: Target | None = None):
        plan = plan_fileset(source)
        return self.writer.write(plan, ALICE, LAB, mode, target or Target(), ImportHooks())

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def setup(world_dir: Path):
    made: list[Setup] = []

    def make(**kwargs) -> Setup:
        made.append(Setup(world_dir / f"s{len(made)}", **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# -- item 1: after the hand-off a placed file is never removed on a guess -----------------


def test_an_error_after_the_images_landed_keeps_the_import(setup) -> None:
    """ERR from step 2 (thumbnails) after step 0 committed the Images: the import is
    there; its files stay and the fileset comes back with a warning."""
    s = setup(outcome="err-after-images")
    src = s.source()
    fileset = s.write(src, "ln")
    assert isinstance(fileset, FilesetWithWarning) and "thumbnail" in fileset.warning
    assert fileset.id == 77 and fileset.image_count == 1
    assert s.placed().stat().st_ino == src.stat().st_ino  # the link OMERO's Images use
    assert s.server.deleted == []


def test_a_failed_import_without_images_is_deleted_on_the_server_before_links_go(setup) -> None:
    s = setup(outcome="err-before-images")
    src = s.source()
    at_delete: list[bool] = []
    s.server.on_delete = lambda: at_delete.append(s.placed().exists())
    with pytest.raises(ImportFailed, match="could not import") as caught:
        s.write(src, "cp")
    assert not isinstance(caught.value, ImportOutcomeUnknown)
    assert s.server.deleted == [77] and at_delete == [True]  # deleted while our copy existed
    assert not s.placed().exists() and src.exists()


def test_an_import_still_running_at_the_timeout_is_deleted_when_it_has_no_images(setup) -> None:
    s = setup(outcome="running", import_timeout=0.2)
    with pytest.raises(ImportFailed, match="did not finish within"):
        s.write(s.source(), "cp")
    assert s.server.deleted == [77] and not s.placed().exists()


def test_losing_the_server_after_the_hand_off_keeps_everything(setup) -> None:
    s = setup(outcome="lost")
    src = s.source()
    with pytest.raises(ImportOutcomeUnknown, match="nothing was removed"):
        s.write(src, "ln")
    assert s.placed().exists() and src.exists() and s.server.deleted == []


def test_settling_a_failed_hand_off(world_dir: Path) -> None:
    """The decision on its own: images -> warning; none -> delete, then remove; no answer
    or a failed delete -> keep everything, outcome unknown."""
    placed = world_dir / "placed.tif"
    removed: list[list[Path]] = []

    def remove(paths: list[Path]) -> None:
        removed.append(paths)

    def fail() -> int:
        raise CatalogUnavailable("OMERO server 127.0.0.1:4064: ConnectionRefused")

    assert "boom" in settle_failed_handoff("d", "boom", 7, [placed], lambda: 2, fail, remove)
    assert removed == []
    with pytest.raises(ImportOutcomeUnknown, match="could not be asked"):
        settle_failed_handoff("d", "boom", 7, [placed], fail, fail, remove)
    with pytest.raises(ImportOutcomeUnknown, match="did not delete"):
        settle_failed_handoff("d", "boom", 7, [placed], lambda: 0, fail, remove)
    assert removed == []
    with pytest.raises(ImportFailed, match="boom"):
        settle_failed_handoff("d", "boom", 7, [placed], lambda: 0, lambda: None, remove)
    assert removed == [[placed]]


# -- item 2: the placeholder, in Java's order ----------------------------------------------


@pytest.mark.parametrize("mode", ["ln", "ln_s", "cp"])
def test_in_place_import_in_javas_order(setup, mode: str) -> None:
    """The token is written and its uploader CLOSED before it is read here (the server
    flushes only on close); after the link the server reopens the file read-only and
    hashes it; verifyUpload then agrees."""
    s = setup()
    src = s.source()
    fileset = s.write(src, mode)
    record = s.server.files[0]
    assert (record.hash, record.size) == (sha1(src), src.stat().st_size)  # hashed by the server
    assert s.server.process.verified == [sha1(src)]
    assert s.placed().read_bytes() == src.read_bytes()
    assert fileset.id == 77 and not isinstance(fileset, FilesetWithWarning)


SERVER_ACCOUNT = 4242  # the OMERO server's uid/gid: owner of its ManagedRepository


@needs_root
@pytest.mark.parametrize("mode", ["ln", "ln_s", "cp"])
def test_in_place_originals_are_sealed_as_the_servers(setup, mode: str) -> None:
    """What an in-place import leaves in the server's repository belongs to the owner of
    the ManagedRepository directory (the server's account) and has no write bit, as the
    server's own uploads do: neither the daemon's writer nor the user (through an ``ln``
    source, the same inode) can change an imported byte. An ``ln_s`` link is the
    account's too; its target stays the user's file."""
    s = setup()
    os.chown(s.managed, SERVER_ACCOUNT, SERVER_ACCOUNT)
    src = s.source()
    os.chown(src, 3001, 3001)
    src.chmod(0o640)
    s.write(src, mode)
    placed = os.lstat(s.placed())
    assert (placed.st_uid, placed.st_gid) == (SERVER_ACCOUNT, SERVER_ACCOUNT)
    if mode == "ln_s":
        assert os.stat(src).st_uid == 3001 and s.placed().read_bytes() == src.read_bytes()
        return
    assert stat.S_IMODE(placed.st_mode) & 0o7222 == 0, oct(placed.st_mode)
    assert placed.st_mode & stat.S_IRUSR  # the server still reads it
    if mode == "ln":  # the source is the imported inode: sealed with it, read bits kept
        assert os.stat(src).st_ino == placed.st_ino and stat.S_IMODE(placed.st_mode) == 0o440
    else:
        assert os.stat(src).st_uid == 3001 and stat.S_IMODE(os.stat(src).st_mode) == 0o640


@needs_root
def test_a_failed_in_place_import_gives_an_ln_source_back(setup) -> None:
    """The link is removed again when the server cannot read it; the sealed source gets
    its owner and mode back (it is the user's file again, not imported)."""
    s = setup()
    os.chown(s.managed, SERVER_ACCOUNT, SERVER_ACCOUNT)
    s.server.unreadable = True
    src = s.source()
    os.chown(src, 3001, 3001)
    src.chmod(0o640)
    with pytest.raises(ImportFailed, match="cannot read the placed file"):
        s.write(src, "ln")
    st = os.stat(src)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (3001, 3001, 0o640, 1)


def test_a_source_as_long_as_the_token_is_still_rehashed(setup) -> None:
    """The read-only store re-hashes only when the size differs from the one on record
    (the token's): a 36-byte source gets a 37-byte token."""
    s = setup()
    src = s.sources / "notes.txt"
    src.write_bytes(b"x" * 36)
    assert len(placeholder_token(36)) != 36 and len(placeholder_token(10)) == 36
    s.write(src, "ln")
    assert s.server.files[0].hash == sha1(src)


def test_an_existing_target_is_refused_before_anything_is_written(setup) -> None:
    s = setup()
    src = s.source()
    s.placed().parent.mkdir(parents=True)
    s.placed().write_bytes(b"someone else's file")
    with pytest.raises(ImportFailed, match="already exists"):
        s.write(src, "ln")
    assert s.placed().read_bytes() == b"someone else's file"
    assert not s.server.handed_off


def test_a_placed_file_the_server_cannot_read_is_removed_again(setup) -> None:
    s = setup()
    s.server.unreadable = True
    src = s.source()
    with pytest.raises(ImportFailed, match="cannot read the placed file"):
        s.write(src, "ln")
    assert not s.placed().exists() and src.exists() and not s.server.handed_off


def test_upload_and_the_negotiated_checksum(setup) -> None:
    s = setup()
    s.server.algorithms = ("MD5-128", "SHA1-160")  # the server prefers MD5
    src = s.source()
    s.write(src, "upload")
    assert s.placed().read_bytes() == src.read_bytes()
    assert s.server.process.verified == [hashlib.md5(src.read_bytes()).hexdigest()]
    s2 = setup()
    s2.server.algorithms = ("MD5-128",)
    s2.write(s2.source(), "ln")
    assert s2.server.files[0].hash == hashlib.md5(s2.source().read_bytes()).hexdigest()
    s3 = setup()
    s3.server.algorithms = ("Murmur3-128",)
    with pytest.raises(ImportFailed, match="omero.checksum.supported"):
        s3.write(s3.source(), "upload")
    assert checksums.OFFERED[0] == checksums.SHA1  # the ingest transfers compute SHA1 anyway


# -- item 3: sudo sessions without a time-to-live -------------------------------------------


def test_sudo_sessions_as_omero_py_makes_them() -> None:
    """``createSessionWithTimeouts(p, 0, timeToIdle of our own session)``, as omero-py's
    ``login --sudo`` (omero/util/sessions.py), not a one-hour time-to-live."""
    made: list[tuple] = []

    class Session:
        def __init__(self, uuid: str, idle: int) -> None:
            self.uuid, self.idle = uuid, idle

        def getUuid(self):
            return rstring(self.uuid)

        def getTimeToIdle(self):
            return rlong(self.idle)

    class SessionService:
        def getSession(self, uuid: str) -> Session:
            assert uuid == "admin-session"
            return Session(uuid, 600_000)

        def createSessionWithTimeouts(self, principal, ttl: int, tti: int) -> Session:
            made.append((principal.name, principal.group, principal.eventType, ttl, tti))
            return Session("alice-session", tti)

    class Identity:
        name = "admin-session"

    class Factory:
        def getSessionService(self) -> SessionService:
            return SessionService()

        def ice_getIdentity(self) -> Identity:
            return Identity()

    assert create_sudo_session(Factory(), "alice", "lab") == "alice-session"
    assert made == [("alice", "lab", "User", 0, 600_000)]


def test_a_server_that_cannot_create_sessions_is_unavailable(tmp_path: Path) -> None:
    for exc in (
        Glacier2.CannotCreateSessionException("starting up"),
        omero.WrappedCreateSessionException("busy", 0, "ome.conditions.InternalException"),
    ):

        def refuse(_settings, exc=exc):
            raise exc

        cred = tmp_path / "c.toml"
        conn = ServerConnection(OmeroSettings("127.0.0.1", 4064, cred, tmp_path), refuse)
        with pytest.raises(CatalogUnavailable, match="cannot create a session"):
            conn.call(lambda sf: sf)
        assert conn._retry_at > 0  # backs off like any other outage


# -- item 4: aggregates over empty tables ---------------------------------------------------


class EmptyServer:
    """A server with no EventLog rows and no filesets: ``max`` answers one NULL row."""

    def __init__(self, row: list) -> None:
        self.row = row

    def getSession(self):
        return self

    def getQueryService(self):
        return self

    def projection(self, hql: str, params, ctx):
        assert hql.startswith("select max(")
        return [list(self.row)]

    def closeSession(self) -> None:
        pass

    def __del__(self) -> None:
        pass


@pytest.mark.parametrize("row", [[], [None]])
def test_a_server_with_no_events_yet(tmp_path: Path, row: list) -> None:
    settings = OmeroSettings("127.0.0.1", 4064, tmp_path / "c.toml", tmp_path)
    server = EmptyServer(row)
    catalog = OmeroCatalog(settings, ServerConnection(settings, lambda s: server), IdMap({}, {}))
    assert catalog.last_event_id() == 0


def test_max_over_an_empty_table() -> None:
    assert records.scalar([[rlong(41)]]) == 41
    assert records.scalar([[None]]) == 0  # one NULL row
    assert records.scalar([[]]) == 0  # the NULL dropped from the row
    assert records.scalar([]) == 0


# -- item 5: the event log, re-read with an overlap ------------------------------------------


def test_events_committed_late_are_delivered_once() -> None:
    def ev(i: int, entity: str = "ome.model.core.Image"):
        return records.event_of([i, entity, 100 + i, "INSERT"])

    window = records.EventWindow(overlap=100)
    assert window.lower_bound(500) == 400
    first = window.fresh(2, [ev(1), ev(2), ev(4)])  # 3 not committed yet
    assert [e.id for e in first] == [4]  # 1 and 2 predate the caller's snapshot
    window.delivered(4, first)
    second = window.fresh(4, [ev(1), ev(2), ev(3), ev(4), ev(5)])
    assert [e.id for e in second] == [3, 5]  # the late commit, once
    window.delivered(5, second)
    assert window.fresh(5, [ev(3), ev(5)]) == []
    assert "ome.model.core.PlaneInfo" not in records.EVENT_TYPES
    assert {"ome.model.core.Image", "ome.model.fs.Fileset"} <= set(records.EVENT_TYPES)


class EventLogServer:
    """The EventLog of a server where an import (Images 501, 502 of fileset 50) commits
    after events with higher ids (a PlaneInfo row, fileset 60's Image 601)."""

    def __init__(self) -> None:
        self.committed = [
            (10, "ome.model.core.PlaneInfo", 1),
            (12, "ome.model.core.Image", 601),
        ]

    def commit_late_import(self) -> None:
        self.committed += [(8, "ome.model.core.Image", 501), (9, "ome.model.core.Image", 502)]

    def getSession(self):
        return self

    def getQueryService(self):
        return self

    def getConfigService(self):  # omero.policy.binary_access: not set (OMERO's default)
        return self

    def getConfigValue(self, key: str) -> None:
        return None

    def projection(self, hql: str, params, ctx):
        p = {k: unwrap(v) for k, v in params.map.items()}
        if "from EventLog el" in hql:
            low, types = max(p["after"], p.get("since", -1)), p.get("types")
            rows = sorted(
                (i, t, e) for i, t, e in self.committed if i > low and (not types or t in types)
            )
            return [[rlong(i), rstring(t), rlong(e), rstring("INSERT")] for i, t, e in rows]
        if hql.startswith("select i.id, i.fileset.id from Image i"):
            return [[rlong(i), rlong(50 if i < 600 else 60)] for i in p["ids"]]
        if "from Fileset fs where fs.id in (:ids)" in hql:
            return [[rlong(f), rlong(2), rlong(5), rstring(f"u/{f}/"), None] for f in p["ids"]]
        return []  # entries, image counts, links: none needed here

    def closeSession(self) -> None:
        pass

    def __del__(self) -> None:
        pass


def test_an_import_committed_after_later_events_still_arrives(tmp_path: Path) -> None:
    """``changes`` re-reads an overlap window: the view gets fileset 50 although its
    Images' EventLog ids (8, 9) are below the position it had reached (12)."""
    settings = OmeroSettings("127.0.0.1", 4064, tmp_path / "c.toml", tmp_path)
    server = EventLogServer()
    catalog = OmeroCatalog(settings, ServerConnection(settings, lambda s: server), IdMap({}, {}))
    catalog._people = Snapshot(1, experimenters={2: ALICE}, groups={5: LAB})
    catalog._people_at = time.monotonic() + 1e9
    first = catalog.changes(7)
    assert [(e.entity, e.entity_id) for e in first.events] == [("Fileset", 60)]
    assert first.snapshot.event_id == 12  # the PlaneInfo row was never read
    server.commit_late_import()
    second = catalog.changes(first.snapshot.event_id)
    assert second is not None and 50 in second.snapshot.filesets
    assert [(e.entity, e.entity_id) for e in second.events] == [("Fileset", 50)]
    assert catalog.changes(second.snapshot.event_id) is None  # delivered once


# -- -T: ModelImportTarget's choice ----------------------------------------------------------


def container(kind: type, i: int, name: str, can_link: bool = True):
    """A Dataset or Screen as the server returns it, with the caller's link right."""
    c = kind(i, True)
    c.setName(rstring(name))
    perms = PermissionsI("rwrw--")
    perms._restrictions = [not can_link, False, False, False]  # LINKRESTRICTION first
    c.getDetails().setPermissions(perms)
    return c


def test_target_is_the_newest_dataset_the_user_may_link_to() -> None:
    def dataset(i: int, can_link: bool) -> DatasetI:
        return container(DatasetI, i, "D1", can_link)

    assert records.newest_linkable([dataset(9, False), dataset(7, True), dataset(3, True)]) == 7
    assert records.newest_linkable([dataset(9, False)]) is None
    assert records.newest_linkable([]) is None


def test_transfer_leaves_no_uploader_open(setup) -> None:
    s = setup()
    s.write(s.source(), "ln")
    assert all(store.closed for store in s.server.process.open.values())
    assert os.path.exists(s.placed())


# -- -T Screen:name:S: the plate goes into the Screen -----------------------------------------

PLATE_ID = 41  # the Plate the server makes of the plate's import


def plate_setup(setup) -> Setup:
    """The real OME-Zarr plate of shared/data; the server makes a Plate of it with two
    Images (its .zattrs: wells A/1 and B/1, one field each)."""
    s = setup()
    s.server.plate_id, s.server.image_count = PLATE_ID, 2
    return s


def test_a_screen_target_links_the_plate_to_the_newest_screen_the_user_may_link_to(
    setup, world_dir: Path
) -> None:
    """``ModelImportTarget``: of the Screens named HCS in the group, newest first, the
    first the user may link to (9 is not); it goes to the server as the import's
    ``userSpecifiedTarget`` (unloaded, as ``ImportContainer.fillData`` sends the loaded
    target's id), and the server links the new Plate to it."""
    s = plate_setup(setup)
    s.server.containers = [
        container(ScreenI, 3, "HCS"),
        container(ScreenI, 7, "HCS"),
        container(ScreenI, 9, "HCS", can_link=False),
        container(ScreenI, 8, "other"),
        container(DatasetI, 10, "HCS"),  # a Dataset of that name is no Screen
    ]
    fileset = s.write(copy_plate(world_dir / "plate"), "upload", Target(screen="HCS"))
    target = s.server.settings.userSpecifiedTarget
    assert isinstance(target, ScreenI) and unwrap(target.getId()) == 7 and not target.isLoaded()
    assert s.server.saved == []  # an existing Screen: nothing created
    assert s.server.screen_plate == [(7, PLATE_ID)]
    assert fileset.plate_id == PLATE_ID and fileset.image_count == 2
    assert fileset.dataset_ids == ()


def test_a_missing_screen_is_created_in_the_import_group(setup, world_dir: Path) -> None:
    s = plate_setup(setup)
    s.server.containers = [container(ScreenI, 9, "HCS", can_link=False)]  # someone else's
    s.write(copy_plate(world_dir / "plate"), "upload", Target(screen="HCS"))
    ((screen, ctx),) = s.server.saved
    assert isinstance(screen, ScreenI) and unwrap(screen.getName()) == "HCS"
    assert ctx == {"omero.group": str(LAB.id)}  # the import group, not the default one
    new_id = unwrap(screen.getId())
    assert unwrap(s.server.settings.userSpecifiedTarget.getId()) == new_id
    assert s.server.screen_plate == [(new_id, PLATE_ID)]


def test_a_screen_target_for_no_plate_is_refused_before_anything_is_sent(setup) -> None:
    """OMERO would create the Screen and link nothing (``TargetProcessor`` links only
    Plates to a Screen): the Images would land orphaned. Refused as the embedded
    backend refuses it, before a Screen is made or a file placed or uploaded."""
    s = setup()
    src = s.source()
    for mode in ("upload", "ln"):
        with pytest.raises(UsageError, match="a Screen target takes plates only"):
            s.write(src, mode, Target(screen="HCS"))
    assert s.server.files == [] and s.server.settings is None  # importFileset never called
    assert s.server.saved == [] and not (s.managed / s.server.prefix).exists()
    assert src.exists()


def test_a_plate_without_a_target_is_in_no_screen(setup, world_dir: Path) -> None:
    s = plate_setup(setup)
    fileset = s.write(copy_plate(world_dir / "plate"), "upload")
    assert s.server.settings.userSpecifiedTarget is None and s.server.screen_plate == []
    assert fileset.plate_id == PLATE_ID


def test_a_dataset_target_still_goes_as_a_dataset(setup) -> None:
    s = setup()
    s.server.containers = [container(DatasetI, 12, "D1"), container(ScreenI, 13, "D1")]
    fileset = s.write(s.source(), "upload", Target(dataset="D1"))
    target = s.server.settings.userSpecifiedTarget
    assert isinstance(target, DatasetI) and unwrap(target.getId()) == 12
    assert fileset.dataset_ids == (12,) and fileset.plate_id is None
