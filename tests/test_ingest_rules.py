"""Pure rules of the ingest mount: what a path means, and when a fileset is closed."""

import errno
import os
import sqlite3

import pytest

from omerofs.catalog.sqlite import Database
from omerofs.errors import (
    CatalogUnavailable,
    ChecksumMismatch,
    ImportFailed,
    UnknownFormat,
    UsageError,
)
from omerofs.formats import read_images
from omerofs.ingest.failures import is_transient
from omerofs.ingest.paths import (
    FilesetKey,
    commit_target,
    fileset_of,
    group_dir_name,
    is_ignored_name,
    tracking_key,
)
from omerofs.ingest.settings import IngestRules
from omerofs.ingest.tracker import CloseTracker


@pytest.mark.parametrize(
    "path,expected",
    [
        ("alice/img.tif", FilesetKey("alice", None, None, None, "alice/img.tif", False)),
        ("alice/D/img.tif", FilesetKey("alice", None, None, "D", "alice/D/img.tif", False)),
        ("alice/P/D/img.tif", FilesetKey("alice", None, "P", "D", "alice/P/D/img.tif", False)),
        ("alice/P/D/run/a.tif", FilesetKey("alice", None, "P", "D", "alice/P/D/run", True)),
        ("alice/P/D/run/x/y/z.txt", FilesetKey("alice", None, "P", "D", "alice/P/D/run", True)),
        ("alice/@lab/img.tif", FilesetKey("alice", "lab", None, None, "alice/@lab/img.tif", False)),
        ("alice/@lab/P/D/r/a", FilesetKey("alice", "lab", "P", "D", "alice/@lab/P/D/r", True)),
        ("alice", None),
        ("alice/@lab", None),
        ("alice/.hidden.tif", None),
        ("alice/P/D/run.part", None),
        ("alice/P/D/.run/a.tif", None),  # a hidden directory hides everything below it
        ("alice/P/D/~lock.tif", None),
        ("alice/P/D/img.tif.import-error.txt", None),
    ],
)
def test_fileset_of(path, expected) -> None:
    assert fileset_of(path) == expected


@pytest.mark.parametrize(
    "name,ignored",
    [
        (".x", True),
        ("a.tmp", True),
        ("a.part", True),
        ("~a", True),
        ("a~", True),
        ("a.swp", True),
        ("a.tif", False),
        ("a.tmp.tif", False),
        ("x.import-error.txt", True),
    ],
)
def test_ignored_names(name, ignored) -> None:
    assert is_ignored_name(name) == ignored


@pytest.mark.parametrize(
    "path,root",
    [
        ("alice/P/D/run/.a.tif.part", "alice/P/D/run"),  # holds the directory fileset open
        ("alice/P/D/run/sub/x.tmp", "alice/P/D/run"),
        ("alice/P/D/.a.tif.part", None),  # a file fileset in the making: nothing to hold
        ("alice/.x", None),
        ("alice/P/D/run/a.tif", "alice/P/D/run"),
    ],
)
def test_tracking_key(path, root) -> None:
    key = tracking_key(path)
    assert (key.root if key else None) == root


def test_group_dir_name() -> None:
    assert group_dir_name("alice/@lab") == "lab"
    assert group_dir_name("alice/lab") is None
    assert group_dir_name("alice/@lab/x") is None


KEY = FilesetKey("u", None, None, None, "u/f.tif", False)


def test_settles_after_last_release() -> None:
    t = CloseTracker(settle=5)
    t.opened(KEY)
    t.opened(KEY)
    t.released(KEY, now=0)
    assert t.next_deadline() is None and t.is_open(KEY)
    t.released(KEY, now=1)
    assert t.next_deadline() == 6
    assert t.pop_due(5.9) == [] and t.pop_due(6) == [KEY]
    assert t.next_deadline() is None and not t.pending(KEY)


def test_reopen_within_window_restarts_settling() -> None:
    t = CloseTracker(settle=5)
    t.opened(KEY)
    t.released(KEY, now=0)
    t.opened(KEY)  # appending writer comes back
    assert t.pop_due(10) == []
    t.released(KEY, now=10)
    t.changed(KEY, now=12)
    assert t.pop_due(16) == [] and t.pop_due(17) == [KEY]


