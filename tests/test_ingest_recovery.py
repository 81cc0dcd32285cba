"""Start-up recovery when the catalog committed an import the queue never heard of.

With the embedded catalog the two commit in one SQLite transaction; an OMERO server
commits on its own, so a crash can fall between. Recovery must then record the import,
not run it a second time."""

from __future__ import annotations

from omerofs.ingest.paths import fileset_of
from omerofs.ingest.service import IngestService
from tests.conftest import make_tiff


def test_recovery_records_an_import_the_catalog_already_committed(populated) -> None:
    config = populated.config
    staged = make_tiff(config.staging_dir / "alice" / "cells.tif")
    key = fileset_of("alice/cells.tif")
    service = IngestService(config, populated.importer, "cp", 0)
    try:
        job = service.queue.enqueue(key, "cp", service.manifest(key))
        service.queue.start(job.id)
        fileset = populated.import_file(staged, "alice", mode="cp")  # committed remotely...
        service.queue.set_prefix(job.id, fileset.template_prefix)  # ...then the crash
        service.recover()
        job = service.queue.job(job.id)
        assert (job.state, job.fileset_id) == ("imported", fileset.id)
        assert service.queue.in_state("queued", "importing") == []
        assert (config.managed_dir / fileset.entries[0].repo_path).exists()  # kept
        assert staged.exists()  # cp: the staged data stays, now read-only
        assert service.unsettled() == []  # and is not imported again
    finally:
        service.close()
