"""Plates, screens and the download policy through the OMERO catalog, offline: a server
that answers the catalog's HQL with real omero-py objects and rtypes (as
tests/test_policy.py does), read into the view's tree."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import omero.clients  # noqa: F401
from omero.model import ExperimenterGroupI, PermissionsI
from omero.rtypes import rbool, rint, rlong, rstring, rtime, unwrap

from omerofs.backends.omero import cache, records
from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.backends.omero.session import ServerConnection
from omerofs.backends.omero.settings import OmeroSettings
from omerofs.catalog.protocol import Event, Fileset, FilesetEntry, Snapshot
from omerofs.fs.inodes import DENIED_MODE, FILE_MODE
from omerofs.fs.mount import fileset_loader
from omerofs.fs.view import RepositoryView
from omerofs.identity import IdMap
from omerofs.policy import KEY
from tests.test_plates import file_modes

GROUP, ALICE, BOB = 5, 2, 3
PLATE, SCREEN, FILESET = 41, 31, 50
PREFIX = "alice_2/2026-12/02/12-00-00.000/"
FILES = ["plate.zarr/.zattrs", "plate.zarr/A/1/0/0/.zarray", "plate.zarr/notes.txt"]


class PlateServer:
    """One read-only group with alice and bob; alice's fileset 50 is plate 41 in screen
    31 (its Images lie in WellSamples). IConfig and the group's config say the policy."""

    def __init__(self) -> None:
        self.server_policy = "+read,+write,+image"  # OMERO's default
        self.group_policy: str | None = None

    def getSession(self) -> Any:
        return self

    def getQueryService(self) -> Any:
        return self

    def getConfigService(self) -> Any:
        return self

    def getConfigValue(self, key: str) -> str:
        assert key == KEY
        return self.server_policy

    def findAllByQuery(self, hql: str, params: Any, ctx: Any) -> list[Any]:
        assert hql == "select g from ExperimenterGroup g"
        group = ExperimenterGroupI(GROUP, True)
        group.setName(rstring("screening"))
        group.getDetails().setPermissions(PermissionsI("rwr---"))
        return [group]

    def projection(self, hql: str, params: Any, ctx: Any) -> list[list[Any]]:
        p = {k: unwrap(v) for k, v in params.map.items()}
        after = p.get("after", -1)

        def page(rows: list[list[Any]]) -> list[list[Any]]:
            return [r for r in rows if unwrap(r[0]) > after]

        if "from EventLog el" in hql:
            return []  # nothing happened on the server: only the policy may change
        if "max(el.id)" in hql:
            return [[rlong(100)]]
        if "max(fs.id)" in hql:
            return [[rlong(FILESET)]]
        if "from GroupExperimenterMap m" in hql:
            return page([[rlong(1), rlong(GROUP), rlong(ALICE), rbool(False)],
                         [rlong(2), rlong(GROUP), rlong(BOB), rbool(False)]])  # fmt: skip
        if "index(m) = 0" in hql:
            return [[rlong(ALICE), rlong(GROUP)], [rlong(BOB), rlong(GROUP)]]
        if "from Experimenter e" in hql:
            return page([[rlong(ALICE), rstring("alice")], [rlong(BOB), rstring("bob")]])
        if "from Screen x" in hql:
            return page([[rlong(SCREEN), rstring("HCS"), rlong(ALICE), rlong(GROUP)]])
        if "from Plate x" in hql:
            return page([[rlong(PLATE), rstring("Plate 1"), rlong(ALICE), rlong(GROUP)]])
        if "from ScreenPlateLink l" in hql and "l.id > :after" in hql:
            return page([[rlong(7), rlong(SCREEN), rlong(PLATE)]])
        if "join g.config c" in hql:
            if self.group_policy is None:
                return []
            return [[rlong(GROUP), rstring(KEY), rstring(self.group_policy)]]
        if "from Fileset fs" in hql and "fs.usedFiles" not in hql:
            rows = [[rlong(FILESET), rlong(ALICE), rlong(GROUP), rstring(PREFIX),
                     rtime(1764676800000)]]  # fmt: skip
            return page(rows)
        if "fe.clientPath" in hql:
            return [
                [rlong(FILESET), rint(i), rstring(f"src/{name}"),
                 rstring(PREFIX + name.rpartition("/")[0]), rstring(name.rpartition("/")[2]),
                 rlong(10), rstring("0" * 40), rstring("SHA1-160"), None]
                for i, name in enumerate(FILES)
            ]  # fmt: skip
        if hql.startswith("select i.fileset.id, count(i.id)"):
            return [[rlong(FILESET), rlong(2)]]
        if "from WellSample ws" in hql:
            return [[rlong(FILESET), rlong(PLATE)]] if FILESET in p["ids"] else []
        if "DatasetImageLink" in hql or "FilesetAnnotationLink" in hql:
            return []
        if "from Project x" in hql or "from Dataset x" in hql or "ProjectDatasetLink" in hql:
            return []  # no projects or datasets on this server
        raise AssertionError(f"unexpected query: {hql}")

    def closeSession(self) -> None:
        pass

    def __del__(self) -> None:
        pass


def open_catalog(tmp_path: Path, server: PlateServer) -> OmeroCatalog:
    settings = OmeroSettings("127.0.0.1", 4064, tmp_path / "c.toml", tmp_path)
    idmap = IdMap({"alice": 3001, "bob": 3002}, {"screening": 71005})
    return OmeroCatalog(settings, ServerConnection(settings, lambda s: server), idmap)


