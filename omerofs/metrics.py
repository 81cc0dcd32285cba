"""Prometheus metrics of a daemon (``--metrics ADDR``, off by default, loopback unless an
address says otherwise), served by ``prometheus-client``'s own HTTP thread.

Everything is collected when Prometheus scrapes, not counted along the way: the ingest
figures come from the queue table (``ingest_jobs``, ingest/queue.py) through a
read-only SQLite connection, the view's from its inode table, so the pipeline and the
FUSE handlers carry no instrumentation and a restarted daemon reports the same totals.

- ``omerofs_daemon_info{role,mountpoint,version}``, ``omerofs_daemon_start_time_seconds``,
  ``omerofs_daemon_uptime_seconds`` (and the client's ``process_*`` figures)
- ``omerofs_ingest_jobs{state}``: jobs per queue state (queued, importing, retrying …)
- ``omerofs_ingest_imports_total{transfer}``, ``omerofs_ingest_imported_bytes_total{transfer}``
- ``omerofs_ingest_failures_total{kind}``: jobs that failed, by kind (``permanent``,
  ``transient``: retried) and ``incomplete`` (held back: damaged or missing parts)
- ``omerofs_ingest_import_latency_seconds``: histogram, from the fileset being queued
  (closed and settled) to its import committing
- ``omerofs_view_inodes``, ``omerofs_view_user_trees``, ``omerofs_view_users``,
  ``omerofs_view_groups``: what the view holds in memory
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from omerofs.address import parse_address
from omerofs.config import RepoConfig
from omerofs.errors import MountError

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
QUEUE_STATES = (
    "queued",
    "importing",
    "imported",
    "failed",
    "retrying",
    "incomplete",
    "duplicate",
    "superseded",
    "gone",
)


class DaemonCollector:
    def __init__(self, role: str, mountpoint: Path, version: str) -> None:
        self.role, self.mountpoint, self.version = role, str(mountpoint), version
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "omerofs_daemon_info", "This daemon", labels=["role", "mountpoint", "version"]
        )
        info.add_metric([self.role, self.mountpoint, self.version], 1)
        yield info
        yield GaugeMetricFamily(
            "omerofs_daemon_start_time_seconds", "When it started (unix time)", self.started
        )
        yield GaugeMetricFamily(
            "omerofs_daemon_uptime_seconds", "Seconds since it started", time.time() - self.started
        )


class QueueCollector:
    """The ingest queue table, read at scrape time (one connection per scrape: the
    scrape runs on the HTTP server's thread, and SQLite connections stay on theirs)."""

    def __init__(self, database: Path) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        try:
            with contextlib.closing(self._connect()) as db:
                yield from self._collect(db)
        except sqlite3.Error as exc:  # locked, or not there yet: say so, keep serving
            log.warning("metrics: cannot read the ingest queue: %s", exc)
            yield GaugeMetricFamily(
                "omerofs_ingest_queue_readable", "1 if the queue table could be read", 0
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=2.0)
        db.execute("PRAGMA query_only=1")
        return db

    def _collect(self, db: sqlite3.Connection) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "omerofs_ingest_queue_readable", "1 if the queue table could be read", 1
        )
        jobs = GaugeMetricFamily("omerofs_ingest_jobs", "Ingest jobs by state", labels=["state"])
        counts = dict(db.execute("SELECT state, count(*) FROM ingest_jobs GROUP BY state"))
        for state in (*QUEUE_STATES, *sorted(set(counts) - set(QUEUE_STATES))):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs

        imports = CounterMetricFamily(
            "omerofs_ingest_imports", "Filesets imported, by transfer mode", labels=["transfer"]
        )
        volume = CounterMetricFamily(
            "omerofs_ingest_imported_bytes",
            "Bytes of the filesets imported, by transfer mode",
            labels=["transfer"],
        )
        for transfer, n, total in db.execute(
            "SELECT transfer, count(*), coalesce(sum(bytes_total), 0) FROM ingest_jobs "
            "WHERE state='imported' GROUP BY transfer ORDER BY transfer"
        ):
            imports.add_metric([transfer], n)
            volume.add_metric([transfer], total)
        yield imports
        yield volume

        failures = CounterMetricFamily(
            "omerofs_ingest_failures",
            "Jobs that failed (permanent), were retried after a passing failure (transient) "
            "or were held back as incomplete",
            labels=["kind"],
        )
        kinds = dict(
            db.execute(
                "SELECT failure, count(*) FROM ingest_jobs WHERE failure IS NOT NULL "
                "GROUP BY failure"
            )
        )
        (held,) = db.execute(
            "SELECT count(*) FROM ingest_jobs WHERE state='incomplete' "
            "OR (state IN ('superseded', 'gone') AND failure IS NULL AND error IS NOT NULL)"
        ).fetchone()
        for kind in ("permanent", "transient", *sorted(set(kinds) - {"permanent", "transient"})):
            failures.add_metric([kind], kinds.get(kind, 0))
        failures.add_metric(["incomplete"], held)
        yield failures

        yield self._latency(db)

    @staticmethod
    def _latency(db: sqlite3.Connection) -> Metric:
        """One pass over the imported jobs, bucketed by SQLite itself."""
        sums = ", ".join(f"coalesce(sum(lat <= {b}), 0)" for b in LATENCY_BUCKETS)
        row = db.execute(
            f"SELECT {sums}, count(*), coalesce(sum(lat), 0) FROM "
            "(SELECT max(updated - created, 0) AS lat FROM ingest_jobs WHERE state='imported')"
        ).fetchone()
        *cumulative, count, total = row
        buckets = [(str(float(b)), c) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        buckets.append(("+Inf", count))
        return HistogramMetricFamily(
            "omerofs_ingest_import_latency_seconds",
            "Seconds from a fileset queued (closed and settled) to its import committed",
            buckets=buckets,
            sum_value=total,
        )


class ViewCollector:
    """Sizes of the view's in-memory tree (read from the loop's objects without a lock:
    a scrape may see a count mid-update, never a broken structure)."""

    def __init__(self, view: Any) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        yield GaugeMetricFamily("omerofs_view_inodes", "Inodes the view holds", len(view.table))
        yield GaugeMetricFamily(
            "omerofs_view_user_trees",
            "Users whose tree is built (loaded on first access)",
            view.user_trees,
        )
        snap = view.snapshot
        yield GaugeMetricFamily("omerofs_view_users", "Users known", len(snap.experimenters))
        yield GaugeMetricFamily("omerofs_view_groups", "Groups known", len(snap.groups))


@contextlib.contextmanager
def metrics_server(
    address: str | None,
    config: RepoConfig,
    role: str,
    mountpoint: Path,
    view: Any = None,
) -> Iterator[tuple[str, int] | None]:
    """Serve ``/metrics`` at ``address`` while the block runs; yields (host, port) bound
    (port 0 picks a free one), or None without an address. Binding happens before the
    mount, so a taken port fails the start-up with one line, not a half-started daemon."""
    if not address:
        yield None
        return
    from omerofs import __version__

    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(role, mountpoint, __version__))
    ProcessCollector(registry=registry)
    if role == "ingest":
        registry.register(QueueCollector(config.catalog_path))
    if view is not None:
        registry.register(ViewCollector(view))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MountError(
            f"--metrics {address}: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    bound = server.server_address[:2]
    log.info("metrics at http://%s:%d/metrics", _host_text(bound[0]), bound[1])
    try:
        yield bound[0], bound[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host
