"""``omerofs status``: daemons from their locks, queue, in flight, waiting, recent imports
with fileset ids, failures (acknowledgeable; gone when their files are), as a table and
as stable JSON (issue 12, item 5, CLI side)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from datetime import datetime

import pytest

from omerofs.daemon_lock import DaemonLock
from omerofs.ingest.paths import FilesetKey
from omerofs.ingest.queue import JobQueue
from tests.conftest import run_cli

REPORT_KEYS = {
    "version",
    "open",  # added within version 1 (docs/cli.md)
    "repository",
    "daemons",
    "users",
    "in_flight",
    "waiting",
    "recent_imports",
    "failures",
    "acknowledged",
    "omero_outage",  # added within version 1 (docs/cli.md)
}
JOB_KEYS = {
    "job",
    "user",
    "path",
    "state",
    "transfer",
    "bytes_done",
    "bytes_total",
    "attempts",
    "fileset",
    "error",
    "next_try",
    "updated",
    "failure",  # added within version 1
    "duplicate_of",
}


def key(root: str) -> FilesetKey:
    return FilesetKey(root.split("/")[0], None, None, None, root, False)


@pytest.fixture
def jobs(populated):
    """A queue with one job in each state the report distinguishes; staged files exist
    for all but the failure whose file was deleted."""
    staging = populated.config.staging_dir
    queue = JobQueue(populated.config.catalog_path)
    ids = {}
    for name in ("failed", "gone", "importing", "imported", "retrying", "queued", "held"):
        root = f"alice/{name}.tif"
        if name != "gone":
            (staging / "alice").mkdir(parents=True, exist_ok=True)
            (staging / root).write_bytes(b"x" * 10)
        manifest = {root: (10, 1)}
        if name == "held":
            ids[name] = queue.hold(key(root), "cp", manifest, "2 of 3 planes present").id
        else:
            ids[name] = queue.enqueue(key(root), "cp", manifest).id
    queue.fail(ids["failed"], "unknown format")
    queue.fail(ids["gone"], "unknown format")
    queue.start(ids["importing"])
    queue.progress(ids["importing"], 4)
    queue.start(ids["imported"])
    queue.mark_imported(queue.job(ids["imported"]), 7)
    queue.retry_later(ids["retrying"], "disk full", time.time() + 60)
    queue.close()
    return populated, ids


def status(repo, *args: str, uid: int | None = None):
    return run_cli("-r", str(repo.config.root), "status", *args, uid=uid)


def test_report_tells_the_whole_story(jobs, world_dir) -> None:
    repo, ids = jobs
    mountpoint = world_dir / "ingest"
    with DaemonLock.acquire(repo.config, "ingest", mountpoint):
        report = json.loads(status(repo, "--json").stdout)
    assert set(report) == REPORT_KEYS and report["version"] == 1
    (daemon,) = report["daemons"]
    assert (daemon["role"], daemon["pid"], daemon["mountpoint"]) == (
        "ingest",
        os.getpid(),
        str(mountpoint),
    )
    assert [j["job"] for j in report["in_flight"]] == [ids["importing"]]
    assert report["in_flight"][0]["bytes_done"] == 4
    assert [j["fileset"] for j in report["recent_imports"]] == [7]
    waiting = {j["state"]: j for j in report["waiting"]}
    assert set(waiting) == {"queued", "retrying", "incomplete"}
    assert waiting["retrying"]["next_try"] and waiting["incomplete"]["error"].startswith("2 of 3")
    # the failure whose file was deleted is not shown; the other one is
    assert [j["job"] for j in report["failures"]] == [ids["failed"]]
    assert all(set(j) >= JOB_KEYS for part in ("in_flight", "waiting") for j in report[part])
    assert report["users"]["alice"]["failed"] == 2  # the history still counts it


def test_table_and_ack(jobs) -> None:
    repo, ids = jobs
    text = status(repo).stdout
    assert "no daemon is running" in text
    for title in ("IN FLIGHT", "WAITING", "RECENT IMPORTS", "FAILURES"):
        assert title in text
    assert f"job {ids['failed']}" in text and "-> fileset 7" in text
    assert "omerofs status --ack JOB" in text
    res = status(repo, "--ack", str(ids["failed"]))
    assert res.returncode == 0 and f"acknowledged job(s) {ids['failed']}" in res.stdout
    report = json.loads(status(repo, "--json").stdout)
    assert report["failures"] == [] and report["acknowledged"] == 1
    for job, words in [
        (ids["imported"], "is imported, not failed"),
        (999, "no such ingest job 999"),
    ]:
        res = status(repo, "--ack", str(job))
        assert res.returncode != 0 and words in res.stderr, res.stderr
    res = status(repo, "--ack", "0")
    assert res.returncode == 2 and res.stderr.startswith("omerofs: status: argument --ack")


def test_limit_is_at_least_one(jobs) -> None:
    repo, _ = jobs
    for bad in ("0", "-1", "x"):
        res = status(repo, "--limit", bad)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    report = json.loads(status(repo, "--json", "--limit", "1").stdout)
    assert len(report["failures"]) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
def test_status_for_a_user_who_cannot_see_staging(jobs) -> None:
    repo, ids = jobs
    os.chmod(repo.config.staging_dir, 0o700)
    res = status(repo, "--json", uid=3003)
    assert res.returncode == 0, res.stderr
    failures = json.loads(res.stdout)["failures"]
    # whether the files are still there is unknown to carol: both are shown, marked so
    assert {f["job"]: f["files_present"] for f in failures} == {
        ids["failed"]: None,
        ids["gone"]: None,
    }


def test_retries_and_holds_say_when_and_why(jobs) -> None:
    """The acquisition engineer's transient failures and holds (ingest/queue.py):
    "retrying at HH:MM:SS (n tries): reason", "incomplete: reason"."""
    repo, ids = jobs
    queue = JobQueue(repo.config.catalog_path)
    try:
        queue.requeue(ids["retrying"])  # its time came: tried, failing again for a passing reason
        queue.start(ids["retrying"])
        next_try = time.time() + 120
        queue.retry_later(ids["retrying"], "No space left on device", next_try)
    finally:
        queue.close()
    report = json.loads(status(repo, "--json").stdout)
    waiting = {j["state"]: j for j in report["waiting"]}
    assert waiting["retrying"]["failure"] == "transient"
    assert waiting["retrying"]["attempts"] == 1
    assert report["omero_outage"] is None  # embedded backend
    text = status(repo).stdout
    clock = datetime.fromtimestamp(next_try).strftime("%H:%M:%S")
    if datetime.fromtimestamp(next_try).date() != datetime.now().date():
        clock = datetime.fromtimestamp(next_try).strftime("%Y-%m-%d %H:%M:%S")
    assert f"retrying at {clock} (1 try): No space left on device" in text
    assert "alice/held.tif  incomplete: 2 of 3 planes present" in text
    assert "WARNING" not in text


def test_open_and_settling_filesets_from_the_daemon(populated) -> None:
    """Rows the ingest daemon publishes (ingest/live.py), written by its own class here;
    a killed daemon's leftover row is not shown."""
    from omerofs.ingest.live import LiveFilesets

    config = populated.config
    live = LiveFilesets(config.catalog_path)
    try:
        run = FilesetKey("alice", None, "P", "D", "alice/P/D/run1", True)
        one = FilesetKey("bob", None, None, None, "bob/x.tif", False)
        deadline = time.time() + 300
        live.publish(
            {run: ("open", None), one: ("settling", deadline)},
            {run, one},
            lambda key: {"a": (1000, 1), "b": (24, 1)} if key.is_dir else {"x": (10, 1)},
        )
        proc = subprocess.Popen(["true"])  # a pid that has ended: a killed daemon's row
        proc.wait()
        db = sqlite3.connect(config.catalog_path)
        with db:
            db.execute(
                "INSERT INTO ingest_live VALUES ('carol/old.tif', 'carol', 0, 'open', 1, NULL, "
                "1, 1, 1, ?)",
                (proc.pid,),
            )
        db.close()
        report = json.loads(status(populated, "--json").stdout)
        text = status(populated).stdout
    finally:
        live.close()
    assert report["open"] == [
        {
            "user": "alice",
            "path": "alice/P/D/run1/",
            "state": "open",
            "since": report["open"][0]["since"],
            "deadline": None,
            "files": 2,
            "bytes": 1024,
        },
        {
            "user": "bob",
            "path": "bob/x.tif",
            "state": "settling",
            "since": report["open"][1]["since"],
            "deadline": datetime.fromtimestamp(deadline).isoformat(timespec="seconds"),
            "files": 1,
            "bytes": 10,
        },
    ]
    assert "OPEN AND SETTLING" in text
    assert "alice  alice/P/D/run1/  open since " in text and "2 file(s), 1.0 KiB" in text
    assert "bob  bob/x.tif  settling until " in text
    assert "carol" not in text
