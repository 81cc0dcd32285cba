"""The persistent ingest job queue, in the repository's SQLite file beside the catalog.

States: ``queued`` -> ``importing`` -> ``imported`` | ``failed`` | ``retrying``. A job becomes
``imported`` in the SAME transaction that records its fileset in the catalog (see
``commit_statements``), so after any crash a job is either imported exactly once or not
at all; ``importing`` after a restart means "not committed, roll back and retry" — unless
the job was ``handed_off`` to a remote catalog (an OMERO server), which may finish it
without us: then it is recorded if the catalog has it, and reported otherwise.

Besides: ``waiting`` (closed in a commit-only area, waiting for a commit), ``incomplete``
(closed, but held back: a failed write, a truncated file, parts
its main file names are missing; ``error`` says why), ``retrying`` (failed for a passing
reason; ``next_try`` is when, ``failure`` = 'transient'), ``failed`` (``failure`` =
'permanent'), ``gone`` (it failed or was held, then its files were removed: no longer a
problem to show), ``duplicate`` (the same content at the same path was imported before:
``duplicate_of`` is that job, ``fileset_id`` its fileset under the "link" policy) and
``superseded`` (the fileset changed; a newer job stands for it). An ``imported`` job
may carry a ``warning``: the backend saved the images but reported an error after that
(OMERO's thumbnails or pixel statistics); it is imported, not failed, and not retried.
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
    state TEXT NOT NULL CHECK (state IN ({states})),
    manifest TEXT NOT NULL,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    prefix TEXT,
    fileset_id INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    handed_off INTEGER NOT NULL DEFAULT 0,
    failure TEXT,
    next_try REAL,
    duplicate_of INTEGER,
    warning TEXT
);
CREATE INDEX IF NOT EXISTS ingest_jobs_root ON ingest_jobs(root, id);
CREATE INDEX IF NOT EXISTS ingest_jobs_state ON ingest_jobs(state);
CREATE TABLE IF NOT EXISTS ingest_files (
    path TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES ingest_jobs(id),
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    sha1 TEXT
);
"""
STATES = (
    "queued",
    "importing",
    "imported",
    "failed",
    "superseded",
    "incomplete",
    "retrying",
    "gone",
    "duplicate",
    "waiting",
)
# a newer job for the same fileset replaces these
OPEN_STATES = ("queued", "failed", "incomplete", "retrying", "waiting")
_SCHEMA = _SCHEMA.replace("{states}", ",".join(f"'{s}'" for s in STATES))
_COLUMNS = (
    "id, root, user, grp, project, dataset, is_dir, transfer, state, manifest, bytes_total, "
    "bytes_done, prefix, fileset_id, error, attempts, created, updated, handed_off, failure, "
    "next_try, duplicate_of, warning"
)

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
    failure: str | None = None  # 'transient' (retried) or 'permanent'
    next_try: float | None = None  # unix time of the next automatic try (retrying)
    duplicate_of: int | None = None  # the earlier job with the same content (duplicate)
    # imported, but the backend reported an error after the images were saved (OMERO's
    # thumbnails or statistics): the fileset is there, and the user should hear why
    warning: str | None = None


