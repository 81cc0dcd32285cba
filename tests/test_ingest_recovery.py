"""Start-up recovery when the catalog committed an import the queue never heard of.

With the embedded catalog the two commit in one SQLite transaction; an OMERO server
commits on its own, so a crash can fall between. Recovery must then record the import,
not run it a second time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from omerofs.ingest.paths import fileset_of
from omerofs.ingest.service import IngestService
from tests.conftest import make_tiff


@contextmanager
def importing(populated, transfer: str) -> Iterator[tuple[IngestService, object]]:
    """A staged alice/cells.tif whose job is ``importing``, as a crash leaves it."""
    make_tiff(populated.config.staging_dir / "alice" / "cells.tif")
    key = fileset_of("alice/cells.tif")
    service = IngestService(populated.config, populated.importer, transfer, 0)
    try:
        job = service.queue.enqueue(key, transfer, service.manifest(key))
        service.queue.start(job.id)
        yield service, job
    finally:
        service.close()


def test_recovery_records_an_import_the_catalog_already_committed(populated) -> None:
    config = populated.config
    staged = config.staging_dir / "alice" / "cells.tif"
    with importing(populated, "cp") as (service, job):
        fileset = populated.import_file(staged, "alice", mode="cp")  # committed remotely...
        service.queue.set_prefix(job.id, fileset.template_prefix)  # ...then the crash
        service.recover()
        job = service.queue.job(job.id)
        assert (job.state, job.fileset_id) == ("imported", fileset.id)
        assert service.queue.in_state("queued", "importing") == []
        assert (config.managed_dir / fileset.entries[0].repo_path).exists()  # kept
        assert staged.exists()  # cp: the staged data stays, now read-only
        assert service.unsettled() == []  # and is not imported again


def test_a_job_handed_off_to_the_server_is_reported_not_rerun(populated) -> None:
    """Interrupted after verifyUpload: the server may still finish it. No rollback, no
    second import: the job fails with a report that says what to check."""
    config = populated.config
    staged = config.staging_dir / "alice" / "cells.tif"
    with importing(populated, "ln_rm") as (service, job):
        service.queue.set_prefix(job.id, "alice_3/2026-11/25/10-00-00.000/")
        service.queue.hand_off(job.id)
        service.recover()
        job = service.queue.job(job.id)
        assert job.state == "failed" and "interrupted while the OMERO server" in job.error
        assert staged.exists()
        report = config.staging_dir / job.key.error_report
        assert "setfattr -n user.omerofs.commit" in report.read_text()


def test_a_queue_from_before_hand_off_is_upgraded(world_dir) -> None:
    import sqlite3

    from omerofs.ingest.queue import JobQueue

    path = world_dir / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE ingest_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, root TEXT NOT NULL, "
        "user TEXT NOT NULL, grp TEXT, project TEXT, dataset TEXT, is_dir INTEGER NOT NULL, "
        "transfer TEXT NOT NULL, state TEXT NOT NULL, manifest TEXT NOT NULL, "
        "bytes_total INTEGER NOT NULL DEFAULT 0, bytes_done INTEGER NOT NULL DEFAULT 0, "
        "prefix TEXT, fileset_id INTEGER, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
        "created REAL NOT NULL, updated REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO ingest_jobs (root, user, is_dir, transfer, state, manifest, created, "
        "updated) VALUES ('alice/x.tif', 'alice', 0, 'cp', 'queued', '{}', 1, 1)"
    )
    db.commit()
    db.close()
    queue = JobQueue(path)
    try:
        (job,) = queue.in_state("queued")
        assert job.handed_off is False and job.key.root == "alice/x.tif"
    finally:
        queue.close()
