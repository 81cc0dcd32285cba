"""What ``omerofs status`` reports: daemons, the ingest queue, recent imports, failures.

Read over a read-only connection (anyone who may read the repository's SQLite file may
ask), straight from the queue's table rather than through ingest/queue.py, whose
constructor creates and migrates tables. Acknowledgements live in a table of their own
(``status_acks``): a failure stays in the queue's history, only the report leaves it
out; a column on ``ingest_jobs`` would shift the queue's row decoding.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime
from typing import Any

from omerofs.catalog.sqlite import Database
from omerofs.config import RepoConfig
from omerofs.errors import NotFound, UsageError
from omerofs.pids import alive
from omerofs.progress import human_bytes

REPORT_VERSION = 1
STATE_COLUMNS = ("queued", "retrying", "incomplete", "importing", "imported", "failed")
_ACKS = """CREATE TABLE IF NOT EXISTS status_acks (
    job_id INTEGER PRIMARY KEY,
    acked REAL NOT NULL,
    uid INTEGER NOT NULL
)"""


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _files_present(config: RepoConfig, root: str) -> bool | None:
    """Is the staged fileset still there? None when this user may not look."""
    try:
        os.stat(config.staging_dir / root)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return None


def report(config: RepoConfig, limit: int, daemons: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole report as one JSON-able dict (its shape is documented in docs/cli.md)."""
    result: dict[str, Any] = {
        "version": REPORT_VERSION,
        "repository": str(config.root),
        "daemons": daemons,
        "users": {},
        "open": [],
        "in_flight": [],
        "waiting": [],
        "recent_imports": [],
        "failures": [],
        "acknowledged": 0,
        "omero_outage": None,
    }
    if not config.catalog_path.exists():
        return result
    result["omero_outage"] = omero_outage(config)
    store = Database(config.catalog_path, "the ingest queue in", readonly=True)
    try:
        with store.reading() as db:
            tables = _tables(db)
            if "ingest_live" in tables:
                result["open"] = _live(db)
            if "ingest_jobs" not in tables:
                return result
            columns = {r[1] for r in db.execute("PRAGMA table_info(ingest_jobs)")}
            acked: set[int] = set()
            if "status_acks" in tables:
                acked = {r[0] for r in db.execute("SELECT job_id FROM status_acks")}
            rows = _jobs(db, columns)
    finally:
        store.close()
    latest: dict[str, dict] = {}
    for job in rows:  # id order: the last job of a root is its state
        if job["state"] not in ("superseded", "gone"):
            latest[job["root"]] = job
    for job in latest.values():
        counts = result["users"].setdefault(job["user"], {})
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    jobs = sorted(latest.values(), key=lambda j: j["job"])
    result["in_flight"] = [_public(j) for j in jobs if j["state"] == "importing"]
    result["waiting"] = [
        _public(j)
        for j in jobs
        if j["state"] in ("queued", "retrying", "incomplete", "waiting")  # waiting: commit-only
    ]
    imported = [j for j in jobs if j["state"] in ("imported", "duplicate")]
    result["recent_imports"] = [_public(j) for j in imported[-limit:]]
    failures = []
    for job in jobs:
        if job["state"] != "failed":
            continue
        if job["job"] in acked:
            result["acknowledged"] += 1
            continue
        present = _files_present(config, job["root"])
        if present is False:
            continue  # its files were removed: no longer anybody's problem
        failures.append(_public(job) | {"files_present": present})
    result["failures"] = failures[-limit:]
    return result


def _jobs(db: sqlite3.Connection, columns: set[str]) -> list[dict]:
    wanted = [
        "id",
        "root",
        "user",
        "state",
        "bytes_done",
        "bytes_total",
        "attempts",
        "fileset_id",
        "error",
        "updated",
        "next_try",
        "transfer",
        "failure",
        "duplicate_of",
    ]
    present = [c for c in wanted if c in columns]
    out = []
    for row in db.execute(f"SELECT {', '.join(present)} FROM ingest_jobs ORDER BY id"):
        job = dict.fromkeys(wanted) | dict(zip(present, row, strict=True))
        job["job"] = job.pop("id")
        out.append(job)
    return out


