"""The embedded SQLite catalog: people, groups, targets, events, atomic imports."""

import sqlite3

import pytest

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.catalog.protocol import ImageInfo, ImportRecord, PlacedFile
from omerofs.errors import AlreadyExists, NotFound, UsageError
from omerofs.identity import PermissionLevel


def _record(owner: int, group: int, prefix: str, project=None, dataset=None) -> ImportRecord:
    return ImportRecord(
        owner_id=owner,
        group_id=group,
        template_prefix=prefix,
        transfer="cp",
        created=1.0,
        files=(PlacedFile("src/a.tif", prefix, "a.tif", 10, "0" * 40, "image/tiff"),),
        images=(ImageInfo(0, "a.tif", 4, 4, 1, 1, 1, "uint8"),),
        project_name=project,
        dataset_name=dataset,
    )


def test_root_and_system_group_exist(repo) -> None:
    root = repo.catalog.experimenter_by_name("root")
    assert (root.id, root.uid, root.admin) == (0, 0, True)
    assert repo.catalog.group_by_name("system").id == 0


def test_first_user_gets_omero_like_id(populated) -> None:
    assert populated.catalog.experimenter_by_name("alice").id == 2


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda c: c.add_group("ro", PermissionLevel.PRIVATE, 1), AlreadyExists),
        (lambda c: c.add_group("new", PermissionLevel.PRIVATE, 71001), AlreadyExists),
        (lambda c: c.add_group("a/b", PermissionLevel.PRIVATE, 5), UsageError),
        (lambda c: c.add_experimenter("alice", 9), AlreadyExists),
        (lambda c: c.add_experimenter("zed", 3001), AlreadyExists),
        (lambda c: c.add_experimenter("zed", 9, default_group="nope"), NotFound),
        (lambda c: c.add_experimenter("zed", -1), UsageError),
        (lambda c: c.add_member("ro", "alice"), AlreadyExists),
        (lambda c: c.add_member("nope", "alice"), NotFound),
        (lambda c: c.add_member("ro", "nobody"), NotFound),
    ],
)
def test_bad_changes_change_nothing(populated, call, error) -> None:
    before = populated.catalog.snapshot()
    with pytest.raises(error):
        call(populated.catalog)
    after = populated.catalog.snapshot()
    assert (after.event_id, after.experimenters, after.groups, after.memberships) == (
        before.event_id,
        before.experimenters,
        before.groups,
        before.memberships,
    )


def test_member_promoted_to_owner(populated) -> None:
    c = populated.catalog
    c.add_member("ro", "alice", owner=True)
    alice = c.experimenter_by_name("alice")
    assert any(
        m.owner for m in c.memberships_of(alice.id) if m.group_id == c.group_by_name("ro").id
    )


def test_targets_are_found_or_created_once(populated) -> None:
    c = populated.catalog
    alice = c.experimenter_by_name("alice").id
    ro = c.group_by_name("ro").id
    a = c.record_import(_record(alice, ro, "p1/", "P", "D"))
    b = c.record_import(_record(alice, ro, "p2/", "P", "D"))
    d = c.record_import(_record(alice, ro, "p3/", None, "D"))  # like -T: any D of hers
    e = c.record_import(_record(alice, ro, "p4/", "Q", "D"))  # D inside Q: a new one
    snap = c.snapshot()
    assert a.dataset_ids == b.dataset_ids == d.dataset_ids != e.dataset_ids
    assert len(snap.projects) == 2 and len(snap.datasets) == 2
    assert sorted(snap.project_dataset) == [(1, a.dataset_ids[0]), (2, e.dataset_ids[0])]


def test_import_into_foreign_group_is_refused_and_rolled_back(populated) -> None:
    c = populated.catalog
    carol = c.experimenter_by_name("carol").id
    before = c.snapshot()
    with pytest.raises(UsageError):
        c.record_import(_record(carol, c.group_by_name("rw").id, "x/", "P", "D"))
    after = c.snapshot()
    assert (after.event_id, after.projects, after.filesets) == (before.event_id, {}, {})


def test_duplicate_paths_roll_back_everything(populated) -> None:
    c = populated.catalog
    alice = c.experimenter_by_name("alice").id
    ro = c.group_by_name("ro").id
    c.record_import(_record(alice, ro, "same/"))
    with pytest.raises(sqlite3.IntegrityError):
        c.record_import(_record(alice, ro, "same/", "P", "D"))
    assert len(c.snapshot().filesets) == 1 and not c.snapshot().projects


def test_changes_report_new_filesets_only(populated) -> None:
    c = populated.catalog
    alice = c.experimenter_by_name("alice").id
    ro = c.group_by_name("ro").id
    first = c.record_import(_record(alice, ro, "a/"))
    mark = c.snapshot().event_id
    assert c.changes(mark) is None
    second = c.record_import(_record(alice, ro, "b/", None, "D"))
    changes = c.changes(mark)
    assert [(e.entity, e.action) for e in changes.events] == [
        ("Dataset", "INSERT"),
        ("Fileset", "INSERT"),
    ]
    assert (
        set(changes.snapshot.filesets) == {second.id} and first.id not in changes.snapshot.filesets
    )


def test_reopen_and_wal(populated) -> None:
    path = populated.config.catalog_path
    again = LocalCatalog(path)
    try:
        assert again.experimenter_by_name("bob").uid == 3002
        mode = again._query("PRAGMA journal_mode")[0][0]
        assert mode == "wal"
    finally:
        again.close()


def test_missing_catalog(world_dir) -> None:
    with pytest.raises(NotFound):
        LocalCatalog(world_dir / "nope.sqlite")
