"""The ingest pipeline: close tracking -> queue -> import -> report, and crash recovery.

The FUSE layer tells the service what happens to staged paths (open, release, change,
commit) and asks it whether a path may still change. The service decides when a fileset
is closed, persists a job, imports it off the trio loop with bounded concurrency, and
reports the outcome where the user looks: an error report in the mount (and xattrs with
``--xattrs``), ``omerofs status``, and the log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio
from sortedcontainers import SortedSet

from omerofs.config import RepoConfig
from omerofs.errors import Busy, Frozen, OmerofsError, UsageError
from omerofs.ingest import transfer
from omerofs.ingest.filesets import plan_fileset
from omerofs.ingest.importer import Importer, ImportHooks, Target
from omerofs.ingest.paths import (
    FilesetKey,
    fileset_at,
    fileset_of,
    is_ignored_name,
    tracking_key,
)
from omerofs.ingest.queue import Job, JobQueue, Manifest
from omerofs.ingest.tracker import CloseTracker
from omerofs.ingest.writers import open_for_writing

log = logging.getLogger(__name__)
PROGRESS_EVERY = 0.5  # seconds between progress writes to the queue


@dataclass(frozen=True)
class FilesetState:
    state: str  # open, settling, staged, queued, importing, imported, failed
    error: str | None = None
    fileset_id: int | None = None
    job_id: int | None = None


class IngestService:
    def __init__(
        self,
        config: RepoConfig,
        importer: Importer,
        transfer_mode: str,
        settle: float,
        concurrency: int = 2,
    ) -> None:
        transfer.base_mode(transfer_mode)
        self.config = config
        self.staging = config.staging_dir
        self.catalog = importer.catalog
        self.queue = JobQueue(config.catalog_path)
        self.importer = importer
        self.transfer = transfer_mode
        self.tracker = CloseTracker(settle)
        self._limiter = trio.CapacityLimiter(max(1, concurrency))
        self._frozen_roots: SortedSet = SortedSet()
        self._importing: SortedSet = SortedSet()
        self._explicit: set[FilesetKey] = set()
        self._unknown_writers: set[str] = set()  # roots logged as written by unknown handles
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        # set by the FUSE layer: tells the kernel that these staged paths changed on disk
        self.paths_changed: Callable[[list[str]], None] = lambda paths: None

    def close(self) -> None:
        self.queue.close()

    # -- what the FUSE layer asks ----------------------------------------------------

    def check_mutable(self, rel: str) -> None:
        """Raise Frozen/Busy if ``rel`` is, lies in, or contains imported or importing data."""
        rel = rel.strip("/")
        root = _overlapping(rel, self._frozen_roots)
        if root is not None:
            raise Frozen(f"{rel}: {root} was imported in place and must not change")
        root = _overlapping(rel, self._importing)
        if root is not None:
            raise Busy(f"{rel}: {root} is being imported")

    def opened(self, rel: str) -> None:
        key = tracking_key(rel)
        if key is not None:
            self.tracker.opened(key)

    def released(self, rel: str) -> None:
        key = tracking_key(rel)
        if key is not None:
            self.tracker.released(key, trio.current_time())
            self._poke()

    def changed(self, rel: str) -> None:
        """A staged file was created, written, renamed, truncated or removed."""
        key = tracking_key(rel)
        if key is not None:
            self.tracker.changed(key, trio.current_time())
            self._poke()

    def commit(self, rel: str, is_dir: bool) -> None:
        """Explicit commit (or retry) of the fileset ``rel`` belongs to or is the root of."""
        key = fileset_at(rel, is_dir)
        if key is None:
            raise UsageError(f"{rel} is not part of a fileset")
        if not self.tracker.commit(key, trio.current_time()):
            raise Busy(f"{key.root} still has open files")
        self._explicit.add(key)
        self._poke()

    async def state(self, rel: str, is_dir: bool) -> FilesetState | None:
        key = fileset_at(rel, is_dir)
        if key is None:
            return None
        if key.root in self._importing:
            job = await trio.to_thread.run_sync(self.queue.latest_for, key.root)
            return FilesetState("importing", job_id=job.id if job else None)
        if self.tracker.is_open(key):
            return FilesetState("open")
        if self.tracker.pending(key):
            return FilesetState("settling")
        job = await trio.to_thread.run_sync(self.queue.latest_for, key.root)
        if job is None:
            return FilesetState("staged")
        if job.state == "imported" and key.root not in self._frozen_roots:
            return FilesetState("staged")  # an rm-mode import was removed; this is new data
        return FilesetState(job.state, job.error, job.fileset_id, job.id)

    # -- the loop --------------------------------------------------------------------

    def _poke(self) -> None:
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for job in await trio.to_thread.run_sync(self.queue.in_state, "queued"):
                nursery.start_soon(self._run_job, job.id)
            unsettled = await trio.to_thread.run_sync(self.unsettled)
            for key in unsettled:
                self.tracker.changed(key, trio.current_time())
            if unsettled:
                log.info("found %d staged filesets to settle and import", len(unsettled))
            task_status.started()
            while True:
                deadline = self.tracker.next_deadline()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                for key in self.tracker.pop_due(trio.current_time()):
                    nursery.start_soon(self._close, key)

    async def _close(self, key: FilesetKey) -> None:
        explicit = key in self._explicit
        self._explicit.discard(key)
        if key.root in self._frozen_roots or key.root in self._importing:
            return
        manifest = await trio.to_thread.run_sync(self.manifest, key)
        if not manifest:
            return
        if await trio.to_thread.run_sync(self._still_written, key, manifest):
            if explicit:
                self._explicit.add(key)
            self._settle_again(key)
            return
        latest = await trio.to_thread.run_sync(self.queue.latest_for, key.root)
        if latest is not None and same_files(latest.manifest, manifest):
            if latest.state == "queued":
                return  # already waiting
            if latest.state == "failed" and not explicit:
                return  # unchanged since it failed: wait for a fix or an explicit retry
        job = await trio.to_thread.run_sync(self.queue.enqueue, key, self.transfer, manifest)
        log.info("fileset %s closed: queued as job %d (%d files)", key.root, job.id, len(manifest))
        assert self._nursery is not None
        self._nursery.start_soon(self._run_job, job.id)

    def manifest(self, key: FilesetKey) -> Manifest:
        """The files of a fileset as they are now: path -> (size, mtime_ns)."""
        root = self.staging / key.root
        found: Manifest = {}
        try:
            if not key.is_dir:
                st = os.lstat(root)
                if os.path.isfile(root) and not os.path.islink(root):
                    found[key.root] = (st.st_size, st.st_mtime_ns)
                return found
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if is_ignored_name(name) or os.path.islink(path):
                        continue
                    st = os.lstat(path)
                    found[os.path.relpath(path, self.staging)] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return {}
        return found

    async def _run_job(self, job_id: int) -> None:
        async with self._limiter:
            job = await trio.to_thread.run_sync(self.queue.job, job_id)
            if job.state != "queued":
                return
            key = job.key
            if self.tracker.is_open(key) or self.tracker.pending(key):
                await trio.to_thread.run_sync(self.queue.supersede, job.id)
                return  # it changed after it was queued: the next close queues it again
            current = await trio.to_thread.run_sync(self.manifest, key)
            if not same_files(current, job.manifest):
                await trio.to_thread.run_sync(self.queue.supersede, job.id)
                self._settle_again(key)
                return
            self._importing.add(key.root)  # no new handle from here on (EBUSY)
            try:
                if await trio.to_thread.run_sync(self._still_written, key, current):
                    await trio.to_thread.run_sync(self.queue.supersede, job.id)
                    self._settle_again(key)
                    return
                outcome = await trio.to_thread.run_sync(self._import_job, job)
            finally:
                self._importing.discard(key.root)
            self._after(job, outcome)

    def _settle_again(self, key: FilesetKey) -> None:
        self.tracker.changed(key, trio.current_time())
        self._poke()

    def _still_written(self, key: FilesetKey, manifest: Manifest) -> bool:
        """Is a file of the fileset open for writing through a handle the tracker does
        not count (opened before a daemon restart: see ingest/writers.py)?"""
        busy = next((p for p in manifest if open_for_writing(self.staging / p)), None)
        if busy is None:
            self._unknown_writers.discard(key.root)
            return False
        if key.root not in self._unknown_writers:  # once per fileset, not per settle time
            self._unknown_writers.add(key.root)
            log.warning(
                "%s is still open for writing by a process the mount does not know "
                "(opened before the daemon restarted?); importing once it is closed",
                busy,
            )
        return True

    def _import_job(self, job: Job) -> tuple[int | None, list[str], str | None]:
        """Runs in a worker thread: the import itself. Returns (fileset, removed, error)."""
        key = job.key
        self.queue.start(job.id)
        self._remove_report(key)
        removed: list[str] = []
        done = [0, time.monotonic()]

        def on_bytes(n: int) -> None:
            done[0] += n
            if time.monotonic() - done[1] >= PROGRESS_EVERY:
                done[1] = time.monotonic()
                self.queue.progress(job.id, done[0])

        def on_removed(paths: list[Path]) -> None:
            removed.extend(os.path.relpath(p, self.staging) for p in paths)

        try:
            owner, group = self.importer.resolve_identity(key.user, key.group)
            include = {self.staging / p for p in job.manifest}
            plan = plan_fileset(self.staging / key.root, include=lambda p: p in include)
            hooks = ImportHooks(
                on_prefix=lambda prefix: self.queue.set_prefix(job.id, prefix),
                on_handoff=lambda: self.queue.hand_off(job.id),
                on_bytes=on_bytes,
                on_commit=self.queue.commit_statements(job),
                on_removed=on_removed,
            )
            fileset = self.importer.import_fileset(
                plan, owner, group, job.transfer, Target(key.project, key.dataset), hooks
            )
        except OmerofsError as exc:
            self.queue.fail(job.id, str(exc))
            self._write_report(job, str(exc))
            log.error("ingest job %d (%s) failed: %s", job.id, key.root, exc)
            return None, [], str(exc)
        except Exception as exc:  # a bug: still reported, files still untouched
            log.exception("ingest job %d (%s) crashed", job.id, key.root)
            message = f"internal error: {exc!r}"
            self.queue.fail(job.id, message)
            self._write_report(job, message)
            return None, [], message
        if removed:
            self.queue.mark_removed(removed)
        log.info(
            "ingest job %d: %s imported as fileset %d (%s)",
            job.id,
            key.root,
            fileset.id,
            job.transfer,
        )
        return fileset.id, removed, None

    def _after(self, job: Job, outcome: tuple[int | None, list[str], str | None]) -> None:
        fileset_id, removed, error = outcome
        key = job.key
        changed = list(removed) + [key.error_report]
        if fileset_id is not None and not transfer.removes_source(job.transfer):
            self._frozen_roots.add(key.root)
        if fileset_id is not None and key.is_dir and transfer.removes_source(job.transfer):
            changed.append(key.root)
        self.paths_changed(changed)

    # -- reports ---------------------------------------------------------------------

    def _write_report(self, job: Job, error: str) -> None:
        key = job.key
        path = self.staging / key.error_report
        text = (
            f"omerofs could not import {key.root}\n"
            f"when: {datetime.now().isoformat(timespec='seconds')} (job {job.id}, "
            f"attempt {job.attempts + 1})\n"
            f"error: {error}\n\n"
            "Your files were left exactly as they were. Fix the cause, then either change or\n"
            "replace a file (it is retried once it settles) or retry at once with:\n"
            f"  setfattr -n user.omerofs.commit -v 1 '{key.name}'\n"
            "State: getfattr -d -m user.omerofs FILE, or ask an admin for `omerofs status`.\n"
        )
        try:
            tmp = path.with_name("." + path.name + ".new")
            tmp.write_text(text)
            st = os.stat(path.parent)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write error report %s: %s", path, exc)

    def _remove_report(self, key: FilesetKey) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.staging / key.error_report)

    # -- start-up: recovery and reconciliation ---------------------------------------

    def recover(self) -> None:
        """Roll back imports a crash interrupted, finish removals a crash postponed, and
        learn which staged data is imported (read-only from now on)."""
        for job in self.queue.in_state("importing"):
            done = self.catalog.fileset_by_prefix(job.prefix) if job.prefix else None
            if done is not None:  # the catalog committed it (a remote one, before we did)
                self.queue.mark_imported(job, done.id)
                log.warning(
                    "ingest job %d (%s) was imported as fileset %d before a restart",
                    job.id,
                    job.key.root,
                    done.id,
                )
                continue
            if job.handed_off:  # the server may finish or have failed it: never run it twice
                problem = (
                    f"interrupted while the OMERO server imported it (template {job.prefix}); "
                    "check whether it arrived, then retry with setfattr -n "
                    "user.omerofs.commit -v 1 if it did not"
                )
                self.queue.fail(job.id, problem)
                self._write_report(job, problem)
                log.error("ingest job %d (%s): %s", job.id, job.key.root, problem)
                continue
            if job.prefix:
                self.importer.discard(job.prefix)
            self.queue.requeue(job.id)
            log.warning(
                "ingest job %d (%s) was interrupted; rolled back and queued again",
                job.id,
                job.key.root,
            )
        finished = []
        for path, (job_id, size, _mtime) in self.queue.imported_files().items():
            job = self.queue.job(job_id)
            full = self.staging / path
            if not full.exists():
                finished.append(path)
                continue
            # times may be the kernel's (see same_files): compare sizes
            if transfer.removes_source(job.transfer) and os.lstat(full).st_size == size:
                os.unlink(full)
                finished.append(path)
                log.info("removed %s, imported by job %d before a restart", path, job_id)
                continue
            self._frozen_roots.add(job.key.root)
        if finished:
            self.queue.mark_removed(finished)

    def unsettled(self) -> list[FilesetKey]:
        """Staged filesets that are neither imported nor queued (written while the daemon
        was down, or closed but not yet queued when it died): they settle again."""
        keys: set[FilesetKey] = set()
        for dirpath, dirnames, filenames in os.walk(self.staging):
            dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.staging)
                key = fileset_of(rel)
                if key is not None and key.root not in self._frozen_roots:
                    keys.add(key)
        result = []
        for key in sorted(keys, key=lambda k: k.root):
            latest = self.queue.latest_for(key.root)
            if (
                latest is not None
                and latest.state in ("queued", "failed")
                and same_files(latest.manifest, self.manifest(key))
            ):
                continue
            result.append(key)
        return result


def _overlapping(rel: str, roots: SortedSet) -> str | None:
    """A root in ``roots`` that is ``rel``, one of its parents, or below it."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if "/".join(parts[:i]) in roots:
            return "/".join(parts[:i])
    for root in roots.irange(minimum=rel + "/", maximum=rel + "/\U0010ffff"):
        return root
    return None


def same_files(a: Manifest, b: Manifest) -> bool:
    """Same names and sizes. Modification times are not compared: with the writeback
    cache the kernel rewrites them after the data, and every data change through the
    mount is seen by the tracker anyway."""
    return a.keys() == b.keys() and all(a[p][0] == b[p][0] for p in a)
