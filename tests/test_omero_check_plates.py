"""``omerofs check``'s plates-and-screens row (backends/omero/check.py) against the
offline plate server of tests/test_plates_omero.py (real omero-py rtypes): the Screen,
Plate and ScreenPlateLink queries and the WellSample -> plate query, which meets the
server even when it holds no fileset yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import omero

from omerofs.backends.omero.check import plate_check, server_checks
from tests.test_omero_check import omero_repo
from tests.test_plates_omero import FILESET, PlateServer, open_catalog


class RecordingServer(PlateServer):
    """The plate server, noting each query; ``refuse_wells``: an HQL parser that does
    not know ``ws.well.plate`` (as an older or differently mapped server might)."""

    def __init__(self, refuse_wells: bool = False) -> None:
        super().__init__()
        self.asked: list[tuple[str, Any]] = []
        self.refuse_wells = refuse_wells

    def projection(self, hql: str, params: Any, ctx: Any) -> list[list[Any]]:
        self.asked.append((hql, omero.rtypes.unwrap(params.map.get("ids"))))
        if self.refuse_wells and "from WellSample ws" in hql:
            raise omero.QueryException(None, None, "could not resolve property: well")
        return super().projection(hql, params, ctx)


def test_plates_and_screens_are_counted_and_each_sampled_fileset_asked(tmp_path: Path) -> None:
    server = RecordingServer()
    catalog = open_catalog(tmp_path, server)
    snap = catalog.snapshot_people()
    (fileset,) = catalog.filesets_for(0, None, FILESET)
    row = plate_check(catalog, snap, [fileset])
    assert row.ok and row.name == "plates and screens"
    assert row.detail == "1 screens, 1 plates (1 in a screen); 1 of 1 sampled filesets are plates"
    asked = [hql for hql, _ in server.asked]
    for kind in ("from Screen x", "from Plate x", "from ScreenPlateLink l"):
        assert any(kind in hql for hql in asked), kind


def test_the_plate_query_meets_the_server_without_filesets(tmp_path: Path) -> None:
    server = RecordingServer()
    catalog = open_catalog(tmp_path, server)
    row = plate_check(catalog, catalog.snapshot_people(), [])
    assert row.ok and "0 of 0 sampled filesets" in row.detail
    (ids,) = [ids for hql, ids in server.asked if "ws.well.plate.id" in hql]
    assert ids == [0]  # no fileset has id 0: only the query's syntax is tried


def test_a_server_refusing_the_plate_query_fails_the_row_with_a_fix(
    world_dir: Path, tmp_path: Path
) -> None:
    server = RecordingServer(refuse_wells=True)
    catalog = open_catalog(tmp_path, server)
    row = plate_check(catalog, catalog.snapshot_people(), [])
    assert not row.ok and "could not resolve property" in row.detail
    assert "WellSample" in row.fix
    managed = world_dir / "managed"
    managed.mkdir()
    # the view's fileset reads ask for plates too: the catalog row fails with the cause
    rows = {r.name: r for r in server_checks(omero_repo(world_dir, managed), catalog)}
    assert "could not resolve property" in rows["catalog queries"].detail
    assert not rows["plates and screens"].ok and "not run" in rows["plates and screens"].detail
    assert all(r.fix for r in rows.values() if not r.ok)


def test_the_row_follows_the_catalog_rows(world_dir: Path, tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path, RecordingServer())
    managed = world_dir / "managed"
    managed.mkdir()
    rows = server_checks(omero_repo(world_dir, managed), catalog)
    names = [r.name for r in rows]
    assert names.index("plates and screens") == names.index("uid/gid coverage") + 1
    assert rows[names.index("plates and screens")].ok
