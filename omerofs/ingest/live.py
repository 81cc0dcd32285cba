"""Filesets only the ingest daemon knows about — ``open`` (a handle in them), ``settling``
(closed, waiting out their settle time) and ``waiting`` (commit-only) — published in a
small table of the repository's SQLite file, so ``omerofs status`` (another process) can
show them beside the queue.

``ingest_live``, one row per fileset root as the daemon tracks it (a file, or a run
directory): ``user``, ``state``, ``since`` (unix time this daemon first saw it in that
state), ``deadline`` (settling: unix time it closes if nothing changes; else NULL),
``files`` and ``bytes`` (what is staged so far), ``updated``, ``pid`` (the daemon's).
Rows of a daemon that is gone are stale: its next start removes them (so does a clean
stop); a reader should skip rows whose ``pid`` no longer runs (``os.kill(pid, 0)``;
EPERM means it runs). Measured and written off the trio loop, at most every
``PUBLISH_EVERY`` seconds per fileset, and less often for a fileset that is slow to
measure (a run directory of thousands of files), so publishing stays a small fraction
of the daemon's time. Its connection does not wait for fsync (``synchronous=NORMAL``):
the rows describe the present, and are rebuilt by the next start anyway.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omerofs.catalog.sqlite import Database
from omerofs.ingest.paths import FilesetKey
from omerofs.pids import alive

log = logging.getLogger(__name__)
PUBLISH_EVERY = 0.5  # seconds: the most often one fileset's row is written
MEASURE_SHARE = 0.02  # at most this share of the time goes to measuring one fileset
STATES = ("open", "settling", "waiting")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS ingest_live (
    root TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({",".join(f"'{s}'" for s in STATES)})),
    since REAL NOT NULL,
    deadline REAL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    updated REAL NOT NULL,
    pid INTEGER NOT NULL
)
"""

# what the daemon says about a fileset now: state, and for settling its wall deadline
LiveState = tuple[str, float | None]
Measure = Callable[[FilesetKey], dict[str, tuple[int, int]]]  # the service's manifest


@dataclass
class _Row:
    key: FilesetKey
    state: str
    since: float
    deadline: float | None
    files: int = 0
    bytes: int = 0
    measure_after: float = 0.0  # time.monotonic()


class LiveFilesets:
    """The daemon's side of ``ingest_live``. ``publish`` is called from one task at a
    time (in a worker thread); everything here is that task's."""

    def __init__(self, path: Path) -> None:
        self._store = Database(path, "the live ingest table in")
        self._store.conn.execute("PRAGMA synchronous=NORMAL")
        with self._store.transaction() as db:
            db.execute(SCHEMA)
        self._pid = os.getpid()
        self._rows: dict[str, _Row] = {}
        self._dirty: set[FilesetKey] = set()

    @property
    def pending(self) -> bool:
        """Changed filesets whose size was not due yet: publish again soon."""
        return bool(self._dirty)

    def start(self) -> None:
        """Remove the rows of daemons that are gone (killed: they could not)."""
        with self._store.transaction() as db:
            pids = [r[0] for r in db.execute("SELECT DISTINCT pid FROM ingest_live")]
            gone = [p for p in pids if p == self._pid or not alive(p)]
            db.executemany("DELETE FROM ingest_live WHERE pid=?", [(p,) for p in gone])

    def publish(
        self, states: dict[FilesetKey, LiveState], dirty: set[FilesetKey], measure: Measure
    ) -> None:
        """Bring the table to ``states``: new and changed states at once, sizes of open
        or changed filesets when due; rows of filesets no longer live go."""
        self._dirty |= dirty
        now, mono = time.time(), time.monotonic()
        roots = {key.root for key in states}
        gone = [root for root in self._rows if root not in roots]
        for root in gone:
            del self._rows[root]
        written: list[_Row] = []
        for key, (state, deadline) in states.items():
            row = self._rows.get(key.root)
            fresh = row is None or row.state != state or row.key != key
            if row is None or fresh:
                row = self._rows[key.root] = _Row(key, state, now, deadline)
            changed = fresh or row.deadline != deadline
            row.deadline = deadline
            wants_size = fresh or state == "open" or key in self._dirty
            if wants_size and mono >= row.measure_after:
                self._dirty.discard(key)
                changed = self._measure(row, measure) or changed
            if changed:
                written.append(row)
        self._dirty &= set(states)
        if not gone and not written:
            return
        with self._store.transaction() as db:
            db.executemany(
                "DELETE FROM ingest_live WHERE root=? AND pid=?", [(r, self._pid) for r in gone]
            )
            db.executemany(
                "INSERT OR REPLACE INTO ingest_live (root, user, is_dir, state, since, deadline, "
                "files, bytes, updated, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.key.root,
                        r.key.user,
                        int(r.key.is_dir),
                        r.state,
                        r.since,
                        r.deadline,
                        r.files,
                        r.bytes,
                        now,
                        self._pid,
                    )
                    for r in written
                ],
            )

    def _measure(self, row: _Row, measure: Measure) -> bool:
        started = time.monotonic()
        try:
            manifest = measure(row.key)
        except OSError as exc:  # gone meanwhile, or unreadable: keep what we had
            log.debug("could not measure %s: %s", row.key.root, exc)
            manifest = None
        took = time.monotonic() - started
        row.measure_after = started + max(PUBLISH_EVERY, took / MEASURE_SHARE)
        if manifest is None:
            return False
        files, size = len(manifest), sum(s for s, _ in manifest.values())
        changed = (files, size) != (row.files, row.bytes)
        row.files, row.bytes = files, size
        return changed

    def close(self) -> None:
        """A clean stop: this daemon's rows go (nothing is live without it)."""
        try:
            with self._store.transaction() as db:
                db.execute("DELETE FROM ingest_live WHERE pid=?", (self._pid,))
        except Exception as exc:  # the next start removes them
            log.warning("could not clear the live ingest table: %s", exc)
        finally:
            self._store.close()
