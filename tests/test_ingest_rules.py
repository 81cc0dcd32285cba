"""Pure rules of the ingest mount: what a path means, and when a fileset is closed."""

import pytest

from omerofs.ingest.paths import (
    FilesetKey,
    fileset_of,
    group_dir_name,
    is_ignored_name,
    tracking_key,
)
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
