"""Plates and screens (issue #11) on the embedded backend: the real OME-Zarr plate from
shared/data (copied first) imported as a Plate, into a Screen or none, shown in the view
under Screens/ or Plates/, followed live, migrated into older catalogs; and OMERO's
download policy applied to the originals the view lists."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from omerofs.backends.local import catalog as local
from omerofs.backends.local.catalog import LocalCatalog
from omerofs.catalog.protocol import PlateInfo, WellSample
from omerofs.errors import UsageError
from omerofs.formats import is_plate
from omerofs.fs.inodes import DENIED_MODE, FILE_MODE
from omerofs.fs.mount import fileset_loader
from omerofs.fs.view import RepositoryView, fetch_all
from omerofs.imports.importer import Target
from tests.conftest import SHARED_DATA, make_tiff, run_cli

PLATE = SHARED_DATA / "ome-zarr/plate-rows-2.zarr"
# What the plate's own metadata says (its root .zattrs, NGFF 0.4 "plate"): name "Plate
# Name 0"; rows [A, B] and columns [1]; wells A/1 (rowIndex 0, columnIndex 0) and B/1
# (rowIndex 1, columnIndex 0), each with one image "0" (field_count 1): 2 Images.
EXPECTED = PlateInfo("Plate Name 0", 2, 1, 1, (WellSample(0, 0, 0, 0), WellSample(1, 1, 0, 0)))


def copy_plate(where: Path) -> Path:
    """shared/data is read-only: a writable copy (an rm mode or the view may need one)."""
    dest = where / PLATE.name
    shutil.copytree(PLATE, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _view(repo) -> RepositoryView:
    return RepositoryView(repo.catalog.snapshot_people(), 1, fileset_loader(repo.catalog))


def file_modes(view: RepositoryView, user: str) -> dict[str, int]:
    """Every file path in the user's tree (below their home) -> its mode."""
    home = view.table.child(view.table.root, user)
    view.materialize(home)
    cut = len(f"/{user}/")
    return {n.path()[cut:]: n.mode for n in view.table.traverse(home) if n.source is not None}


def test_the_plate_as_its_metadata_describes_it(world_dir: Path) -> None:
    plate = copy_plate(world_dir)
    assert is_plate(plate) == EXPECTED
    assert is_plate(plate / ".zattrs") == EXPECTED  # the main file names the same plate
    assert is_plate(SHARED_DATA / "ome-zarr/fake-series-2.zarr") is None  # images
    assert is_plate(make_tiff(world_dir / "a.tif")) is None


def test_screen_targets() -> None:
    assert Target.parse("Screen:name:HCS") == Target(screen="HCS")
    assert Target.parse("Screen:+name:HCS").describe() == "screen 'HCS'"
    for bad in ("Screen:name:S/Dataset:name:D", "Project:name:P/Screen:name:S"):
        with pytest.raises(UsageError, match="exclusive"):
            Target.parse(bad)


