"""The notifier's own tables, in the repository's SQLite file beside ``ingest_jobs``.

``notify_events`` records each job transition worth telling (a job id and a kind, the
primary key: the same transition is never recorded twice), read from ``ingest_jobs`` in
the same transaction that advances the cursor, so a crash neither loses nor repeats one.
``notify_outbox`` holds one row per message and channel (unique by the message's key and
the channel), created in the same transaction that marks its events routed; a row stays
``pending`` until its channel accepted it. Delivery is therefore at-least-once: a crash
between the relay's "250 OK" and our commit resends that one message (with the same
Message-ID and delivery id, so receivers can drop it).

The ingest queue's table belongs to ingest/queue.py; it is only read here, by column
name, so new columns and new states added there do no harm.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omerofs.catalog.sqlite import Database
from omerofs.errors import CatalogUnavailable
from omerofs.ingest.queue import JobQueue

IMPORTED = "imported"

# Jobs are re-read this long before the cursor: a transaction stamps ``updated`` before
# it commits, so a row may become visible a little after a later-stamped one.
OVERLAP = 600.0

# Columns of ingest_jobs read when present (the queue may gain or lose some).
_JOB_COLUMNS = (
    "id", "root", "user", "grp", "project", "dataset", "is_dir", "transfer", "state",
    "bytes_total", "fileset_id", "error", "attempts", "created", "updated", "manifest",
)  # fmt: skip
# A failure with one of these in the future is being retried by the ingest service:
# not a problem to report yet (its row changes again when the retry ends).
RETRY_COLUMNS = ("next_try", "next_retry", "retry_at")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_events (
    job_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    user TEXT NOT NULL,
    job TEXT NOT NULL,
    seen REAL NOT NULL,
    routed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, kind)
);
CREATE INDEX IF NOT EXISTS notify_events_unrouted ON notify_events(routed, kind);
CREATE TABLE IF NOT EXISTS notify_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    user TEXT NOT NULL,
    recipient TEXT,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending','sent','skipped','dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    done REAL,
    UNIQUE (key, channel)
);
CREATE INDEX IF NOT EXISTS notify_outbox_due ON notify_outbox(state, channel, next_attempt);
CREATE TABLE IF NOT EXISTS notify_preferences (
    user TEXT PRIMARY KEY,
    email TEXT NOT NULL CHECK (email IN ('all','failures','none')),
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notify_ingest_jobs_updated ON ingest_jobs(updated);
"""


@dataclass(frozen=True)
class Event:
    """A job transition to tell: ``kind`` is the job's state (``imported`` or an alert
    state such as ``failed``); ``job`` the job's fields as read then."""

    job_id: int
    kind: str
    user: str
    job: dict[str, Any]
    seen: float


@dataclass(frozen=True)
class Delivery:
    """One message for one channel; ``body`` is the notification document."""

    key: str
    channel: str
    event: str
    user: str
    body: dict[str, Any]
    recipient: str | None = None
    state: str = "pending"
    reason: str | None = None  # why it is skipped
    id: int = 0
    attempts: int = 0
    next_attempt: float = 0.0
    created: float = 0.0


