"""Undo on the embedded catalog: user/group modify and remove, remove-member, with
OMERO's rules (issue 12, item 2): nothing imported is ever deleted, a user keeps a
default group, ids stay servable; running views follow every change."""

from __future__ import annotations

import os
import sqlite3

import pytest

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.errors import AccessDenied, AlreadyExists, NotFound, UsageError
from omerofs.identity import PermissionLevel
from tests.conftest import make_tiff, needs_fuse, needs_root, run_cli, wait_for


def cli(repo, *args: str):
    return run_cli("-r", str(repo.config.root), *args)


def one_line_error(res, words: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1, res.stderr
    assert lines[0].startswith("omerofs: ") and words in lines[0], lines[0]


@pytest.fixture
def owned(populated, world_dir):
    """alice owns a fileset in ro, inside a project and a dataset."""
    src = make_tiff(world_dir / "src" / "a.tif")
    fs = populated.import_file(src, "alice", "ro", target="Project:name:P/Dataset:name:D")
    return populated, fs


def test_user_remove_refuses_while_they_own_data_and_lists_it(owned) -> None:
    repo, fs = owned
    before = repo.catalog.snapshot()
    res = cli(repo, "user", "remove", "alice")
    one_line_error(res, f"'alice' owns fileset {fs.id}; 1 project; 1 dataset")
    assert "--move-to USER" in res.stderr
    assert repo.catalog.snapshot() == before


def test_user_remove_move_to_gives_the_data_to_a_member(owned) -> None:
    repo, fs = owned
    one_line_error(cli(repo, "user", "remove", "alice", "--move-to", "olga"), "not a member of ro")
    res = cli(repo, "user", "remove", "alice", "--move-to", "bob")
    assert res.returncode == 0, res.stderr
    snap = repo.catalog.snapshot()
    assert "alice" not in {e.name for e in snap.experimenters.values()}
    bob = repo.catalog.experimenter_by_name("bob").id
    assert snap.filesets[fs.id].owner_id == bob
    assert {c.owner_id for c in (*snap.projects.values(), *snap.datasets.values())} == {bob}
    assert all(m.experimenter_id in snap.experimenters for m in snap.memberships)
    # the files stay where they are
    assert (repo.config.managed_dir / fs.entries[0].repo_path).is_file()


def test_user_without_data_is_removed(populated) -> None:
    assert cli(populated, "user", "remove", "carol").returncode == 0
    with pytest.raises(NotFound):
        populated.catalog.experimenter_by_name("carol")
    one_line_error(cli(populated, "user", "remove", "root"), "root cannot be removed")


def test_user_modify(populated) -> None:
    res = cli(populated, "user", "modify", "bob", "--uid", "3102", "--email", "bob@example.org")
    assert res.returncode == 0, res.stderr
    bob = populated.catalog.experimenter_by_name("bob")
    assert (bob.uid, bob.email) == (3102, "bob@example.org")
    for args, words in [
        (["--uid", "3001"], "uid 3001 is already mapped to user 'alice'"),
        (["--uid", "4294967295"], "uid 4294967295 is outside"),
        (["--email", "not an address"], "invalid email address"),
        (["--default-group", "rw"], ""),  # bob is a member of rw: fine (checked below)
        ([], "nothing to change"),
    ]:
        res = cli(populated, "user", "modify", "bob", *args)
        if words:
            one_line_error(res, words)
    assert populated.catalog.experimenter_by_name("bob").default_group_id == (
        populated.catalog.group_by_name("rw").id
    )
    one_line_error(
        cli(populated, "user", "modify", "carol", "--default-group", "rw"), "not a member of 'rw'"
    )
    assert cli(populated, "user", "modify", "bob", "--email", "").returncode == 0
    assert populated.catalog.experimenter_by_name("bob").email is None


def test_group_remove_rules(owned) -> None:
    repo, fs = owned
    one_line_error(cli(repo, "group", "remove", "ro"), f"holds fileset {fs.id}; 1 project")
    one_line_error(cli(repo, "group", "remove", "ro", "--move-to", "rw"), "has members")
    # carol (in ro only) would be left without any group
    one_line_error(
        cli(repo, "group", "remove", "ro", "--move-to", "rw", "--force"), "only group of 'carol'"
    )
    assert cli(repo, "group", "add-member", "rw", "carol").returncode == 0
    res = cli(repo, "group", "remove", "ro", "--move-to", "rw", "--force")
    assert res.returncode == 0, res.stderr
    snap = repo.catalog.snapshot()
    rw = repo.catalog.group_by_name("rw").id
    assert "ro" not in {g.name for g in snap.groups.values()}
    assert snap.filesets[fs.id].group_id == rw
    carol = repo.catalog.experimenter_by_name("carol")
    assert carol.default_group_id == rw  # the next group became the default
    one_line_error(cli(repo, "group", "remove", "system"), "system group cannot be removed")


def test_group_modify(populated) -> None:
    assert cli(populated, "group", "modify", "ro", "--perms", "read-write").returncode == 0
    assert populated.catalog.group_by_name("ro").level is PermissionLevel.READ_WRITE
    assert cli(populated, "group", "modify", "ro", "--gid", "71999").returncode == 0
    assert populated.catalog.group_by_name("ro").gid == 71999
    one_line_error(
        cli(populated, "group", "modify", "ro", "--gid", "71001"),
        "gid 71001 is already mapped to group 'priv'",
    )
    one_line_error(cli(populated, "group", "modify", "ro", "--gid", "-5"), "gid -5 is outside")
    one_line_error(cli(populated, "group", "modify", "ro"), "nothing to change")


def test_remove_member_keeps_a_default_group(populated) -> None:
    assert cli(populated, "group", "remove-member", "priv", "alice").returncode == 0
    alice = populated.catalog.experimenter_by_name("alice")
    assert alice.default_group_id == populated.catalog.group_by_name("ro").id
    assert not populated.catalog.is_member("alice", "priv")
    one_line_error(cli(populated, "group", "remove-member", "priv", "alice"), "not a member")
    one_line_error(cli(populated, "group", "remove-member", "ro", "carol"), "only group")


def test_catalog_refuses_bad_ids_directly(populated) -> None:
    c = populated.catalog
    for call, error in [
        (lambda: c.add_group("g", PermissionLevel.PRIVATE, -5), UsageError),
        (lambda: c.add_group("g", PermissionLevel.PRIVATE, 2**32 - 1), UsageError),
        (lambda: c.add_experimenter("x", 99999999999), UsageError),
        (lambda: c.add_experimenter("x", True), UsageError),  # a bool is not a uid
        (lambda: c.modify_experimenter("bob", uid=3001), AlreadyExists),
        (lambda: c.modify_group("ro", gid=71001), AlreadyExists),
        (lambda: c.modify_experimenter("root", admin=False), AccessDenied),
    ]:
        with pytest.raises(error):
            call()


def test_email_column_is_added_to_an_older_catalog(world_dir) -> None:
    """A catalog written before `email` existed: opened writable, the column is added."""
    path = world_dir / "old.sqlite"
    LocalCatalog(path, create=True).close()
    db = sqlite3.connect(path)
    db.executescript(
        "ALTER TABLE experimenters DROP COLUMN email;"
        "INSERT INTO experimenters (id, name, uid, admin) VALUES (2, 'old', 4001, 0);"
    )
    db.close()
    readonly = LocalCatalog(path, readonly=True)  # cannot migrate: reads without it
    assert readonly.experimenter_by_name("old").email is None
    readonly.close()
    catalog = LocalCatalog(path)
    try:
        catalog.modify_experimenter("old", email="old@example.org")
        assert catalog.experimenter_by_name("old").email == "old@example.org"
    finally:
        catalog.close()


def test_omero_repository_says_where_to_do_it(world_dir) -> None:
    creds = world_dir / "creds.toml"
    creds.write_text('username = "u"\npassword = "p"\n')
    os.chmod(creds, 0o600)
    root = world_dir / "om"
    res = run_cli(
        "-r",
        str(root),
        "init",
        "--omero-host",
        "127.0.0.1",
        "--omero-port",
        "1",  # nothing listens: refused at once
        "--omero-credentials",
        str(creds),
        "--omero-managed-dir",
        str(world_dir),
    )
    assert res.returncode == 0, res.stderr
    for args, words in [
        (["user", "remove", "alice"], "user remove: OMERO.web: Admin > Users"),
        (["group", "remove-member", "lab", "bob"], "omero user leavegroup"),
        (["group", "modify", "lab", "--perms", "private"], "omero group perms"),
    ]:
        one_line_error(run_cli("-r", str(root), *args), words)
    # reading a fileset asks the server (here: refused), never "manage users in OMERO"
    res = run_cli("-r", str(root), "info", "1")
    one_line_error(res, "OMERO server 127.0.0.1:1")
    assert "manage" not in res.stderr
    res = run_cli("-r", str(root), "init", "--omero-host", "h")
    one_line_error(res, "also needs --omero-credentials, --omero-managed-dir")


@needs_fuse
@needs_root
def test_running_view_follows_undo(owned, mount_view) -> None:
    repo, fs = owned
    view = mount_view(repo)
    mp = view.mountpoint
    bob_copy = f"{mp}/bob/ManagedRepository/{fs.entries[0].repo_path}"
    assert os.stat(bob_copy).st_uid == 3001
    assert cli(repo, "user", "modify", "alice", "--uid", "3101").returncode == 0
    wait_for(lambda: os.stat(f"{mp}/alice").st_uid == 3101, what="alice's home to be 3101")
    wait_for(lambda: os.stat(bob_copy).st_uid == 3101, what="alice's file to be 3101 for bob")
    assert cli(repo, "group", "remove-member", "ro", "bob").returncode == 0
    wait_for(lambda: not os.path.exists(bob_copy), what="bob to stop seeing ro's fileset")
    assert cli(repo, "user", "remove", "carol").returncode == 0
    wait_for(lambda: not os.path.exists(f"{mp}/carol"), what="carol's home to go")
    assert view.proc.poll() is None
