"""One contract for every backend: the catalog and importer protocol the view, the CLI
and the ingest mount rely on. Runs on the embedded backend always, and on a live OMERO
server when ``OMEROFS_TEST_OMERO`` names one (skipped with the reason otherwise)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from omerofs.errors import AccessDenied, ImportFailed
from omerofs.identity import can_see, fully_visible_groups, make_viewer
from tests.backends import OMERO_MANAGED, World, open_world
from tests.conftest import make_tiff


@pytest.fixture(params=["local", "omero"])
def world(request, world_dir: Path) -> Iterator[World]:
    w = open_world(request.param, world_dir)
    try:
        yield w
    finally:
        w.close()


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def repository_files(world: World) -> set[str]:
    managed = world.config.managed_dir
    alice = world.names["alice"]
    return {
        os.path.relpath(os.path.join(d, f), managed)
        for d, _, files in os.walk(managed)
        if alice in d
        for f in files
    }


def viewer_of(world: World, name: str):
    exp = world.user(name)
    pairs = [(m.group_id, m.owner) for m in world.catalog.memberships_of(exp.id)]
    return make_viewer(exp.id, exp.admin, pairs)


def test_people_groups_and_levels(world: World) -> None:
    snap = world.catalog.snapshot_people()
    alice, adam, olga = world.user("alice"), world.user("adam"), world.user("olga")
    assert (alice.uid, adam.uid) == (3001, 3005)
    assert adam.admin and not alice.admin
    assert world.catalog.experimenter_by_uid(3002).name == world.names["bob"]
    assert world.catalog.experimenter_by_uid(999_999) is None
    levels = {n: world.group(n).level.perms for n in ("priv", "ro", "ra", "rw")}
    assert levels == {"priv": "rw----", "ro": "rwr---", "ra": "rwra--", "rw": "rwrw--"}
    assert world.group("ra").gid == 71003
    assert world.group("priv").id in {m.group_id for m in world.catalog.memberships_of(olga.id)}
    assert any(m.owner for m in world.catalog.memberships_of(olga.id))
    assert world.catalog.is_member(world.names["bob"], world.names["rw"])
    assert not world.catalog.is_member(world.names["carol"], world.names["rw"])
    assert alice.id in snap.experimenters and world.group("rw").id in snap.groups
    assert world.catalog.group_by_id(world.group("ro").id).name == world.names["ro"]


@pytest.mark.parametrize("mode", ["upload", "cp", "ln"])
def test_import_into_a_new_project_and_dataset(world: World, mode: str) -> None:
    if mode == "ln" and not world.can_link:
        pytest.skip("in-place import needs OMEROFS_TEST_OMERO_MANAGED")
    src = make_tiff(world.source_dir / f"cells-{mode}.tif", seed=3)
    before = world.catalog.last_event_id()
    fs = world.import_path(src, "alice", "rw", mode, "Project:name:P1/Dataset:name:D1")
    assert fs.owner_id == world.user("alice").id and fs.group_id == world.group("rw").id
    assert fs.image_count >= 1 and fs.transfer == mode
    (entry,) = fs.entries
    assert (entry.hash, entry.size) == (sha1(src), src.stat().st_size)
    assert entry.client_path.endswith(src.name)
    if world.kind == "local" or OMERO_MANAGED:
        placed = world.config.managed_dir / entry.repo_path
        assert placed.read_bytes() == src.read_bytes()
        if mode == "ln":
            assert placed.stat().st_ino == src.stat().st_ino
    assert world.catalog.fileset_by_prefix(fs.template_prefix).id == fs.id
    snap = world.catalog.snapshot_people()
    (dataset_id,) = fs.dataset_ids
    assert snap.datasets[dataset_id].name == "D1"
    (project_id,) = [p for p, d in snap.project_dataset if d == dataset_id]
    assert snap.projects[project_id].name == "P1"
    changes = world.catalog.changes(before)
    assert changes is not None and fs.id in changes.snapshot.filesets
    assert ("Fileset", fs.id, "INSERT") in {
        (e.entity, e.entity_id, e.action) for e in changes.events
    }
    assert world.catalog.changes(changes.snapshot.event_id) is None
    mine = world.catalog.filesets_for(fs.owner_id, set(), changes.snapshot.max_fileset_id)
    assert fs.id in {f.id for f in mine}

    again = world.import_path(
        make_tiff(world.source_dir / f"more-{mode}.tif", seed=4),
        "alice",
        "rw",
        mode,
        "Project:name:P1/Dataset:name:D1",
    )
    assert again.dataset_ids == fs.dataset_ids  # the newest matching target is reused


def test_visibility_follows_group_levels(world: World) -> None:
    mine = {}
    for group in ("priv", "ro", "ra", "rw"):
        src = make_tiff(world.source_dir / f"{group}.tif", seed=hash(group) % 100)
        mine[world.import_path(src, "alice", group, "upload").id] = world.group(group)
    max_id = world.catalog.snapshot_people().max_fileset_id
    for name in ("alice", "bob", "carol", "olga", "adam"):
        viewer = viewer_of(world, name)
        levels = {g.id: g.level for g in world.catalog.snapshot_people().groups.values()}
        groups = fully_visible_groups(viewer, levels)
        fetched = world.catalog.filesets_for(
            viewer.experimenter_id, None if viewer.admin else groups, max_id
        )
        alice_id = world.user("alice").id
        expected = {i for i, g in mine.items() if can_see(viewer, alice_id, g.id, g.level)}
        visible = {
            f.id
            for f in fetched
            if f.id in mine and can_see(viewer, f.owner_id, f.group_id, levels[f.group_id])
        }
        assert visible == expected, name
    bob = {f.id for f in world.catalog.filesets_for(world.user("bob").id, set(), max_id)}
    assert not bob & set(mine)  # own data only, when no group is fully visible


def test_a_failed_import_leaves_nothing_behind(world: World) -> None:
    bad = world.source_dir / "broken.tif"
    bad.write_bytes(b"II*\x00" + os.urandom(4096))
    before, events = repository_files(world), world.catalog.last_event_id()
    modes = ["upload_rm", "cp_rm"] + (["ln_rm"] if world.can_link else [])
    for mode in modes:
        with pytest.raises(ImportFailed):
            world.import_path(bad, "alice", "rw", mode)
        assert bad.exists()  # an rm mode removes nothing when the import failed
    assert repository_files(world) == before
    changes = world.catalog.changes(events)
    assert changes is None or not changes.snapshot.filesets


def test_rm_mode_removes_the_source_only_after_the_import(world: World) -> None:
    mode = "ln_rm" if world.can_link else "upload_rm"
    src = make_tiff(world.source_dir / "move-me.tif", seed=9)
    data = src.read_bytes()
    fs = world.import_path(src, "alice", "ro", mode)
    assert not src.exists()
    if world.kind == "local" or OMERO_MANAGED:
        assert (world.config.managed_dir / fs.entries[0].repo_path).read_bytes() == data


def test_import_as_another_user(world: World) -> None:
    imp = world.importer
    with pytest.raises(AccessDenied):
        imp.resolve_identity(world.names["alice"], world.names["rw"], caller_uid=3002)
    owner, group = imp.resolve_identity(world.names["alice"], world.names["priv"], 3004)
    assert owner.name == world.names["alice"] and group.name == world.names["priv"]
    owner, _ = imp.resolve_identity(world.names["bob"], world.names["ro"], 3005)  # an admin
    assert owner.name == world.names["bob"]
    with pytest.raises(AccessDenied):
        imp.resolve_identity(world.names["carol"], world.names["rw"])  # not a member


def test_filesets_in_pages(world: World) -> None:
    """``filesets_for(after, limit)`` pages through exactly what one call returns."""
    made = [
        world.import_path(
            make_tiff(world.source_dir / f"page{i}.tif", seed=20 + i), "alice", "rw", "upload"
        ).id
        for i in range(5)
    ]
    alice, rw = world.user("alice"), world.group("rw")
    max_id = world.catalog.snapshot_people().max_fileset_id
    everything = [f.id for f in world.catalog.filesets_for(alice.id, {rw.id}, max_id)]
    paged, after = [], 0
    while page := world.catalog.filesets_for(alice.id, {rw.id}, max_id, after=after, limit=2):
        assert len(page) <= 2
        paged += [f.id for f in page]
        after = page[-1].id
    assert paged == everything and set(made) <= set(paged)


def test_a_plate_imports_as_a_plate(world: World) -> None:
    """The OME-Zarr plate of shared/data (copied): one fileset whose 2 Images are the
    fields of wells A/1 and B/1 (its .zattrs: rows A, B; column 1; field_count 1), a Plate
    named "Plate Name 0"; without a target in no Screen, with ``-T Screen:name:S`` in it."""
    from omerofs.errors import UsageError
    from tests.test_plates import copy_plate

    before = world.catalog.last_event_id()
    made = [world.import_path(copy_plate(world.source_dir / "a"), "alice", "rw", "upload")]
    made.append(
        world.import_path(
            copy_plate(world.source_dir / "b"), "alice", "rw", "upload", "Screen:name:HCS"
        )
    )
    tiff = make_tiff(world.source_dir / "no-plate.tif", seed=5)
    with pytest.raises(UsageError, match="a Screen target takes plates only"):
        world.import_path(tiff, "alice", "rw", "upload", "Screen:name:HCS")
    snap = world.catalog.snapshot_people()
    for fs in made:
        assert fs.image_count == 2 and not fs.dataset_ids
        assert fs.plate_id in snap.plates and snap.plates[fs.plate_id].name == "Plate Name 0"
        assert snap.plates[fs.plate_id].owner_id == world.user("alice").id
    assert made[0].plate_id not in {p for _, p in snap.screen_plate}
    (screen_id,) = [s for s, c in snap.screens.items() if c.name == "HCS"]
    assert (screen_id, made[1].plate_id) in snap.screen_plate
    changes = world.catalog.changes(before)
    for fs in made:
        assert changes.snapshot.filesets[fs.id].plate_id == fs.plate_id
    max_id = changes.snapshot.max_fileset_id
    fetched = world.catalog.filesets_for(world.user("alice").id, set(), max_id)
    plates = {f.id: f.plate_id for f in fetched}
    assert all(plates[fs.id] == fs.plate_id for fs in made)
    if world.kind == "local":  # OMERO's default policy; a server says its own
        assert world.catalog.binary_access(world.group("rw").id).denies("plate")