def test_plates_and_screens_read_from_the_server(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path, PlateServer())
    snap = catalog.snapshot_people()
    assert {i: c.name for i, c in snap.screens.items()} == {SCREEN: "HCS"}
    assert {i: c.name for i, c in snap.plates.items()} == {PLATE: "Plate 1"}
    assert snap.screen_plate == [(SCREEN, PLATE)]
    (fs,) = catalog.filesets_for(BOB, {GROUP}, FILESET)
    assert fs.plate_id == PLATE and fs.image_count == 2
    assert catalog.plate_filesets([FILESET, 60]) == {FILESET}
    files = file_modes(RepositoryView(snap, 1, fileset_loader(catalog)), "bob")
    assert "Groups/screening/Screens/HCS/Plate 1/plate.zarr/.zattrs" in files


def test_the_servers_policy_decides_what_the_view_may_read(tmp_path: Path) -> None:
    """omero.policy.binary_access from IConfig and from the group's config (real rtypes
    rows) decides each original's mode in the view: OMERO's default keeps a plate's files
    closed except ``*.txt``; ``+plate`` opens them; the group's ``-plate`` closes them."""
    server = PlateServer()
    catalog = open_catalog(tmp_path, server)
    zattrs = "Groups/screening/Screens/HCS/Plate 1/plate.zarr/.zattrs"
    notes = "Groups/screening/Screens/HCS/Plate 1/plate.zarr/notes.txt"

    def view_modes() -> dict[str, int]:
        catalog._policy = None  # read the policy again now (it is kept POLICY_MAX_AGE)
        return file_modes(
            RepositoryView(catalog.snapshot_people(), 1, fileset_loader(catalog)), "bob"
        )

    default = view_modes()
    assert (default[zattrs], default[notes]) == (DENIED_MODE, FILE_MODE)
    server.server_policy = "+read,+write,+image,+plate"
    assert view_modes()[zattrs] == FILE_MODE
    server.group_policy = "-plate"  # a "-" in the group's config wins
    assert view_modes()[zattrs] == DENIED_MODE
    server.group_policy = None
    server.server_policy = "+read,-write,+image,+plate"
    closed = view_modes()
    assert (closed[zattrs], closed[notes]) == (DENIED_MODE, DENIED_MODE)  # -write: nothing


def test_a_policy_change_reaches_a_running_view(tmp_path: Path) -> None:
    server = PlateServer()
    catalog = open_catalog(tmp_path, server)
    view = RepositoryView(catalog.snapshot_people(), 1, fileset_loader(catalog))
    zattrs = "Groups/screening/Screens/HCS/Plate 1/plate.zarr/.zattrs"
    assert file_modes(view, "bob")[zattrs] == DENIED_MODE
    assert catalog.changes(view.event_id) is None  # nothing changed
    server.server_policy = "+read,+write,+image,+plate"
    catalog._policy_at = time.monotonic() - 3600  # the kept policy is old: read again
    catalog._people_at = 0.0  # and a tree loaded meanwhile reads people (and policy) anew
    catalog.filesets_for(BOB, {GROUP}, FILESET)
    changes = catalog.changes(view.event_id)
    assert changes is not None and ("BinaryAccess", "UPDATE") in {
        (e.entity, e.action) for e in changes.events
    }
    targets = view.rebuild_targets(changes)
    assert set(targets) == set(view._layouts)  # every built tree is rebuilt
    view.apply(changes, {e: [catalog.filesets_for(BOB, {GROUP}, FILESET)[0]] for e in targets})
    assert file_modes(view, "bob")[zattrs] == FILE_MODE
    assert catalog.changes(changes.snapshot.event_id) is None  # delivered once


def test_screen_plate_links_of_new_plates_arrive_with_them() -> None:
    raw = [
        Event(1, "Plate", PLATE, "INSERT"),
        Event(2, "ScreenPlateLink", 7, "INSERT"),
        Event(3, "ScreenPlateLink", 8, "INSERT"),  # an existing plate put into a screen
    ]
    refs = records.EventRefs(plate_of_link={7: PLATE, 8: 12})
    assert [(e.entity, e.entity_id) for e in records.view_events(raw, refs)] == [
        ("Plate", PLATE),
        ("ScreenPlateLink", 8),
    ]
    assert {"ome.model.screen.Plate", "ome.model.screen.ScreenPlateLink"} <= set(
        records.EVENT_TYPES
    )


def test_cached_state_keeps_plates_and_reads_older_rows() -> None:
    entry = FilesetEntry(0, "c", PREFIX, "a", 1, "h", "SHA1-160", "x")
    fs = Fileset(FILESET, ALICE, GROUP, PREFIX, "upload", 1.0, (entry,), (), 2, PLATE)
    row = cache.fileset_to_json(fs)
    assert cache.fileset_from_json(row) == fs
    assert cache.fileset_from_json(row[:9]).plate_id is None  # saved by an older omerofs
    snap = Snapshot(1, screen_plate=[(SCREEN, PLATE)])
    back = cache.people_from_json(cache.people_to_json(snap))
    assert back.screen_plate == [(SCREEN, PLATE)]
    old = cache.people_to_json(snap)
    for key in ("screens", "plates", "screen_plate"):
        del old[key]
    assert cache.people_from_json(old).plates == {}
