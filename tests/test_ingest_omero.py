"""The ingest pipeline in front of an OMERO catalog: what the server's answers after the
hand-off mean for a job (a warning on an imported fileset, an outcome nobody can tell),
and start-up recovery while the server is down.

The pipeline is the real one (IngestService over a real repository's staging tree and
its SQLite queue), with the OMERO catalog and writer omerofs uses; the server's side is
played offline by tests/omero_standin.py, and an outage is a real omero.client refused
on a closed port (as in tests/test_omero_outage.py). The daemon test runs the real
``omerofs ingest`` against an OMERO repository whose server refuses."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import Ice
import omero.clients  # noqa: F401
import pyfuse3
import pytest
import trio

from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.backends.omero.handoff import ImportOutcomeUnknown
from omerofs.backends.omero.session import ServerConnection, connect_client
from omerofs.backends.omero.settings import OmeroSettings
from omerofs.backends.omero.writer import OmeroWriter
from omerofs.catalog.protocol import Experimenter, Group, Membership, Snapshot
from omerofs.catalog.sqlite import Database
from omerofs.config import load_config
from omerofs.errors import Busy, CatalogUnavailable, Frozen, ImportFailed
from omerofs.fs.ingest_ops import IngestOperations
from omerofs.identity import IdMap, PermissionLevel
from omerofs.imports.importer import Importer
from omerofs.ingest.failures import is_outcome_unknown, is_transient
from omerofs.ingest.paths import fileset_of
from omerofs.ingest.queue import Job, JobQueue
from omerofs.ingest.service import IngestService
from omerofs.ingest.settings import IngestRules
from tests.conftest import MountedView, as_user, make_tiff, needs_fuse, needs_root, wait_for
from tests.omero_standin import Client, Record, Server, sudo_of
from tests.test_omero_outage import down_repo, refused_port  # noqa: F401  (a fixture)

ALICE = Experimenter(2, "alice", 3001, False, 5)
LAB = Group(5, "lab", PermissionLevel.READ_WRITE, 71001)
ROOT = "alice/cells.tif"  # an orphan fileset: no target to resolve on the server


class OmeroIngest:
    """An ingest service whose catalog and writer are OMERO's (the server played by the
    stand-in), over a real repository's staging tree and queue. ``up`` says whether the
    server answers; while it does not, every connection is a real omero.client refused."""

    def __init__(self, repo, world: Path, outcome: str = "ok", transfer: str = "cp") -> None:
        self.config = repo.config
        managed = world / "omero-managed"
        managed.mkdir()
        self.server = Server(managed, outcome=outcome)
        cred = world / "omero-cred.toml"
        cred.write_text('username = "svc"\npassword = "x"\n')
        cred.chmod(0o600)
        idmap = world / "omero-idmap.toml"
        idmap.write_text("[users]\nalice = 3001\n[groups]\nlab = 71001\n")
        settings = OmeroSettings("127.0.0.1", refused_port(), cred, managed, import_timeout=5)
        self.up = True

        def connect(s: OmeroSettings):
            return Client(self.server) if self.up else connect_client(s)

        conn = ServerConnection(settings, connect=connect, first_delay=0.01, max_delay=0.05)
        self.catalog = OmeroCatalog(settings, conn, IdMap.load(idmap))
        # the people as last read from the server (their queries are not played here)
        self.catalog._people = Snapshot(
            1, experimenters={2: ALICE}, groups={5: LAB}, memberships=[Membership(5, 2, False)]
        )
        self.catalog._people_at = time.monotonic() + 1e9
        self.db = Database(self.config.catalog_path, "repository state")  # the queue's file
        writer = OmeroWriter(self.catalog, self.db, sudo=sudo_of(self.server))
        rules = IngestRules(retry_initial=0.05, retry_max=0.2, linger=0)
        self.service = IngestService(
            self.config, Importer(self.config, self.catalog, writer), transfer, 0, rules=rules
        )
        self.staged = self.config.staging_dir / ROOT

    def stage(self, seed: int = 1) -> Path:
        """A file written into the mount while no daemon ran (found at start-up)."""
        return make_tiff(self.staged, seed=seed)

    def latest(self) -> Job | None:
        return self.service.queue.latest_for(ROOT)

    def run(self, until: Callable[[], bool], then=None, timeout: float = 30) -> None:
        """Recover, start the daemon's loop, wait for ``until`` (polled off the loop),
        call ``then(service)`` inside the running loop, stop."""

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.service.run)
                with trio.fail_after(timeout):
                    while not await trio.to_thread.run_sync(until):
                        await trio.sleep(0.02)
                if then is not None:
                    await then(self.service)
                nursery.cancel_scope.cancel()

        self.service.recover()
        trio.run(main)

    def close(self) -> None:
        self.service.close()
        self.catalog.close()
        self.db.close()


@pytest.fixture
def omero_ingest(populated, world_dir: Path):
    made: list[OmeroIngest] = []

    def make(**kwargs) -> OmeroIngest:
        made.append(OmeroIngest(populated, world_dir, **kwargs))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def report_of(harness: OmeroIngest) -> str:
    return (harness.config.staging_dir / fileset_of(ROOT).error_report).read_text()


# -- a warning after the images landed ------------------------------------------------


def test_an_import_with_a_warning_is_imported_and_the_warning_is_shown(
    omero_ingest, caplog
) -> None:
    """ERR from the server's thumbnail step after step 0 committed the Images: the writer
    returns a FilesetWithWarning. The job is imported (never retried: that would be a
    second copy), and the warning is on the job, in the report beside the file and in
    the log."""
    s = omero_ingest(outcome="err-after-images")
    data = s.stage().read_bytes()
    shown = []

    async def look(service: IngestService) -> None:
        with trio.fail_after(30):  # the queue says imported a moment before the service
            while (state := await service.state(ROOT, False)).state != "imported":
                await trio.sleep(0.02)
        shown.append(state)
        ops = IngestOperations(service, s.config.staging_dir, lambda u, g: False, True)
        alice = await ops.lookup(pyfuse3.ROOT_INODE, b"alice", None)
        cells = await ops.lookup(alice.st_ino, b"cells.tif", None)
        xattrs.append(await ops.listxattr(cells.st_ino, None))
        xattrs.append(await ops.getxattr(cells.st_ino, b"user.omerofs.warning", None))

    xattrs: list = []
    with caplog.at_level(logging.WARNING):
        s.run(lambda: (job := s.latest()) is not None and job.state == "imported", look)
    job = s.latest()
    names, warning = xattrs  # beside user.omerofs.state, for getfattr and Samba users
    assert b"user.omerofs.warning" in names and b"user.omerofs.state" in names
    assert warning.decode() == job.warning
    assert (job.state, job.fileset_id, job.failure) == ("imported", 77, None)
    assert job.warning and "thumbnail-failure" in job.warning  # what the server said
    assert len(s.server.files) == 1  # imported once
    (state,) = shown
    assert (state.state, state.fileset_id, state.warning) == ("imported", 77, job.warning)
    report = report_of(s)
    assert f"imported {ROOT}, with a warning" in report and job.warning in report
    assert "fileset 77" in report and "Do not import it again" in report
    assert any(
        "with a warning" in r.getMessage() and f"job {job.id}" in r.getMessage()
        for r in caplog.records
    )
    assert s.staged.read_bytes() == data  # cp: the staged file stays (read-only)
    assert (s.server.managed / s.server.prefix / "cells.tif").read_bytes() == data


def test_the_warning_column_is_added_to_an_older_queue(world_dir: Path) -> None:
    import sqlite3

    path = world_dir / "old.sqlite"
    JobQueue(path).close()
    db = sqlite3.connect(path)  # the queue as the previous release wrote it
    db.execute("ALTER TABLE ingest_jobs DROP COLUMN warning")
    db.execute(
        "INSERT INTO ingest_jobs (root, user, is_dir, transfer, state, manifest, created, "
        "updated, fileset_id) VALUES ('alice/x.tif', 'alice', 0, 'cp', 'imported', '{}', 1, "
        "1, 4)"
    )
    db.commit()
    db.close()
    queue = JobQueue(path)
    try:
        (job,) = queue.in_state("imported")
        assert job.warning is None
        queue.set_warning(job.id, "thumbnails failed")
        assert queue.job(job.id).warning == "thumbnails failed"
    finally:
        queue.close()


# -- an outcome nobody can tell is never retried by itself -----------------------------


def test_outcome_unknown_is_permanent_even_when_raised_over_a_passing_cause() -> None:
    """The writer raises it while handling CatalogUnavailable (the server went away
    before the fileset could be read back): the chain still holds that passing cause."""
    try:
        try:
            raise CatalogUnavailable("OMERO server 127.0.0.1:4064: ConnectionRefused")
        except CatalogUnavailable:
            raise ImportOutcomeUnknown("x.tif: imported as fileset 77, but ...") from None
    except ImportOutcomeUnknown as exc:
        caught = exc
    assert is_outcome_unknown(caught) and not is_transient(caught)
    try:
        try:
            raise ImportOutcomeUnknown("x.tif: could not be asked")
        except ImportOutcomeUnknown as exc:
            raise ImportFailed("wrapped") from exc
    except ImportFailed as exc:
        assert is_outcome_unknown(exc) and not is_transient(exc)
    assert is_transient(CatalogUnavailable("down"))  # the passing cause alone still is


def test_a_lost_server_after_the_hand_off_fails_for_a_person_to_check(omero_ingest) -> None:
    """The connection is lost while the server imports, and it cannot be asked whether
    the Images landed: ImportOutcomeUnknown. Failed (permanent), never retried by itself;
    the report says to check OMERO and retry by commit; nothing removed."""
    s = omero_ingest(outcome="lost")
    data = s.stage().read_bytes()
    report = s.config.staging_dir / fileset_of(ROOT).error_report
    s.run(lambda: report.exists() and "cannot tell" in report.read_text())  # after the job
    job = s.latest()
    assert (job.state, job.failure, job.next_try, job.attempts) == ("failed", "permanent", None, 1)
    assert "check it in OMERO" in job.error
    report = report_of(s)
    assert f"omerofs cannot tell whether {ROOT} was imported" in report
    assert "Check in OMERO" in report and "does not retry it" in report
    assert "setfattr -n user.omerofs.commit -v 1 'cells.tif'" in report
    assert s.staged.read_bytes() == data
    placed = s.server.managed / s.server.prefix / "cells.tif"
    assert placed.read_bytes() == data  # kept: OMERO may point at it
    # a later start does not retry it either: it stays failed, imported once
    s.server.reachable = True
    s.run(lambda: True)
    assert s.latest().state == "failed" and s.latest().attempts == 1
    assert len(s.server.files) == 1


class VanishingServer(Server):
    """Answers until the import finished, then goes away before the fileset is read
    back (the Ice connection refused from then on)."""

    def projection(self, hql, params, ctx=None):
        if "fs.templatePrefix = :prefix" in hql and self.images:
            raise Ice.ConnectionRefusedException()
        return super().projection(hql, params, ctx)


def test_a_server_gone_after_the_commit_leaves_the_job_imported(omero_ingest) -> None:
    """verifyUpload answered OK and the job was committed with the import; then the
    server vanished before the fileset could be read back (ImportOutcomeUnknown from the
    writer). The import is there: the job stays imported, with a warning, and is never
    failed or retried (a retry would import it twice)."""
    s = omero_ingest(outcome="ok")
    s.server = VanishingServer(s.server.managed)
    s.service.importer.writer._sudo = sudo_of(s.server)
    s.stage()
    report = s.config.staging_dir / fileset_of(ROOT).error_report
    s.run(lambda: report.exists())  # written after the job's warning
    job = s.latest()
    assert (job.state, job.fileset_id, job.failure) == ("imported", 77, None)
    assert "do not import it again" in job.warning  # the writer's ImportOutcomeUnknown
    assert "with a warning" in report_of(s)
    assert len(s.server.files) == 1


# -- start-up recovery during an outage --------------------------------------------------


def handed_off(s: OmeroIngest) -> Job:
    """A job the daemon had handed to the server (verifyUpload) when it was killed."""
    key = fileset_of(ROOT)
    queue = s.service.queue
    job = queue.enqueue(key, s.service.transfer, s.service.manifest(key))
    queue.start(job.id)
    queue.set_prefix(job.id, s.server.prefix)
    queue.hand_off(job.id)
    return queue.job(job.id)


def test_recovery_waits_out_an_outage_and_settles_the_job_once(omero_ingest, caplog) -> None:
    """Restarted during an OMERO outage with a handed-off job: fileset_by_prefix raises
    CatalogUnavailable (a real omero.client refused). The service still starts; the job
    stays importing (busy, never rolled back, never run again) and is asked about again
    with backoff while the daemon runs; once the server answers that it landed, it is
    recorded imported, once."""
    s = omero_ingest()
    data = s.stage().read_bytes()
    job = handed_off(s)
    s.up = False
    seen: dict[str, object] = {}

    async def outage_then_back(service: IngestService) -> None:
        seen["state"] = (await service.state(ROOT, False)).state
        with pytest.raises(Busy, match="being imported"):
            service.check_mutable(ROOT)  # a writer gets EBUSY, as during any import
        seen["during"] = await trio.to_thread.run_sync(service.queue.job, job.id)
        # the server is back, and the import had landed
        s.server.images = 1
        digest = hashlib.sha1(data).hexdigest()
        s.server.files = [Record(1000, s.server.prefix, "cells.tif", len(data), digest)]
        s.up = True
        with trio.fail_after(30):
            while (await service.state(ROOT, False)).state == "importing":
                await trio.sleep(0.02)
        seen["after"] = (await service.state(ROOT, False)).state
        with pytest.raises(Frozen):  # cp: imported in place, read-only from now on
            service.check_mutable(ROOT)

    with caplog.at_level(logging.WARNING):
        s.run(lambda: "cannot tell yet" in caplog.text, outage_then_back)
    assert "ConnectionRefused" in caplog.text  # a real client was refused
    during = seen["during"]
    assert (during.state, during.handed_off, during.attempts) == ("importing", True, 1)
    assert seen["state"] == "importing" and seen["after"] == "imported"
    done = s.service.queue.job(job.id)
    assert (done.state, done.fileset_id, done.attempts) == ("imported", 77, 1)
    assert s.server.process is None  # importFileset never called: not run a second time
    assert [j.id for j in s.service.queue.in_state("queued", "importing", "imported")] == [job.id]
    assert s.staged.read_bytes() == data
    # a later start finds it imported: not imported again
    s.run(lambda: True)
    assert s.service.unsettled() == [] and s.server.process is None


def test_an_ln_rm_job_settled_after_an_outage_has_its_staged_name_removed(
    omero_ingest, caplog
) -> None:
    """The same with ln_rm: once the server says the import landed, the staged name goes
    after its linger time (0 here) by the importer's rule, and the data stays in the
    ManagedRepository link OMERO uses. Nothing is removed while it cannot tell."""
    s = omero_ingest(transfer="ln_rm")
    data = s.stage().read_bytes()
    job = handed_off(s)
    placed = s.server.managed / s.server.prefix / "cells.tif"
    placed.parent.mkdir(parents=True)
    os.link(s.staged, placed)  # what the killed import had linked before the hand-off
    s.up = False
    seen: dict[str, bool] = {}

    async def back(service: IngestService) -> None:
        seen["kept"] = s.staged.exists()
        s.server.images = 1
        digest = hashlib.sha1(data).hexdigest()
        s.server.files = [Record(1000, s.server.prefix, "cells.tif", len(data), digest)]
        s.up = True
        with trio.fail_after(30):
            while s.staged.exists():
                await trio.sleep(0.02)

    with caplog.at_level(logging.WARNING):
        s.run(lambda: "cannot tell yet" in caplog.text, back)
    assert seen["kept"]
    assert s.service.queue.job(job.id).state == "imported" and s.server.process is None
    assert placed.read_bytes() == data
    assert (s.config.staging_dir / "alice").is_dir()  # the user's directory stays


def test_a_not_handed_off_job_is_rolled_back_only_once_the_server_answers(
    omero_ingest, caplog
) -> None:
    """Killed before verifyUpload: roll back (remove what was placed under its prefix)
    and queue it again, but only once the server can say the prefix holds no fileset;
    until then nothing is removed. Then it is imported (once)."""
    s = omero_ingest()
    data = s.stage().read_bytes()
    key = fileset_of(ROOT)
    queue = s.service.queue
    job = queue.enqueue(key, "cp", s.service.manifest(key))
    queue.start(job.id)
    queue.set_prefix(job.id, "alice_2/2026-12/02/12-00-00.000/")
    placed = s.server.managed / "alice_2/2026-12/02/12-00-00.000/cells.tif"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(data)  # what the killed import had copied
    s.up = False
    seen: dict[str, bool] = {}

    async def back(service: IngestService) -> None:
        seen["kept"] = placed.exists()
        s.up = True

    with caplog.at_level(logging.WARNING):
        s.run(lambda: "cannot tell yet" in caplog.text, back)
    assert seen["kept"]
    s.run(lambda: queue.job(job.id).state not in ("queued", "importing"))
    assert queue.job(job.id).state == "imported" and not placed.exists()
    assert len(s.server.files) == 1


# -- the daemon itself -----------------------------------------------------------------


@needs_fuse
@needs_root
def test_the_ingest_daemon_starts_and_serves_writes_with_a_handed_off_job_in_an_outage(
    down_repo,  # noqa: F811
    world_dir: Path,
) -> None:
    """kill -9 after the hand-off, restart while the server refuses: `omerofs ingest`
    used to die in recovery (CatalogUnavailable from fileset_by_prefix). Now it starts,
    users save files, and the handed-off job waits, untouched, for the server."""
    config = down_repo
    staged = config.staging_dir / "alice" / "P" / "D" / "old.tif"
    old = make_tiff(staged, seed=3).read_bytes()
    for path in (staged, *staged.parents[:3]):  # as alice wrote them: alice/, P/, D/
        os.chown(path, 3001, 3001)
    queue = JobQueue(config.catalog_path)
    try:
        key = fileset_of("alice/P/D/old.tif")
        job = queue.enqueue(key, "cp", {"alice/P/D/old.tif": (len(old), 0)})
        queue.start(job.id)
        queue.set_prefix(job.id, "alice_2/2026-12/02/14-00-00.000/")
        queue.hand_off(job.id)
    finally:
        queue.close()
    mp = world_dir / "ingest"
    mp.mkdir()
    mounted = MountedView(
        config.root, mp, ("ingest", "--transfer", "cp", "--settle", "0.3", "--xattrs")
    )
    try:
        wait_for(lambda: "cannot tell yet" in mounted.log.read_text(), timeout=30, what="the log")
        target = mp / "alice" / "P" / "D" / "new.tif"
        cmd = f"head -c 4096 /dev/urandom > {target}"
        res = subprocess.run(as_user(3001, ["/bin/sh", "-c", cmd]), capture_output=True)
        assert res.returncode == 0, res.stderr
        data = target.read_bytes()
        wait_for(
            lambda: _state(target) not in (None, "open", "settling", "staged", "importing"),
            timeout=30,
            what="the new file's import attempt",
        )
        assert _state(target) != "imported" and target.read_bytes() == data
        assert _state(mp / "alice" / "P" / "D" / "old.tif") == "importing"
        assert mounted.proc.poll() is None
    finally:
        mounted.close()
    queue = JobQueue(load_config(config.root).catalog_path)
    try:
        left = queue.job(job.id)
        assert (left.state, left.handed_off) == ("importing", True)  # never rolled back
    finally:
        queue.close()
    assert staged.read_bytes() == old


def _state(path: Path) -> str | None:
    try:
        return os.getxattr(path, "user.omerofs.state").decode()
    except OSError:
        return None
