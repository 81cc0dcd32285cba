"""The persistent ingest job queue, in the repository's SQLite file beside the catalog.

States: ``queued`` -> ``importing`` -> ``imported`` | ``failed``. A job becomes
``imported`` in the SAME transaction that records its fileset in the catalog (see
``commit_statements``), so after any crash a job is either imported exactly once or not
at all; ``importing`` after a restart means "not committed, roll back and retry" — unless
the job was ``handed_off`` to a remote catalog (an OMERO server), which may finish it
without us: then it is recorded if the catalog has it, and reported otherwise.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omerofs.catalog.sqlite import Database
from omerofs.errors import CatalogUnavailable, NotFound
from omerofs.ingest.paths import FilesetKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    root TEXT NOT NULL,
    user TEXT NOT NULL,
    grp TEXT,
    project TEXT,
    dataset TEXT,
    is_dir INTEGER NOT NULL,
    transfer TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued','importing','imported','failed','superseded')),
    manifest TEXT NOT NULL,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    prefix TEXT,
    fileset_id INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    handed_off INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ingest_jobs_root ON ingest_jobs(root, id);
CREATE INDEX IF NOT EXISTS ingest_jobs_state ON ingest_jobs(state);
CREATE TABLE IF NOT EXISTS ingest_files (
    path TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES ingest_jobs(id),
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0
);
"""

Manifest = dict[str, tuple[int, int]]  # staging-relative path -> (size, mtime_ns)


@dataclass(frozen=True)
class Job:
    id: int
    key: FilesetKey
    transfer: str
    state: str
    manifest: Manifest
    bytes_total: int
    bytes_done: int
    prefix: str | None
    fileset_id: int | None
    error: str | None
    attempts: int
    created: float
    updated: float
    handed_off: bool = False  # a remote catalog took the import over (may finish alone)


class JobQueue:
    def __init__(self, path: Path) -> None:
        self._store = Database(path, "the ingest queue in")
        self._db, self._lock, self._tx = self._store.conn, self._store.lock, self._store.transaction
        try:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(ingest_jobs)")}
            if "handed_off" not in columns:  # a queue written by an older omerofs
                self._db.execute(
                    "ALTER TABLE ingest_jobs ADD COLUMN handed_off INTEGER NOT NULL DEFAULT 0"
                )
        except sqlite3.Error as exc:
            self._store.close()
            raise CatalogUnavailable(f"cannot open the ingest queue in {path}: {exc}") from None

    def close(self) -> None:
        self._store.close()

    def _rows(self, where: str, params: tuple = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM ingest_jobs {where}", params).fetchall()
        return [_job(r) for r in rows]

    # -- transitions ---------------------------------------------------------------

    def enqueue(self, key: FilesetKey, transfer: str, manifest: Manifest) -> Job:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='superseded', updated=? "
                "WHERE root=? AND state IN ('queued','failed')",
                (now, key.root),
            )
            cur = db.execute(
                "INSERT INTO ingest_jobs (root, user, grp, project, dataset, is_dir, transfer, "
                "state, manifest, bytes_total, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (
                    key.root,
                    key.user,
                    key.group,
                    key.project,
                    key.dataset,
                    int(key.is_dir),
                    transfer,
                    json.dumps(manifest),
                    sum(s for s, _ in manifest.values()),
                    now,
                    now,
                ),
            )
            job_id = int(cur.lastrowid)
        return self.job(job_id)

    def start(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='importing', attempts=attempts+1, "
                "bytes_done=0, error=NULL, updated=? WHERE id=? AND state='queued'",
                (time.time(), job_id),
            )

    def set_prefix(self, job_id: int, prefix: str) -> None:
        """Remember the reserved directory BEFORE anything is placed in it (crash cleanup)."""
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET prefix=?, updated=? WHERE id=?",
                (prefix, time.time(), job_id),
            )

    def hand_off(self, job_id: int) -> None:
        """The catalog's server now imports on its own: after a crash from here on, the
        import may finish without us, so it must never be rolled back or run again."""
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET handed_off=1, updated=? WHERE id=?", (time.time(), job_id)
            )

    def progress(self, job_id: int, done: int) -> None:
        with self._lock:
            self._db.execute("UPDATE ingest_jobs SET bytes_done=? WHERE id=?", (done, job_id))

    def fail(self, job_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='failed', error=?, prefix=NULL, updated=? WHERE id=?",
                (error, time.time(), job_id),
            )

    def requeue(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='queued', prefix=NULL, handed_off=0, updated=? "
                "WHERE id=?",
                (time.time(), job_id),
            )

    def mark_imported(self, job: Job, fileset_id: int) -> None:
        """Record an import the catalog finished but this queue never heard of (a crash
        between a remote catalog's commit and ours)."""
        with self._tx() as db:
            self.commit_statements(job)(db, fileset_id)

    def supersede(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='superseded', updated=? WHERE id=?",
                (time.time(), job_id),
            )

    @staticmethod
    def commit_statements(job: Job) -> Callable[[sqlite3.Connection, int], None]:
        """SQL run inside the catalog's import transaction: marks the job imported and
        records its staged files, atomically with the fileset itself."""

        def run(db: sqlite3.Connection, fileset_id: int) -> None:
            db.execute(
                "UPDATE ingest_jobs SET state='imported', fileset_id=?, error=NULL, "
                "bytes_done=bytes_total, updated=? WHERE id=?",
                (fileset_id, time.time(), job.id),
            )
            db.executemany(
                "INSERT OR REPLACE INTO ingest_files (path, job_id, size, mtime_ns, removed) "
                "VALUES (?, ?, ?, ?, 0)",
                [(p, job.id, s, m) for p, (s, m) in job.manifest.items()],
            )

        return run

    def mark_removed(self, paths: list[str]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE ingest_files SET removed=1 WHERE path=?", [(p,) for p in paths])

    # -- queries -------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        found = self._rows("WHERE id=?", (job_id,))
        if not found:
            raise NotFound(f"no such ingest job {job_id}")
        return found[0]

    def latest_for(self, root: str) -> Job | None:
        found = self._rows(
            "WHERE root=? AND state != 'superseded' ORDER BY id DESC LIMIT 1", (root,)
        )
        return found[0] if found else None

    def in_state(self, *states: str) -> list[Job]:
        marks = ",".join("?" * len(states))
        return self._rows(f"WHERE state IN ({marks}) ORDER BY id", states)

    def imported_files(self) -> dict[str, tuple[int, int, int]]:
        """Staged files that were imported and are still in place: path -> (job, size, mtime)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, job_id, size, mtime_ns FROM ingest_files WHERE removed=0"
            ).fetchall()
        return {p: (j, s, m) for p, j, s, m in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """user -> state -> number of filesets (latest job per fileset root)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT user, state, count(*) FROM ingest_jobs WHERE state != 'superseded' "
                "GROUP BY user, state"
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for user, state, n in rows:
            result.setdefault(user, {})[state] = n
        return result


def _job(row: tuple) -> Job:
    id_, root, user, grp, project, dataset, is_dir, transfer, state, manifest, *rest = row
    key = FilesetKey(user, grp, project, dataset, root, bool(is_dir))
    files = {p: (s, m) for p, (s, m) in json.loads(manifest).items()}
    *rest, handed_off = rest  # rest: totals .. updated, in order
    return Job(id_, key, transfer, state, files, *rest, bool(handed_off))