class JobQueue:
    def __init__(self, path: Path) -> None:
        self._store = Database(path, "the ingest queue in")
        self._db, self._lock, self._tx = self._store.conn, self._store.lock, self._store.transaction
        try:
            self._db.executescript(_SCHEMA)
            self._upgrade()
        except sqlite3.Error as exc:
            self._store.close()
            raise CatalogUnavailable(f"cannot open the ingest queue in {path}: {exc}") from None

    def _upgrade(self) -> None:
        """A queue written by an older omerofs: new columns, and a state list SQLite can
        only change by copying the table (its documented procedure: foreign keys off,
        copy, drop, rename, in one transaction; checked again inside it)."""
        (sql,) = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='ingest_jobs'"
        ).fetchone()
        if "'waiting'" not in sql:
            with self._lock:
                self._db.execute("PRAGMA foreign_keys=OFF")
                try:
                    with self._tx() as db:
                        self._copy_jobs_table(db)
                finally:
                    self._db.execute("PRAGMA foreign_keys=ON")
        jobs = [row[1] for row in self._db.execute("PRAGMA table_info(ingest_jobs)")]
        if "warning" not in jobs:
            with self._tx() as db:
                db.execute("ALTER TABLE ingest_jobs ADD COLUMN warning TEXT")
        files = [row[1] for row in self._db.execute("PRAGMA table_info(ingest_files)")]
        if "sha1" not in files:
            with self._tx() as db:
                db.execute("ALTER TABLE ingest_files ADD COLUMN sha1 TEXT")

    @staticmethod
    def _copy_jobs_table(db: sqlite3.Connection) -> None:
        (sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='ingest_jobs'"
        ).fetchone()
        if "'waiting'" in sql:
            return  # another process upgraded it meanwhile
        columns = [row[1] for row in db.execute("PRAGMA table_info(ingest_jobs)")]
        jobs_sql = _SCHEMA.split("CREATE TABLE IF NOT EXISTS ingest_files")[0]
        table, *indexes = filter(str.strip, jobs_sql.split(";"))
        db.execute(table.replace("IF NOT EXISTS ingest_jobs", "ingest_jobs_new"))
        kept = ", ".join(c for c in columns if c in _COLUMNS.split(", "))
        db.execute(f"INSERT INTO ingest_jobs_new ({kept}) SELECT {kept} FROM ingest_jobs")
        db.execute("DROP TABLE ingest_jobs")
        db.execute("ALTER TABLE ingest_jobs_new RENAME TO ingest_jobs")
        for statement in indexes:
            db.execute(statement)

    def close(self) -> None:
        self._store.close()

    def _rows(self, where: str, params: tuple = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM ingest_jobs {where}", params
            ).fetchall()
        return [_job(r) for r in rows]

    # -- transitions ---------------------------------------------------------------

    def enqueue(self, key: FilesetKey, transfer: str, manifest: Manifest) -> Job:
        return self._insert(key, transfer, manifest, "queued")

    def wait_for_commit(self, key: FilesetKey, transfer: str, manifest: Manifest) -> Job:
        """Closed in a commit-only area: shown (``omerofs status``) until committed."""
        return self._insert(key, transfer, manifest, "waiting", error="waiting for a commit")

    def hold(self, key: FilesetKey, transfer: str, manifest: Manifest, reason: str) -> Job:
        """Closed but not imported, not deleted: ``reason`` says what is wrong or missing."""
        return self._insert(key, transfer, manifest, "incomplete", error=reason)

    def record_duplicate(
        self,
        key: FilesetKey,
        transfer: str,
        manifest: Manifest,
        earlier: Job,
        linked: bool,
    ) -> Job:
        """The same content was imported from the same path before (``earlier``)."""
        return self._insert(
            key,
            transfer,
            manifest,
            "duplicate",
            duplicate_of=earlier.id,
            fileset_id=earlier.fileset_id if linked else None,
        )

    def _insert(
        self,
        key: FilesetKey,
        transfer: str,
        manifest: Manifest,
        state: str,
        error: str | None = None,
        duplicate_of: int | None = None,
        fileset_id: int | None = None,
    ) -> Job:
        now = time.time()
        marks = ",".join("?" * len(OPEN_STATES))
        # a group of files (not a directory) replaces what its members were alone
        roots = [key.root] if key.is_dir else sorted({key.root, *manifest})
        with self._tx() as db:
            for root in roots:
                db.execute(
                    "UPDATE ingest_jobs SET state='superseded', updated=? "
                    f"WHERE root=? AND state IN ({marks})",
                    (now, root, *OPEN_STATES),
                )
            cur = db.execute(
                "INSERT INTO ingest_jobs (root, user, grp, project, dataset, is_dir, transfer, "
                "state, manifest, bytes_total, created, updated, error, duplicate_of, "
                "fileset_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.root,
                    key.user,
                    key.group,
                    key.project,
                    key.dataset,
                    int(key.is_dir),
                    transfer,
                    state,
                    json.dumps(manifest),
                    sum(s for s, _ in manifest.values()),
                    now,
                    now,
                    error,
                    duplicate_of,
                    fileset_id,
                ),
            )
            job_id = int(cur.lastrowid)
        return self.job(job_id)

    def start(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='importing', attempts=attempts+1, "
                "bytes_done=0, error=NULL, warning=NULL, updated=? WHERE id=? AND state='queued'",
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

    def set_warning(self, job_id: int, warning: str) -> None:
        """An imported job's fileset came with a warning (``FilesetWithWarning``). Written
        right after the import's own commit, whose hook cannot carry it; a crash between
        the two loses only this message, never the import."""
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET warning=?, updated=? WHERE id=? AND state='imported'",
                (warning, time.time(), job_id),
            )

    def fail(self, job_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='failed', failure='permanent', error=?, "
                "prefix=NULL, next_try=NULL, updated=? WHERE id=?",
                (error, time.time(), job_id),
            )

    def retry_later(self, job_id: int, error: str, next_try: float) -> None:
        """Failed for a passing reason (server down, disk full, catalog locked)."""
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='retrying', failure='transient', error=?, "
                "prefix=NULL, handed_off=0, next_try=?, updated=? WHERE id=?",
                (error, next_try, time.time(), job_id),
            )

    def requeue(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE ingest_jobs SET state='queued', prefix=NULL, handed_off=0, next_try=NULL, "
                "updated=? WHERE id=?",
                (time.time(), job_id),
            )

    def mark_gone(self, root: str) -> list[int]:
        """The fileset's files were removed: its failure or hold is no longer a problem."""
        marks = ",".join("?" * len(OPEN_STATES))
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    f"SELECT id FROM ingest_jobs WHERE root=? AND state IN ({marks})",
                    (root, *OPEN_STATES),
                )
            ]
            db.execute(
                f"UPDATE ingest_jobs SET state='gone', next_try=NULL, updated=? "
                f"WHERE root=? AND state IN ({marks})",
                (time.time(), root, *OPEN_STATES),
            )
        return ids

    def set_hashes(self, hashes: dict[str, str]) -> None:
        """SHA1 of imported staged files (for duplicate detection)."""
        with self._tx() as db:
            db.executemany(
                "UPDATE ingest_files SET sha1=? WHERE path=?", [(h, p) for p, h in hashes.items()]
            )

    def earlier_imports(self, paths: list[str]) -> dict[str, tuple[int, int, str | None]]:
        """Imported files recorded at these staged paths: path -> (job, size, sha1)."""
        found: dict[str, tuple[int, int, str | None]] = {}
        with self._lock:
            for path in paths:
                row = self._db.execute(
                    "SELECT f.job_id, f.size, f.sha1 FROM ingest_files f JOIN ingest_jobs j "
                    "ON j.id = f.job_id WHERE f.path=? AND j.state='imported'",
                    (path,),
                ).fetchone()
                if row is not None:
                    found[path] = (row[0], row[1], row[2])
        return found

    def imported_count(self, root: str) -> int:
        """How many times a fileset root was imported (its follow-ups are numbered on)."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT count(*) FROM ingest_jobs WHERE root=? AND state='imported'", (root,)
            ).fetchone()
        return int(n)

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
    *rest, handed_off, failure, next_try, duplicate_of, warning = rest  # totals .. updated
    return Job(
        id_,
        key,
        transfer,
        state,
        files,
        *rest,
        bool(handed_off),
        failure,
        next_try,
        duplicate_of,
        warning,
    )