def test_import_into_a_screen_and_the_view(populated, world_dir: Path) -> None:
    plate = copy_plate(world_dir / "src")
    res = run_cli(
        "-r", str(populated.config.root), "import", str(plate), "--user", "alice",
        "--group", "ro", "-T", "Screen:name:HCS", "--transfer", "cp",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    catalog = populated.catalog
    fs = catalog.fileset_by_prefix(catalog.fileset(1).template_prefix)
    assert fs.image_count == 2 and fs.plate_id is not None  # 2 fields: 2 Images
    record, info, screens = catalog.plate_of(fs.id)
    assert (record.name, info, screens) == ("Plate Name 0", EXPECTED, ["HCS"])
    images = catalog.images_of(fs.id)
    # each field's level-0 array is [1, 1, 1, 512, 512] uint8 (tczyx) with scale 1.0
    # micrometer on z, y, x (A/1/0/.zattrs, A/1/0/0/.zarray)
    assert [(i.size_x, i.size_y, i.pixel_type) for i in images] == [(512, 512, "uint8")] * 2
    assert [(i.physical_x, i.physical_y, i.physical_z) for i in images] == [(1.0, 1.0, 1.0)] * 2
    snap = catalog.snapshot_people()
    (screen_id,) = snap.screens
    assert snap.screen_plate == [(screen_id, fs.plate_id)]
    view = _view(populated)
    carol = file_modes(view, "carol")  # a member of the read-only group
    main = "Groups/ro/Screens/HCS/Plate Name 0/plate-rows-2.zarr/.zattrs"
    assert main in carol
    assert f"ManagedRepository/{fs.template_prefix}plate-rows-2.zarr/A/1/0/0/.zarray" in carol
    assert not any("/Orphans/" in p or "/Plates/" in p for p in carol)
    # OMERO's default policy (+read,+write,+image): a plate's originals are listed, not
    # readable, for everybody, the owner too
    assert set(carol.values()) == {DENIED_MODE}
    assert set(file_modes(view, "alice").values()) == {DENIED_MODE}
    # a second plate into the same screen: the screen is reused
    again = populated.import_file(
        copy_plate(world_dir / "src2"), "alice", "ro", "cp", "Screen:name:HCS"
    )
    assert catalog.plate_of(again.id)[2] == ["HCS"]
    assert len(catalog.snapshot_people().screens) == 1


def test_plates_in_no_screen_and_in_a_dataset(populated, world_dir: Path) -> None:
    alone = populated.import_file(copy_plate(world_dir / "a"), "alice", "rw", "cp")
    # a Dataset target for a plate: OMERO's TargetProcessor links every Image the import
    # made to the Dataset, and the Plate stays in no Screen
    linked = populated.import_file(
        copy_plate(world_dir / "b"), "alice", "rw", "cp", "Dataset:name:D"
    )
    assert linked.dataset_ids and linked.plate_id is not None
    files = file_modes(_view(populated), "bob")
    assert "Groups/rw/Plates/Plate Name 0/plate-rows-2.zarr/.zattrs" in files
    assert "Groups/rw/Plates/Plate Name 0~2/plate-rows-2.zarr/.zattrs" in files  # 2nd plate
    assert "Groups/rw/Datasets/D/plate-rows-2.zarr/.zattrs" in files
    assert alone.plate_id != linked.plate_id


def test_a_screen_target_takes_plates_only(populated, world_dir: Path) -> None:
    src = make_tiff(world_dir / "cells.tif")
    before = sorted(p.name for p in populated.config.managed_dir.rglob("*"))
    with pytest.raises(UsageError, match="plates only"):
        populated.import_file(src, "alice", "rw", "cp_rm", "Screen:name:HCS")
    assert src.exists()  # kept: nothing was imported
    assert sorted(p.name for p in populated.config.managed_dir.rglob("*")) == before
    assert not populated.catalog.snapshot_people().screens


def test_a_running_view_follows_new_plates(populated, world_dir: Path) -> None:
    view = _view(populated)
    assert not [p for p in file_modes(view, "bob") if "Screens" in p]
    populated.import_file(copy_plate(world_dir / "late"), "alice", "ro", "cp", "Screen:name:S")
    changes = populated.catalog.changes(view.event_id)
    assert {(e.entity, e.action) for e in changes.events} == {
        ("Screen", "INSERT"),
        ("Plate", "INSERT"),
        ("Fileset", "INSERT"),
    }
    assert view.rebuild_targets(changes) == {}  # additive: nobody's tree is rebuilt
    inval = view.apply(changes, {})
    assert inval.inodes
    assert "Groups/ro/Screens/S/Plate Name 0/plate-rows-2.zarr/.zattrs" in file_modes(view, "bob")


def test_the_download_policy_from_omerofs_toml(populated, world_dir: Path) -> None:
    plate = populated.import_file(copy_plate(world_dir / "p"), "alice", "ro", "cp")
    tiff = populated.import_file(make_tiff(world_dir / "t.tif"), "alice", "ro", "cp")
    notes = world_dir / "n" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("plain text")
    path = populated.config.catalog_path

    def modes(user: str, **policy) -> dict[str, int]:
        catalog = LocalCatalog(path, **policy)
        try:
            snap = catalog.snapshot_people()
            view = RepositoryView(snap, 1, fileset_loader(catalog))
            return {
                p.rsplit("/", 1)[-1]: m
                for p, m in file_modes(view, user).items()
                if p.startswith("ManagedRepository/")
            }
        finally:
            catalog.close()

    tif = tiff.entries[0].name
    default = modes("carol")
    assert default[tif] == FILE_MODE and default[".zattrs"] == DENIED_MODE
    assert modes("carol", binary_access="+read,+write,+image,+plate")[".zattrs"] == FILE_MODE
    by_group = modes(
        "carol", binary_access_groups={"ro": frozenset({"+plate"})}
    )  # OMERO's group config
    assert by_group[".zattrs"] == FILE_MODE
    # -read: only who may edit (owner, group owner, admin) read; carol is a member only
    assert modes("carol", binary_access="-read,+write,+image")[tif] == DENIED_MODE
    assert modes("alice", binary_access="-read,+write,+image")[tif] == FILE_MODE
    assert modes("adam", binary_access="-read,+write,+image")[tif] == FILE_MODE
    # -write: nobody, the owner neither
    assert modes("alice", binary_access="+read,-write,+image")[tif] == DENIED_MODE
    assert plate.plate_id is not None


def test_config_keys_are_checked(populated) -> None:
    toml = populated.config.root / "omerofs.toml"
    text = toml.read_text()
    toml.write_text(
        text.replace('binary_access = "+read,+write,+image"', 'binary_access = "+pixels"')
    )
    res = run_cli("-r", str(populated.config.root), "info", "1")
    assert res.returncode != 0 and "binary_access" in res.stderr and "+pixels" in res.stderr
    toml.write_text(text.replace('binary_access_groups = ""', 'binary_access_groups = "ro +plate"'))
    res = run_cli("-r", str(populated.config.root), "info", "1")
    assert res.returncode != 0 and "binary_access_groups" in res.stderr


def test_an_older_catalog_gets_plates(world_dir: Path) -> None:
    """A catalog written before plates existed: opened read-only it shows none; the first
    writable open adds the tables and columns, keeping what it holds."""
    path = world_dir / "old.db"
    db = sqlite3.connect(path)
    db.executescript(local._SCHEMA + "INSERT INTO meta VALUES ('schema', '1');")  # schema 1
    db.execute("INSERT INTO groups VALUES (0, 'system', 'private', 0)")
    db.commit()
    db.close()
    old = LocalCatalog(path, readonly=True)
    assert old.snapshot_people().plates == {} and old.plate_of(1) is None
    old.close()
    new = LocalCatalog(path)
    try:
        assert new.snapshot_people().screens == {}
        with sqlite3.connect(path) as db:
            assert _has(db, "filesets", "plate_id") and _has(db, "images", "physical_x")
            assert {"screens", "plates", "screen_plate"} <= {
                r[0] for r in db.execute("SELECT name FROM sqlite_master")
            }
    finally:
        new.close()


def _has(db: sqlite3.Connection, table: str, column: str) -> bool:
    return column in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def test_fetch_all_is_what_the_loader_gives(populated, world_dir: Path) -> None:
    populated.import_file(copy_plate(world_dir / "x"), "alice", "rw", "cp", "Screen:name:S")
    view = _view(populated)
    viewer = view.viewer_of(populated.catalog.experimenter_by_name("bob").id, view.snapshot)
    (fs,) = fetch_all(view.loader, viewer, view.snapshot)
    assert fs.plate_id in view.snapshot.plates