def _live(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Filesets only the ingest daemon knows (ingest/live.py): open, settling, waiting
    for a commit. Rows of a daemon that no longer runs are stale: left out."""
    out = []
    for root, user, is_dir, state, since, deadline, files, size, pid in db.execute(
        "SELECT root, user, is_dir, state, since, deadline, files, bytes, pid "
        "FROM ingest_live ORDER BY since, root"
    ):
        if not alive(pid):
            continue
        out.append(
            {
                "user": user,
                "path": root + ("/" if is_dir else ""),
                "state": state,
                "since": _when(since),
                "deadline": _when(deadline),
                "files": files,
                "bytes": size,
            }
        )
    return out


def _public(job: dict) -> dict[str, Any]:
    return {
        "job": job["job"],
        "user": job["user"],
        "path": job["root"],
        "state": job["state"],
        "transfer": job["transfer"],
        "bytes_done": job["bytes_done"] or 0,
        "bytes_total": job["bytes_total"] or 0,
        "attempts": job["attempts"] or 0,
        "fileset": job["fileset_id"],
        "error": job["error"],
        "next_try": _when(job["next_try"]),
        "updated": _when(job["updated"]),
        "failure": job["failure"],
        "duplicate_of": job["duplicate_of"],
    }


def omero_outage(config: RepoConfig) -> str | None:
    """With an OMERO backend: one line when the server was unreachable at the daemons'
    last attempt (backends/omero/cache.py keeps it in the repository's SQLite file)."""
    if config.omero is None:
        return None
    from omerofs.backends.omero.cache import describe_outage  # no omero-py needed

    store = Database(config.catalog_path, "the OMERO state in", readonly=True)
    try:
        with store.reading() as db:
            if "omero_state" not in _tables(db):
                return None  # no daemon or command has talked to the server yet
        return describe_outage(store)
    finally:
        store.close()


def acknowledge(config: RepoConfig, job_ids: list[int]) -> list[int]:
    """Leave these failed jobs out of future reports; returns the ids newly acknowledged."""
    store = Database(config.catalog_path, "the ingest queue in")
    try:
        with store.transaction() as db:
            if "ingest_jobs" not in _tables(db):
                raise NotFound("no ingest jobs yet")
            db.execute(_ACKS)
            done = []
            for job_id in job_ids:
                row = db.execute("SELECT state FROM ingest_jobs WHERE id=?", (job_id,)).fetchone()
                if row is None:
                    raise NotFound(f"no such ingest job {job_id}")
                if row[0] != "failed":
                    raise UsageError(
                        f"job {job_id} is {row[0]}, not failed: nothing to acknowledge"
                    )
                cur = db.execute(
                    "INSERT OR IGNORE INTO status_acks VALUES (?, ?, ?)",
                    (job_id, time.time(), os.geteuid()),
                )
                if cur.rowcount:
                    done.append(job_id)
            return done
    finally:
        store.close()


def daemons(config: RepoConfig) -> list[dict[str, Any]]:
    """Running daemons from their lock files (omerofs/daemon_lock.py)."""
    try:
        from omerofs.daemon_lock import running_daemons
    except ImportError:  # pragma: no cover - an install without the lock module
        return []
    try:
        found = running_daemons(config)
    except OSError:
        return []
    return [
        {
            "role": d.role,
            "pid": d.pid,
            "mountpoint": d.mountpoint,
            "since": _when(d.started) if d.started else None,
        }
        for d in found
    ]


def render(rep: dict[str, Any]) -> str:
    """The report as a terminal table."""
    out: list[str] = []
    if rep.get("omero_outage"):
        out += [f"WARNING: {rep['omero_outage']}", ""]
    if rep["daemons"]:
        out.append("DAEMON  PID      SINCE                MOUNTPOINT")
        for d in rep["daemons"]:
            out.append(f"{d['role']:<7} {d['pid']:<8} {d['since'] or '?':<20} {d['mountpoint']}")
    else:
        out.append("no daemon is running (omerofs mount / omerofs ingest)")
    out.append("")
    users = rep["users"]
    if users:
        width = max(4, *(len(u) for u in users)) + 2
        out.append("USER".ljust(width) + "".join(s.upper().rjust(11) for s in STATE_COLUMNS))
        for user, by_state in sorted(users.items()):
            out.append(
                user.ljust(width)
                + "".join(str(by_state.get(s, 0)).rjust(11) for s in STATE_COLUMNS)
            )
    else:
        out.append("(no ingest jobs yet)")
    sections = (
        ("OPEN AND SETTLING", rep.get("open", []), _open_line),
        ("IN FLIGHT", rep["in_flight"], _in_flight_line),
        ("WAITING", rep["waiting"], _waiting_line),
        ("RECENT IMPORTS", rep["recent_imports"], _import_line),
        ("FAILURES", rep["failures"], _failure_line),
    )
    for title, items, line in sections:
        if items:
            out.append("")
            out.append(title)
            out.extend("  " + line(item) for item in items)
    if rep["failures"]:
        out.append("")
        out.append("retry after fixing: setfattr -n user.omerofs.commit -v 1 <file or directory>")
        out.append("in the ingest mount; hide a failure: omerofs status --ack JOB")
    if rep["acknowledged"]:
        out.append(f"({rep['acknowledged']} acknowledged failure(s) not shown)")
    return "\n".join(out)


def _open_line(f: dict) -> str:
    """``open since 14:02:11``, ``settling until 14:03:12``, ``waiting for a commit``."""
    if f["state"] == "settling" and f["deadline"]:
        state = f"settling until {_clock(f['deadline'])}"
    elif f["state"] == "waiting":
        state = f"waiting for a commit since {_clock(f['since'])}"
    else:
        state = f"{f['state']} since {_clock(f['since'])}"
    return f"{f['user']}  {f['path']}  {state}, {f['files']} file(s), {human_bytes(f['bytes'])}"


def _in_flight_line(j: dict) -> str:
    total, done = j["bytes_total"], j["bytes_done"]
    pct = f" ({100 * done / total:.0f}%)" if total else ""
    return f"job {j['job']}  {j['path']}  {human_bytes(done)} of {human_bytes(total)}{pct}"


def _waiting_line(j: dict) -> str:
    """``retrying at 14:03:12 (2 tries): reason``, ``incomplete: reason``, ``queued``."""
    state = j["state"]
    if state == "retrying":
        at = _clock(j["next_try"]) if j["next_try"] else "once the daemon runs"
        tries = j["attempts"]
        state = f"retrying at {at} ({tries} {'try' if tries == 1 else 'tries'})"
    reason = f": {j['error']}" if j["error"] else ""
    return f"job {j['job']}  {j['path']}  {state}{reason}"


def _clock(iso: str) -> str:
    """HH:MM:SS today, the date as well otherwise."""
    day, _, clock = iso.partition("T")
    return clock if day == datetime.now().date().isoformat() else f"{day} {clock}"


def _import_line(j: dict) -> str:
    return f"job {j['job']}  {j['path']}  -> fileset {j['fileset']}  at {j['updated']}"


def _failure_line(j: dict) -> str:
    tries = f" after {j['attempts']} tries" if (j["attempts"] or 0) > 1 else ""
    return f"job {j['job']}  {j['path']}  at {j['updated']}{tries}: {j['error']}"
