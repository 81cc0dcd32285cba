"""Has this content been imported from here before? A second ``rsync`` of the same
directory into an ``*_rm`` area sends every file again (the first copies are gone), and
each would become a second fileset in OMERO.

"The same" is strict: the same staged paths (so the same user and target), every file's
size and SHA1 equal to what one earlier import recorded, and that import's fileset still
in the catalog. Sizes are compared first; files are hashed only when all sizes match.
"""

from __future__ import annotations

from pathlib import Path

from omerofs.catalog.protocol import Catalog
from omerofs.imports import transfer
from omerofs.ingest.paths import FilesetKey
from omerofs.ingest.queue import Job, JobQueue, Manifest


def earlier_copy(
    queue: JobQueue, catalog: Catalog, staging: Path, key: FilesetKey, manifest: Manifest
) -> Job | None:
    """The earlier imported job with exactly this content at these paths, or None.
    Runs in a worker thread (it may hash the files)."""
    earlier = queue.earlier_imports(list(manifest))
    if len(earlier) != len(manifest):
        return None
    jobs = {job_id for job_id, _, _ in earlier.values()}
    if len(jobs) != 1:
        return None
    job = queue.job(jobs.pop())
    if job.key.user != key.user or job.manifest.keys() != manifest.keys():
        return None
    for path, (_, size, sha1) in earlier.items():
        if sha1 is None or size != manifest[path][0]:
            return None
    for path, (_, _, sha1) in earlier.items():
        if transfer.sha1_file(staging / path) != sha1:
            return None
    if job.prefix and catalog.fileset_by_prefix(job.prefix) is None:
        return None  # the earlier fileset was deleted since: import it again
    return job
