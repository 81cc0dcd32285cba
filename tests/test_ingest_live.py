"""``ingest_live``: what only the ingest daemon knows (open and settling filesets) is in a
table another process can read, as ``omerofs status`` does. A real mount, a real writer
holding its file open as its user, the table read over a read-only connection."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from omerofs.catalog.sqlite import Database
from omerofs.ingest.live import LiveFilesets
from tests import test_ingest_mount as mount_tests
from tests.conftest import MountedView, as_user, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import set_ingest, wait_state

ingest = mount_tests.ingest  # the fixture
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for line in sys.stdin:                 # one chunk per line read, then fsync
    os.write(fd, b"x" * int(line))
    os.fsync(fd)
    print("written", flush=True)
os.close(fd)
"""


def live_rows(config) -> dict[str, dict]:
    db = Database(config.catalog_path, "repository state", readonly=True)
    try:
        db.conn.row_factory = sqlite3.Row
        tables = {r["name"] for r in db.conn.execute("SELECT name FROM sqlite_master")}
        if "ingest_live" not in tables:
            return {}
        return {r["root"]: dict(r) for r in db.conn.execute("SELECT * FROM ingest_live")}
    finally:
        db.close()


class Writer:
    """A process of alice's holding a file in the mount open, writing when told."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            as_user(3001, [sys.executable, "-c", WRITER, str(path)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def write(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "written"

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


@needs_fuse
@needs_root
def test_open_and_settling_filesets_are_in_the_live_table(populated, ingest) -> None:
    mp = ingest("cp", settle=3600)  # nothing closes by time: the states can be read
    os.makedirs(mp / "alice" / "P" / "D", exist_ok=True)
    os.chown(mp / "alice" / "P", 3001, 3001)
    os.chown(mp / "alice" / "P" / "D", 3001, 3001)
    root = "alice/P/D/cells.tif"
    writer = Writer(mp / root)
    try:
        writer.write(1000)
        row = wait_for(
            lambda: (r := live_rows(populated.config).get(root)) and r["bytes"] == 1000 and r,
            timeout=30,
            what="an open row with the first 1000 bytes",
        )
        assert (row["user"], row["state"], row["files"], row["is_dir"]) == ("alice", "open", 1, 0)
        assert row["deadline"] is None and row["since"] <= row["updated"]
        writer.write(4000)  # the kernel writes (passthrough): the daemon re-measures
        wait_for(
            lambda: live_rows(populated.config)[root]["bytes"] == 5000,
            timeout=30,
            what="the row to grow to 5000 bytes",
        )
    finally:
        writer.close()
    row = wait_for(
        lambda: (r := live_rows(populated.config).get(root)) and r["state"] == "settling" and r,
        timeout=30,
        what="the row to say settling",
    )
    assert row["deadline"] > row["since"] and row["bytes"] == 5000
    os.setxattr(mp / root, "user.omerofs.commit", b"1")  # closes it now
    wait_for(lambda: root not in live_rows(populated.config), timeout=30, what="the row to go")
    wait_state(mp / root, "failed")  # 5000 times "x" is no image; the queue says so now


@needs_fuse
@needs_root
def test_a_stopped_daemon_leaves_no_rows_and_a_killed_ones_go_at_the_next_start(
    populated, world_dir: Path
) -> None:
    config = populated.config
    live = LiveFilesets(config.catalog_path)  # rows of a daemon killed with -9 (a dead pid)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with live._store.transaction() as db:
        db.execute(
            "INSERT INTO ingest_live (root, user, is_dir, state, since, files, bytes, updated, "
            "pid) VALUES ('alice/old.tif', 'alice', 0, 'open', 1, 1, 10, 1, ?)",
            (dead.pid,),
        )
    live._store.close()
    assert "alice/old.tif" in live_rows(config)
    set_ingest(populated, run_settle=3600, linger=0)
    mp = world_dir / "ingest"
    mp.mkdir()
    mounted = MountedView(config.root, mp, ("ingest", "--transfer", "cp", "--settle", "3600"))
    try:
        wait_for(lambda: "alice/old.tif" not in live_rows(config), timeout=30, what="cleanup")
        target = mp / "alice" / "new.tif"
        subprocess.run(as_user(3001, ["/bin/sh", "-c", f"echo data > {target}"]), check=True)
        wait_for(
            lambda: live_rows(config).get("alice/new.tif", {}).get("state") == "settling",
            timeout=30,
            what="the new file's row, settling",
        )
    finally:
        mounted.close()
    assert live_rows(config) == {}  # a clean stop takes its rows along