def test_commit_is_immediate_but_not_while_open() -> None:
    t = CloseTracker(settle=3600)
    t.opened(KEY)
    assert not t.commit(KEY, now=0)
    t.released(KEY, now=0)
    assert t.commit(KEY, now=1)
    assert t.pop_due(1) == [KEY]


def test_changes_while_open_do_not_arm() -> None:
    t = CloseTracker(settle=1)
    t.opened(KEY)
    t.changed(KEY, now=0)
    assert t.pop_due(100) == []


def test_run_directories_have_their_own_settle_time() -> None:
    run = FilesetKey("u", None, "P", "D", "u/P/D/run", True)
    t = CloseTracker(settle=1, run_settle=60)
    t.released(KEY, now=0)
    t.released(run, now=0)
    assert t.pop_due(1) == [KEY]
    assert t.pop_due(59) == [] and t.pop_due(60) == [run]


@pytest.mark.parametrize(
    "name",
    [
        "Thumbs.db",
        "thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        "Desktop.ini",
        "$RECYCLE.BIN",
        "~$report.docx",
        "._img.tif",
        ".DS_Store",
        ".Trashes",
        ".Spotlight-V100",
        ".fseventsd",
        "Icon\r",
        "System Volume Information",
        "run2.done",
    ],
)
def test_clutter_and_markers_are_never_filesets(name) -> None:
    assert is_ignored_name(name)
    assert fileset_of(f"alice/P/D/{name}") is None


def test_commit_markers_name_what_they_commit() -> None:
    assert commit_target("alice/P/D/run2.done") == "alice/P/D/run2"
    assert commit_target("alice/P/D/img.tif.done") == "alice/P/D/img.tif"
    assert commit_target("alice/P/D/run2/.omerofs-commit") == "alice/P/D/run2"
    assert commit_target("alice/P/D/.omerofs-commit") == "alice/P/D"
    assert commit_target("alice/P/D/img.tif") is None
    assert commit_target(".done") is None


def test_ingest_rules_parse_and_backoff(tmp_path) -> None:
    where = tmp_path / "omerofs.toml"
    rules = IngestRules.parse(
        {"run_settle": 30, "commit_only_users": ["alice"], "duplicates": "skip", "settle": 5},
        where,
    )
    assert (rules.run_settle, rules.commit_only_users, rules.duplicates) == (30, ("alice",), "skip")
    assert IngestRules().duplicates == "link"
    assert [rules.backoff(n) for n in (1, 2, 3)] == [5, 10, 20]
    assert rules.with_overrides(retry_initial=1000, retry_max=None).backoff(30) == 900
    for bad, key in [
        ({"duplicates": "maybe"}, "duplicates"),
        ({"run_settle": -1}, "run_settle"),
        ({"commit_only": "yes"}, "commit_only"),
        ({"commit_only_users": "alice"}, "commit_only_users"),
        ({"retry_initial": 10, "retry_max": 1}, "retry_max"),
        ({"linger": "long"}, "[ingest]"),
    ]:
        with pytest.raises(UsageError, match=key):
            IngestRules.parse(bad, where)


def test_transient_failures_are_told_from_permanent_ones(tmp_path) -> None:
    """With the real error objects: a locked SQLite file, a catalog that cannot be
    opened, a full disk as the writers re-raise it, and the failures about the files."""
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("INSERT INTO t VALUES (1)")
    finally:
        other.close()
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in str(locked.value) and is_transient(locked.value)
    with pytest.raises(CatalogUnavailable) as unavailable:
        Database(tmp_path, "a catalog in")  # a directory: SQLite cannot open it
    assert is_transient(unavailable.value)
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise ImportFailed(f"x.tif: {exc.strerror}") from None
    except ImportFailed as full:
        assert is_transient(full)
    (tmp_path / "garbage.tif").write_bytes(b"not an image")
    with pytest.raises(UnknownFormat) as unknown:
        read_images(tmp_path / "garbage.tif")
    assert not is_transient(unknown.value)
    assert not is_transient(ChecksumMismatch("x.tif: placed copy hashes to ..."))
    assert not is_transient(ImportFailed("x.tif: damaged or incomplete file"))