class NotifyStore:
    def __init__(self, path: Path) -> None:
        JobQueue(path).close()  # ingest_jobs exists, in its owner's current schema
        self._store = Database(path, "the notification outbox in")
        self._tx = self._store.transaction
        try:
            self._store.conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._store.close()
            raise CatalogUnavailable(
                f"cannot open the notification outbox in {path}: {exc}"
            ) from None

    def close(self) -> None:
        self._store.close()

    # -- reading the ingest queue ----------------------------------------------------

    def capture(
        self, kinds: Iterable[str], now: float, delays: dict[str, float] | None = None
    ) -> int:
        """Record every job that reached one of ``kinds`` (or ``imported``) since the
        cursor; a kind with a delay in ``delays`` only once the job has been in it that
        long after it was made. Returns how many new events. The first run starts from
        now: a repository that had notifications off is not told its whole history."""
        delays = {k: d for k, d in (delays or {}).items() if d > 0}
        at_once = {IMPORTED, *kinds} - set(delays)
        with self._tx() as db:
            row = db.execute("SELECT value FROM notify_state WHERE key='jobs.cursor'").fetchone()
            if row is None:
                self._set_cursor(db, now)
                db.execute(
                    "INSERT INTO notify_state (key, value) VALUES ('jobs.since', ?)", (repr(now),)
                )
                return 0
            cursor = float(row[0])
            since = db.execute("SELECT value FROM notify_state WHERE key='jobs.since'").fetchone()
            low = max(min(cursor, now) - OVERLAP, float(since[0]) if since else 0.0)
            columns = _columns(db)
            changed = db.execute(
                "SELECT id, state, updated FROM ingest_jobs WHERE updated > ? ORDER BY updated",
                (low,),
            ).fetchall()
            found = [(job_id, state) for job_id, state, _ in changed if state in at_once]
            cursor = max([cursor, *(float(updated) for _, _, updated in changed)])
            for state, delay in delays.items():  # held ones: few, found by the state index
                found += db.execute(
                    "SELECT id, state FROM ingest_jobs WHERE state=? AND created <= ? AND id > "
                    "coalesce((SELECT CAST(value AS INTEGER) FROM notify_state "
                    "WHERE key='jobs.first'), 0)",
                    (state, now - delay),
                ).fetchall()
            new = sum(self._record(db, columns, job_id, state, now) for job_id, state in found)
            self._set_cursor(db, cursor)
        return new

    @staticmethod
    def _record(
        db: sqlite3.Connection, columns: list[str], job_id: int, state: str, now: float
    ) -> bool:
        if db.execute(
            "SELECT 1 FROM notify_events WHERE job_id=? AND kind=?", (job_id, state)
        ).fetchone():
            return False
        job = _read_job(db, columns, job_id)
        if job is None or job.get("state") != state:
            return False
        if state != IMPORTED and _retry_pending(job, now):
            return False
        db.execute(
            "INSERT INTO notify_events (job_id, kind, user, job, seen) VALUES (?, ?, ?, ?, ?)",
            (job_id, state, str(job.get("user", "")), json.dumps(job), now),
        )
        return True

    @staticmethod
    def _set_cursor(db: sqlite3.Connection, value: float) -> None:
        db.execute(
            "INSERT OR REPLACE INTO notify_state (key, value) VALUES ('jobs.cursor', ?)",
            (repr(value),),
        )
        # jobs made before the notifier's first start are history: never told
        (last,) = db.execute("SELECT coalesce(max(id), 0) FROM ingest_jobs").fetchone()
        db.execute(
            "INSERT OR IGNORE INTO notify_state (key, value) VALUES ('jobs.first', ?)", (last,)
        )

    def unrouted(self, imported: bool, limit: int = 1000) -> list[Event]:
        """Events not yet turned into messages: alerts (``imported`` False) or the
        imports waiting for their user's digest."""
        op = "=" if imported else "!="
        rows = self._store.query(
            f"SELECT job_id, kind, user, job, seen FROM notify_events "
            f"WHERE routed=0 AND kind {op} ? ORDER BY seen, job_id LIMIT ?",
            (IMPORTED, limit),
        )
        return [Event(j, k, u, json.loads(b), s) for j, k, u, b, s in rows]

    # -- the outbox ------------------------------------------------------------------

    def route(self, events: Iterable[Event], deliveries: Iterable[Delivery], now: float) -> None:
        """Atomically: the messages exist, and their events are marked as told."""
        with self._tx() as db:
            for d in deliveries:
                db.execute(
                    "INSERT OR IGNORE INTO notify_outbox (key, channel, event, user, recipient, "
                    "body, state, next_attempt, last_error, created, done) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.key,
                        d.channel,
                        d.event,
                        d.user,
                        d.recipient,
                        json.dumps(d.body),
                        d.state,
                        now,
                        d.reason,
                        now,
                        None if d.state == "pending" else now,
                    ),
                )
            db.executemany(
                "UPDATE notify_events SET routed=1 WHERE job_id=? AND kind=?",
                [(e.job_id, e.kind) for e in events],
            )

    def due(self, channel: str, now: float, limit: int = 20) -> list[Delivery]:
        rows = self._store.query(
            "SELECT id, key, channel, event, user, recipient, body, attempts, next_attempt, "
            "created FROM notify_outbox WHERE state='pending' AND channel=? AND next_attempt<=? "
            "ORDER BY next_attempt, id LIMIT ?",
            (channel, now, limit),
        )
        return [
            Delivery(
                key=key,
                channel=ch,
                event=event,
                user=user,
                recipient=recipient,
                body=json.loads(body),
                id=id_,
                attempts=attempts,
                next_attempt=next_attempt,
                created=created,
            )
            for id_, key, ch, event, user, recipient, body, attempts, next_attempt, created in rows
        ]

    def delivered(self, delivery_id: int, now: float) -> None:
        self._finish(delivery_id, "sent", None, now)

    def give_up(self, delivery_id: int, error: str, now: float) -> None:
        self._finish(delivery_id, "dead", error, now)

    def _finish(self, delivery_id: int, state: str, error: str | None, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE notify_outbox SET state=?, attempts=attempts+1, "
                "last_error=coalesce(?, last_error), done=? WHERE id=? AND state='pending'",
                (state, error, now, delivery_id),
            )

    def abandon_channels(self, configured: Iterable[str], now: float) -> int:
        """Pending messages of channels no longer in ``[notify]`` will never be sent:
        mark them dead (with the reason) instead of leaving them pending forever."""
        keep = sorted(set(configured))
        marks = ",".join("?" * len(keep))
        with self._tx() as db:
            cur = db.execute(
                "UPDATE notify_outbox SET state='dead', done=?, "
                "last_error='its channel was removed from [notify]' "
                f"WHERE state='pending' AND channel NOT IN ({marks})",
                (now, *keep),
            )
            return cur.rowcount

    def postpone(self, delivery_id: int, error: str, next_attempt: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE notify_outbox SET attempts=attempts+1, last_error=?, next_attempt=? "
                "WHERE id=? AND state='pending'",
                (error, next_attempt, delivery_id),
            )

    def deliveries(self, state: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows for ``omerofs notify status`` and tests, oldest first."""
        where, params = ("WHERE state=?", (state,)) if state else ("", ())
        rows = self._store.query(
            "SELECT id, key, channel, event, user, recipient, state, attempts, next_attempt, "
            f"last_error, created, done FROM notify_outbox {where} ORDER BY id",
            params,
        )
        names = [
            "id",
            "key",
            "channel",
            "event",
            "user",
            "recipient",
            "state",
            "attempts",
            "next_attempt",
            "last_error",
            "created",
            "done",
        ]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def prune(self, before: float) -> int:
        """Forget finished messages older than ``before`` (events stay: they are what
        prevents telling the same transition twice)."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM notify_outbox WHERE state != 'pending' AND done < ?", (before,)
            )
            return cur.rowcount

    # -- per-user choices ------------------------------------------------------------

    def email_level(self, user: str) -> str | None:
        rows = self._store.query("SELECT email FROM notify_preferences WHERE user=?", (user,))
        return rows[0][0] if rows else None

    def set_email_level(self, user: str, level: str | None, now: float) -> None:
        """``all``, ``failures`` or ``none``; None forgets the choice (back to ``all``)."""
        with self._tx() as db:
            if level is None:
                db.execute("DELETE FROM notify_preferences WHERE user=?", (user,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO notify_preferences (user, email, updated) "
                    "VALUES (?, ?, ?)",
                    (user, level, now),
                )


def _columns(db: sqlite3.Connection) -> list[str]:
    present = {row[1] for row in db.execute("PRAGMA table_info(ingest_jobs)")}
    return [c for c in (*_JOB_COLUMNS, *RETRY_COLUMNS) if c in present]


def _read_job(db: sqlite3.Connection, columns: list[str], job_id: int) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {', '.join(columns)} FROM ingest_jobs WHERE id=?", (job_id,)
    ).fetchone()
    if row is None:
        return None
    job = dict(zip(columns, row, strict=True))
    manifest = job.pop("manifest", None)
    try:
        job["files"] = len(json.loads(manifest)) if manifest else None
    except (ValueError, TypeError):  # a damaged row is still told, without a count
        job["files"] = None
    return job


def _retry_pending(job: dict[str, Any], now: float) -> bool:
    for column in RETRY_COLUMNS:
        value = job.get(column)
        if isinstance(value, int | float) and value > now:
            return True
    return False
