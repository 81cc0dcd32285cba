"""SQLite plumbing shared by the repository's stores (catalog, ingest queue): one
connection per store, shared by threads behind one lock, WAL with full sync, explicit
transactions. The SQL itself stays in each store's module."""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omerofs.errors import CatalogUnavailable


def read_only_filesystem(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def unwritable_reason(path: Path) -> str | None:
    """Why this process cannot write the SQLite file ``path`` (and its -wal/-shm beside
    it), in words an admin acts on; None when it can."""
    if read_only_filesystem(path.parent):
        return "read-only repository (its filesystem is mounted read-only)"
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            return f"{target} is not writable by uid {os.geteuid()}: run as root"
    return None


class Database:
    def __init__(self, path: Path, what: str, *, readonly: bool = False) -> None:
        self.lock = threading.RLock()
        self.readonly = readonly
        if not readonly and (reason := unwritable_reason(Path(path))):
            raise CatalogUnavailable(f"cannot change {what} {path}: {reason}")
        try:
            if readonly:
                self.conn = self._connect_read_only(Path(path))
            else:
                self.conn = sqlite3.connect(
                    path, timeout=30, isolation_level=None, check_same_thread=False
                )
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            if readonly and not os.access(path, os.R_OK):
                raise CatalogUnavailable(
                    f"cannot read {what} {path}: permission denied for uid {os.geteuid()} "
                    "(run as root, or ask for read access: docs/cli.md)"
                ) from None
            raise CatalogUnavailable(f"cannot open {what} {path}: {exc}") from None

    @staticmethod
    def _connect_read_only(path: Path) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(str(path.absolute()))
        try:
            conn = sqlite3.connect(
                uri + "?mode=ro",
                uri=True,
                timeout=30,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            if Path(str(path) + "-wal").exists():
                raise  # a writer is active and we may not share its -shm: no stale read
        # no writer: the main file holds every committed change
        conn = sqlite3.connect(
            uri + "?mode=ro&immutable=1",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: writers queue up instead of deadlocking)."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one consistent state."""
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()
