"""One bad catalog row never takes a mount down (issue 12, item 1).

The rows are written with sqlite3 directly, as an older omerofs, an admin with the
sqlite3 shell or odd data from a server would leave them; then the real mounts are used
by other uids through setpriv. Before the checks of catalog/rows.py, the first access
ended both daemons (pyfuse3: "OverflowError: uid is less than minimum")."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, run_cli, wait_for

UIDS = {"alice": 3001, "bob": 3002, "carol": 3003}


def write_rows(catalog_path, *statements: tuple[str, tuple]) -> None:
    """Write as a hand edit does: a plain connection, no foreign keys, no CHECKs, and an
    event so that running views read the catalog again."""
    db = sqlite3.connect(catalog_path, isolation_level=None)
    try:
        db.execute("PRAGMA ignore_check_constraints=ON")
        for sql, params in statements:
            db.execute(sql, params)
        db.execute(
            "INSERT INTO events (entity, entity_id, action, time) "
            "VALUES ('Experimenter', 999, 'UPDATE', ?)",
            (time.time(),),
        )
    finally:
        db.close()


BAD_PEOPLE = (
    ("INSERT INTO groups (id, name, level, gid) VALUES (50, 'lab5', 'read-only', -5)", ()),
    ("INSERT INTO groups (id, name, level, gid) VALUES (51, 'odd', 'bogus', 75051)", ()),
    ("INSERT INTO groups (id, name, level, gid) VALUES (52, 'texty', 'private', 'abc')", ()),
    ("INSERT INTO experimenters (id, name, uid, admin) VALUES (50, 'x', 99999999999, 0)", ()),
    ("INSERT INTO experimenters (id, name, uid, admin) VALUES (51, 'y', -1, 0)", ()),
    ("INSERT INTO experimenters (id, name, uid, admin) VALUES (52, 'z', 'abc', 0)", ()),
    ("INSERT INTO memberships VALUES (50, 2, 0)", ()),  # alice in the bad-gid group
    ("INSERT INTO memberships VALUES (999, 3, 0)", ()),  # bob in a group that is not there
    ("INSERT INTO memberships VALUES (50, 50, 1)", ()),
    ("INSERT INTO experimenters (id, name, uid, admin) VALUES (53, '../evil', 4053, 0)", ()),
)


def bad_filesets(alice_id: int, group_id: int) -> tuple[tuple[str, tuple], ...]:
    """A fileset of alice's in a bad group, one escaping ManagedRepository by ``..``,
    one with an impossible size: none may be served, and nothing else may suffer."""
    insert = (
        "INSERT INTO filesets (id, owner_id, group_id, template_prefix, transfer, created) "
        "VALUES (?, ?, ?, ?, 'cp', 1.0)"
    )
    entry = "INSERT INTO fileset_entries VALUES (?, 0, 'c', ?, ?, ?, 'h', 'SHA1-160', 'm')"
    return (
        (insert, (900, alice_id, 50, "alice_2/bad-group/")),
        (entry, (900, "alice_2/bad-group/", "in-bad-group.tif", 10)),
        (insert, (901, alice_id, group_id, "alice_2/escape/")),
        (entry, (901, "alice_2/escape/../../../../../etc/", "passwd", 10)),
        (insert, (902, alice_id, group_id, "alice_2/huge/")),
        (entry, (902, "alice_2/huge/", "huge.tif", 1e30)),
    )


def run_as(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(UIDS[user], list(cmd)), capture_output=True, text=True)


def files_of(mountpoint, user: str) -> set[str]:
    res = run_as(user, "find", f"{mountpoint}/{user}", "-type", "f")
    assert res.returncode == 0, res.stderr
    return {line.rsplit("/", 1)[1] for line in res.stdout.split()}


def alive(*mounts) -> None:
    for mounted in mounts:
        assert mounted.proc.poll() is None, mounted.log.read_text()
        os.statvfs(mounted.mountpoint)  # statfs always reaches the daemon


# The issue's case: what `group add lab5 --gid -5` and `user add x --uid 99999999999`
# wrote, while the daemons run; then every kind of bad row, some there at start-up.
ISSUE_ROWS = (BAD_PEOPLE[0], BAD_PEOPLE[3], BAD_PEOPLE[6], BAD_PEOPLE[8])


@needs_fuse
@needs_root
@pytest.mark.parametrize("every_kind", [False, True], ids=["issue-case", "every-kind"])
def test_bad_rows_are_skipped_and_everyone_else_is_served(
    populated, mount_view, world_dir, every_kind
) -> None:
    catalog = populated.config.catalog_path
    alice = populated.catalog.experimenter_by_name("alice").id
    ro = populated.catalog.group_by_name("ro").id
    populated.import_file(make_tiff(world_dir / "src" / "before.tif"), "alice", "ro")
    at_start = (*BAD_PEOPLE[1:3], *bad_filesets(alice, ro)[2:4]) if every_kind else ()
    if at_start:
        write_rows(catalog, *at_start)
    view = mount_view(populated)
    ingest = mount_view(populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.5"))
    assert files_of(view.mountpoint, "alice") == {"before.tif"}
    assert files_of(view.mountpoint, "bob") == {"before.tif"}  # bob is in ro too
    # bad rows arriving while they run
    later = ISSUE_ROWS
    if every_kind:
        later += (*BAD_PEOPLE[4:6], BAD_PEOPLE[7], BAD_PEOPLE[9], *bad_filesets(alice, ro)[:2])
        later += bad_filesets(alice, ro)[4:]
    write_rows(catalog, *later)
    populated.import_file(make_tiff(world_dir / "src" / "after.tif", seed=1), "alice", "ro")
    wait_for(
        lambda: files_of(view.mountpoint, "bob") == {"before.tif", "after.tif"},
        timeout=30,
        what="the import after the bad rows to appear",
    )
    assert files_of(view.mountpoint, "alice") == {"before.tif", "after.tif"}
    assert not os.path.exists(f"{view.mountpoint}/x")  # the bad users get no home
    names = set(os.listdir(view.mountpoint))
    assert {"alice", "bob", "carol"} <= names and not names & {"x", "y", "z"}
    groups = run_as("alice", "ls", f"{view.mountpoint}/alice/Groups")
    assert groups.returncode == 0 and "lab5" not in groups.stdout.split()
    # the ingest daemon keeps serving, to a user who writes as well
    res = run_as("alice", "sh", "-c", f"echo hi > {ingest.mountpoint}/alice/note.txt")
    assert res.returncode == 0, res.stderr
    assert run_as("bob", "ls", f"{ingest.mountpoint}/bob").returncode == 0
    assert not (populated.config.staging_dir / "x").exists()
    assert not (populated.config.staging_dir.parent / "evil").exists()
    alive(view, ingest)
    # each bad row is said once, however often the view polled meanwhile
    log = view.log.read_text()
    for what in ("user 'x'", "group 'lab5'") + (("fileset 901", "fileset 902") * every_kind):
        assert log.count(f"skipping {what}") == 1, (what, log)


def test_catalog_reads_skip_bad_rows(populated) -> None:
    """The embedded catalog itself: a snapshot leaves bad rows out (and says why)."""
    write_rows(populated.config.catalog_path, *BAD_PEOPLE)
    snap = populated.catalog.snapshot_people()
    assert {e.name for e in snap.experimenters.values()} >= {"alice", "bob"}
    assert not {e.name for e in snap.experimenters.values()} & {"x", "y", "z"}
    assert not {g.name for g in snap.groups.values()} & {"lab5", "odd", "texty"}
    assert all(m.group_id in snap.groups for m in snap.memberships)
    assert len(populated.catalog.bad_rows.seen) == 7


@pytest.mark.parametrize(
    "args,message",
    [
        (["group", "add", "lab5", "--perms", "private", "--gid", "-5"], "gid -5 is outside"),
        (["group", "add", "lab6", "--perms", "private", "--gid", "4294967295"], "outside"),
        (["group", "add", "lab7", "--perms", "private", "--gid", "71001"], "gid 71001 is alr"),
        (["user", "add", "x", "--uid", "99999999999"], "uid 99999999999 is outside"),
        (["user", "add", "x", "--uid", "-1"], "uid -1 is outside"),
        (["user", "add", "x", "--uid", "3001"], "uid 3001 is already mapped to user 'alice'"),
    ],
)
def test_cli_refuses_ids_that_cannot_be_served(populated, args, message) -> None:
    before = populated.catalog.snapshot()
    res = run_cli("-r", str(populated.config.root), *args)
    assert res.returncode == 2 if "outside" in message else res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omerofs: ") and message in lines[0], lines
    assert populated.catalog.snapshot() == before


def test_attributes_pyfuse3_cannot_encode_are_eio_not_a_crash(tmp_path) -> None:
    """The last guard, for a value that got past every check: EIO for that node only."""
    import errno

    import pyfuse3

    from omerofs.catalog.protocol import Snapshot
    from omerofs.fs.operations import ViewOperations
    from omerofs.fs.view import RepositoryView

    view = RepositoryView(Snapshot(event_id=0), 1, lambda viewer, snap: iter(()))
    ops = ViewOperations(view, str(tmp_path), 1.0)
    node = view.table.add(view.table.root, "odd", 2**40, 0, 0o40555, 0)
    with pytest.raises(pyfuse3.FUSEError) as info:
        ops.attributes(node)
    assert info.value.errno == errno.EIO
    assert ops.attributes(view.table.root).st_ino == view.table.root.inode
