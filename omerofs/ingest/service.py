"""The ingest pipeline: close tracking -> checks -> queue -> import -> report, and crash
recovery.

The FUSE layer tells the service what happens to staged paths (open, release, change,
commit) and asks it whether a path may still change. The service decides when a fileset
is closed (settle times, commit-only areas, commit markers), whether it is all there
(a failed last write, a truncated file, parts its main file names: held as
``incomplete``), whether it was imported before (duplicates), persists a job, imports it
off the trio loop with bounded concurrency, retries passing failures with backoff, and
reports the outcome where the user looks: an error report in the mount (and xattrs with
``--xattrs``), ``omerofs status``, and the log. After an ``*_rm`` import the names stay
for the linger time, so a writer that comes back finds its directory and its file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from sortedcontainers import SortedSet

from omerofs.catalog.protocol import Fileset, FilesetWithWarning
from omerofs.config import RepoConfig
from omerofs.errors import Busy, Frozen, OmerofsError, UsageError
from omerofs.imports import transfer
from omerofs.imports.filesets import SourceFileset, plan_fileset
from omerofs.imports.importer import Importer, ImportHooks, Target
from omerofs.imports.writers import open_for_writing
from omerofs.ingest import reports
from omerofs.ingest.duplicates import earlier_copy
from omerofs.ingest.failures import is_outcome_unknown, is_transient
from omerofs.ingest.live import PUBLISH_EVERY, LiveFilesets, LiveState
from omerofs.ingest.paths import (
    FilesetKey,
    commit_target,
    fileset_at,
    fileset_of,
    is_ignored_name,
    tracking_key,
)
from omerofs.ingest.queue import Job, JobQueue, Manifest
from omerofs.ingest.settings import IngestRules
from omerofs.ingest.staged import StagedFilesets
from omerofs.ingest.tracker import CloseTracker
from omerofs.template import sanitize_name

log = logging.getLogger(__name__)
PROGRESS_EVERY = 0.5  # seconds between progress writes to the queue
FOLLOW_UP = "{name}.followup-{n}"  # a run directory's files that came after its import


@dataclass(frozen=True)
class FilesetState:
    # open, settling, waiting (for a commit), staged, queued, importing, imported, failed,
    # incomplete, retrying, duplicate
    state: str
    error: str | None = None
    fileset_id: int | None = None
    job_id: int | None = None
    warning: str | None = None  # imported, with an error reported after the images landed


@dataclass
class Linger:
    key: FilesetKey
    deadline: float  # trio clock
    files: dict[str, int]  # staged path -> the size it had when imported (or compared)


class IngestService:
    def __init__(
        self,
        config: RepoConfig,
        importer: Importer,
        transfer_mode: str,
        settle: float,
        concurrency: int = 2,
        rules: IngestRules | None = None,
    ) -> None:
        transfer.base_mode(transfer_mode)
        self.config = config
        self.rules = rules or config.ingest_rules
        self.staging = config.staging_dir
        self.catalog = importer.catalog
        self.queue = JobQueue(config.catalog_path)
        self.live = LiveFilesets(config.catalog_path)  # open/settling/waiting, for status
        self._live_dirty: set[FilesetKey] = set()
        self._live_changed = trio.Event()
        self.importer = importer
        self.transfer = transfer_mode
        self.tracker = CloseTracker(settle, self.rules.run_settle)
        self._limiter = trio.CapacityLimiter(max(1, concurrency))
        self._frozen: SortedSet = SortedSet()  # imported in place (non-rm): never change
        self._lingering: SortedSet = SortedSet()  # imported (rm), names kept a while
        self._lingers: dict[str, Linger] = {}  # fileset root -> its lingering names
        self._recovered_lingers: list[tuple[FilesetKey, str, int, float]] = []
        self._importing: SortedSet = SortedSet()  # files (and roots) being imported
        self._importing_roots: set[str] = set()
        self._explicit: set[FilesetKey] = set()
        self._waiting: set[FilesetKey] = set()  # commit-only: closed, waiting for a commit
        self._failed_writes: dict[str, str] = {}  # staged file -> why its last write failed
        self._open_markers: Counter[str] = Counter()  # commit markers still being written
        self._deferred: set[FilesetKey] = set()  # closed while an overlapping import ran
        # interrupted imports the catalog could not tell about at start-up (an outage)
        self._recovering: dict[int, Job] = {}
        self.staged = StagedFilesets(
            self.staging, self._frozen, self._lingering, self._failed_writes
        )
        self._unknown_writers: set[str] = set()  # roots logged as written by unknown handles
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        # set by the FUSE layer: tells the kernel that these staged paths changed on disk
        self.paths_changed: Callable[[list[str]], None] = lambda paths: None

    def close(self) -> None:
        self.live.close()
        self.queue.close()

    # -- what the FUSE layer asks ----------------------------------------------------

    def check_mutable(self, rel: str, removing: bool = False) -> None:
        """Raise Frozen/Busy if ``rel`` is, lies in, or contains imported or importing
        data. Lingering names of an ``*_rm`` import may be removed (``removing``)."""
        rel = rel.strip("/")
        root = _overlapping(rel, self._frozen)
        if root is not None:
            raise Frozen(f"{rel}: {root} was imported in place and must not change")
        root = _overlapping(rel, self._importing)
        if root is not None:
            raise Busy(f"{rel}: {root} is being imported")
        if not removing:
            root = _overlapping(rel, self._lingering)
            if root is not None:
                raise Frozen(f"{rel}: {root} was imported and is removed soon")

    def is_lingering(self, rel: str) -> bool:
        return rel.strip("/") in self._lingering

    async def reopen_imported(self, rel: str, truncate: bool) -> None:
        """A writer reopens a file that was imported (``*_rm``) while its name lingers:
        it gets a file of its own (with ``ln_rm`` the name still shares its inode with the
        ManagedRepository copy, which must never change), and what it writes becomes a
        new import; the earlier one keeps what it had."""
        rel = rel.strip("/")
        writer_dir = self.staging / rel.split("/", 1)[0]
        await trio.to_thread.run_sync(self._copy_up, self.staging / rel, writer_dir, truncate)
        self._lingering.discard(rel)
        for linger in self._lingers.values():
            linger.files.pop(rel, None)
        await trio.to_thread.run_sync(self.queue.mark_removed, [rel])
        log.warning(
            "%s was opened for writing again after its import; it continues as a new "
            "file and is imported again when closed (the earlier import keeps what it had)",
            rel,
        )

    @staticmethod
    def _copy_up(path: Path, writer_dir: Path, truncate: bool) -> None:
        """The copy is the writer's (the owner of ``staging/<user>``) and owner-writable
        on disk: the imported inode it replaces may be sealed (root's, 0444), and a mode
        copied from it would make the writer's own new file read-only to them."""
        st = os.lstat(path)
        writer = os.lstat(writer_dir)
        mode = stat.S_IMODE(st.st_mode) & 0o777 | stat.S_IWUSR
        tmp = path.with_name(f".{path.name}.omerofs-reopened")
        if truncate:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            os.close(fd)
        else:
            shutil.copyfile(path, tmp)
        os.chmod(tmp, mode)
        os.chown(tmp, writer.st_uid, writer.st_gid)
        os.replace(tmp, path)

    async def dropped(self, rel: str) -> None:
        """A lingering name was removed by its user (it was imported: nothing lost)."""
        rel = rel.strip("/")
        if rel in self._lingering:
            self._lingering.discard(rel)
            await trio.to_thread.run_sync(self.queue.mark_removed, [rel])

    def opened(self, rel: str) -> None:
        if commit_target(rel) is not None:
            self._open_markers[rel] += 1  # taken when its writer closes it
        key = tracking_key(rel)
        if key is not None:
            self.tracker.opened(key)
            self._waiting.discard(key)
            self._live_poke(key)

    def released(self, rel: str, write_error: int = 0) -> None:
        """A writable handle was closed; ``write_error`` is the errno a write met."""
        if write_error:
            self._failed_writes[rel] = os.strerror(write_error)
        else:
            self._failed_writes.pop(rel, None)
        if self._open_markers[rel] > 0:
            self._open_markers[rel] -= 1
            if not self._open_markers[rel]:
                del self._open_markers[rel]
                if self._nursery is not None:
                    self._spawn(self._marker_written, rel)
        key = tracking_key(rel)
        if key is not None:
            self.tracker.released(key, trio.current_time())
            if key in self._explicit:  # committed while open: closes at its last release
                self.tracker.commit(key, trio.current_time())
            self._poke()
            self._live_poke(key)

    def changed(self, rel: str) -> None:
        """A staged file was created, written, renamed, truncated or removed."""
        key = tracking_key(rel)
        if key is not None:
            self._waiting.discard(key)
            self.tracker.changed(key, trio.current_time())
            self._poke()
            self._live_poke(key)
        marker = commit_target(rel) is not None and not self._open_markers[rel]
        if marker and self._nursery is not None:  # (renamed into place, or made by mknod)
            self._spawn(self._marker_written, rel)

    async def commit(self, rel: str, is_dir: bool) -> None:
        """Explicit commit (or retry) of the fileset ``rel`` belongs to or is the root of;
        for another directory (a Dataset's), of every fileset in it."""
        key = fileset_at(rel, is_dir)
        if key is not None:
            self._commit_key(key)
            return
        keys = await trio.to_thread.run_sync(self.staged.keys_in, rel) if is_dir else []
        if not keys:
            raise UsageError(f"{rel} is not part of a fileset")
        busy = [k.root for k in keys if self.tracker.is_open(k)]
        if busy:
            raise Busy(f"{busy[0]} still has open files")
        for k in keys:
            self._commit_key(k)

    def _commit_key(self, key: FilesetKey) -> None:
        if not self.tracker.commit(key, trio.current_time()):
            raise Busy(f"{key.root} still has open files")
        self._explicit.add(key)
        self._waiting.discard(key)
        self._poke()
        self._live_poke(key)

    async def _marker_written(self, rel: str) -> None:
        """``X.done`` or ``.omerofs-commit`` appeared: commit what it names (once the
        marker's own writer has closed it, and the fileset's writers theirs)."""
        target = commit_target(rel)
        assert target is not None
        is_dir = await trio.to_thread.run_sync(os.path.isdir, self.staging / target)
        exists = await trio.to_thread.run_sync(os.path.lexists, self.staging / target)
        if not exists:
            return  # X.done before X: X's close finds the marker
        key = fileset_at(target, is_dir)
        keys = (
            [key] if key is not None else await trio.to_thread.run_sync(self.staged.keys_in, target)
        )
        for k in keys:
            self._explicit.add(k)
            self._waiting.discard(k)
            self.tracker.commit(k, trio.current_time())  # refused while open: closes on release
        if key is None and keys:  # a directory-wide marker is used up at once
            with contextlib.suppress(OSError):
                await trio.to_thread.run_sync(os.unlink, self.staging / rel)
        self._poke()

    async def state(self, rel: str, is_dir: bool) -> FilesetState | None:
        key = fileset_at(rel, is_dir)
        if key is None:
            return None
        root = self.staged.group_root.get(key.root, key.root)
        if root in self._importing_roots:
            job = await trio.to_thread.run_sync(self.queue.latest_for, root)
            return FilesetState("importing", job_id=job.id if job else None)
        if self.tracker.is_open(key):
            return FilesetState("open")
        if self.tracker.pending(key):
            return FilesetState("settling")
        if key in self._waiting:
            return FilesetState("waiting", "waiting for a commit (commit-only)")
        job = await trio.to_thread.run_sync(self.queue.latest_for, root)
        if job is None or job.state in ("superseded", "gone"):
            return FilesetState("staged")
        rel = rel.strip("/")
        if job.state == "imported" and not (
            _overlapping(rel, self._frozen) or _overlapping(rel, self._lingering)
        ):
            return FilesetState("staged")  # new data where an earlier import was
        return FilesetState(job.state, job.error, job.fileset_id, job.id, job.warning)

    # -- the loop --------------------------------------------------------------------

    def _poke(self) -> None:
        self._wakeup.set()

    def _live_poke(self, key: FilesetKey | None = None) -> None:
        if key is not None:
            self._live_dirty.add(key)
        self._live_changed.set()

    def _live_states(self) -> dict[FilesetKey, LiveState]:
        """Open, settling (with its deadline as unix time) and waiting filesets now."""
        now, wall = trio.current_time(), time.time()
        states: dict[FilesetKey, LiveState] = {
            key: (state, None if deadline is None else wall + max(0.0, deadline - now))
            for key, (state, deadline) in self.tracker.live().items()
        }
        for key in self._waiting:
            states.setdefault(key, ("waiting", None))
        return states

    async def _publish_live(self) -> None:
        """Keep ``ingest_live`` current for ``omerofs status``: after a change, and every
        PUBLISH_EVERY s while a handle is open (with kernel passthrough the daemon never
        sees the writes themselves). A failing write is logged and tried again."""
        await trio.to_thread.run_sync(self.live.start)
        while True:
            states = self._live_states()
            idle = not any(state == "open" for state, _ in states.values())
            if idle and not self.live.pending:
                await self._live_changed.wait()
                states = self._live_states()
            self._live_changed = trio.Event()
            dirty, self._live_dirty = self._live_dirty, set()
            try:
                await trio.to_thread.run_sync(
                    self.live.publish, states, dirty, self.staged.manifest
                )
            except Exception:
                log.exception("could not publish the live filesets for omerofs status")
                self._live_dirty |= dirty
            await trio.sleep(PUBLISH_EVERY)

    def _spawn(self, task: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._guarded, task, *args)

    @staticmethod
    async def _guarded(task: Callable[..., Awaitable[None]], *args: object) -> None:
        """One fileset's trouble (a full disk under the queue, a bug) is logged, never
        the daemon's end: the other filesets and the mount go on."""
        try:
            await task(*args)
        except Exception:
            log.exception("ingest task %s%r failed", task.__name__, args)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            now = trio.current_time()
            for key, path, size, wall_deadline in self._recovered_lingers:
                self._linger(key, {path: size}, now + max(0.0, wall_deadline - time.time()))
            self._recovered_lingers.clear()
            for job in await trio.to_thread.run_sync(self.queue.in_state, "queued"):
                self._spawn(self._run_job, job.id)
            for job in await trio.to_thread.run_sync(self.queue.in_state, "retrying"):
                self._spawn(self._retry_at, job.id, job.next_try or 0.0)
            if self._recovering:
                self._spawn(self._recover_later)
            self._spawn(self._publish_live)
            unsettled = await trio.to_thread.run_sync(self.unsettled)
            for key in unsettled:
                self.tracker.changed(key, trio.current_time())
            if unsettled:
                log.info("found %d staged filesets to settle and import", len(unsettled))
            task_status.started()
            while True:
                deadlines = [self.tracker.next_deadline()]
                deadlines += [linger.deadline for linger in self._lingers.values()]
                deadline = min((d for d in deadlines if d is not None), default=math.inf)
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                now = trio.current_time()
                for key in self.tracker.pop_due(now):
                    self._spawn(self._close, key)
                    self._live_poke()
                for root in [r for r, linger in self._lingers.items() if linger.deadline <= now]:
                    self._spawn(self._end_linger, self._lingers.pop(root))

    async def _close(self, key: FilesetKey) -> None:
        """One fileset's close; whatever goes wrong is logged, never the daemon's end."""
        try:
            await self._close_unguarded(key)
        except Exception as exc:
            log.exception("closing %s failed", key.root)
            if is_transient(exc):  # e.g. the catalog is down: try again later
                self.tracker.changed(key, trio.current_time() + self.rules.retry_initial)
                self._poke()

    async def _close_unguarded(self, key: FilesetKey) -> None:
        explicit = key in self._explicit
        self._explicit.discard(key)
        closing = await trio.to_thread.run_sync(self.staged.closing, key)
        if closing is None:
            return
        key = closing.key
        explicit = explicit or key in self._explicit
        self._explicit.discard(key)
        manifest = closing.manifest
        if key.root in self._importing_roots:
            self._deferred.add(key)  # looked at again once that import is done
            return
        if not manifest:
            self.paths_changed(await trio.to_thread.run_sync(self._gone, key))
            return
        if self._members_busy(key, manifest):
            if explicit:
                self._explicit.add(key)
            return  # a member still open or settling: its own close comes back here
        if await trio.to_thread.run_sync(self._still_written, key, manifest):
            if explicit:
                self._explicit.add(key)
            self._settle_again(key)
            return
        explicit = explicit or await trio.to_thread.run_sync(self.staged.has_marker, key)
        latest = await trio.to_thread.run_sync(self.queue.latest_for, key.root)
        unchanged = latest is not None and same_files(latest.manifest, manifest)
        if unchanged and latest is not None:
            if latest.state == "queued" or (latest.state == "retrying" and not explicit):
                return  # already waiting (a commit retries a retrying job at once)
            if latest.state in ("failed", "duplicate") and not explicit:
                return  # unchanged since: wait for a fix or an explicit retry
        if not explicit and await trio.to_thread.run_sync(self.staged.commit_only, key, self.rules):
            if not (unchanged and latest is not None and latest.state == "waiting"):
                await trio.to_thread.run_sync(
                    self.queue.wait_for_commit, key, self.transfer, manifest
                )
                log.info("%s closed; waiting for a commit (commit-only)", key.root)
            self._waiting.add(key)
            self._live_poke(key)
            return
        self._waiting.discard(key)
        if not explicit:
            reason = await trio.to_thread.run_sync(self.staged.hold_reason, closing)
            if reason is not None:
                if (
                    latest is None
                    or latest.state != "incomplete"
                    or latest.error != reason
                    or (not same_files(latest.manifest, manifest))
                ):
                    self.paths_changed(
                        await trio.to_thread.run_sync(self._hold, key, manifest, reason)
                    )
                return
            if await trio.to_thread.run_sync(self._skip_duplicate, key, manifest):
                self.paths_changed(await trio.to_thread.run_sync(self.staged.use_up_markers, key))
                if transfer.removes_source(self.transfer):  # they go as the import's went
                    sizes = {p: size for p, (size, _) in manifest.items()}
                    self._linger(key, sizes, trio.current_time() + self.rules.linger)
                return
        job = await trio.to_thread.run_sync(self.queue.enqueue, key, self.transfer, manifest)
        self.paths_changed(await trio.to_thread.run_sync(self.staged.use_up_markers, key))
        self.paths_changed(
            await trio.to_thread.run_sync(self.staged.drop_member_reports, key, manifest)
        )
        log.info("fileset %s closed: queued as job %d (%d files)", key.root, job.id, len(manifest))
        self._spawn(self._run_job, job.id)

    def _members_busy(self, key: FilesetKey, manifest: Manifest) -> bool:
        if key.is_dir:
            return self.tracker.is_open(key) or self.tracker.pending(key)
        for path in manifest:
            member = fileset_of(path)
            if member is not None and (
                self.tracker.is_open(member) or self.tracker.pending(member)
            ):
                return True
        return False

    def _hold(self, key: FilesetKey, manifest: Manifest, reason: str) -> list[str]:
        job = self.queue.hold(key, self.transfer, manifest, reason)
        self._write_report(job, reason, kind="incomplete")
        log.warning("fileset %s held as incomplete (job %d): %s", key.root, job.id, reason)
        return [key.error_report, *self.staged.drop_member_reports(key, manifest)]

    def manifest(self, key: FilesetKey) -> Manifest:
        """The files of a fileset as they are now: path -> (size, mtime_ns)."""
        return self.staged.manifest(key)

    def _gone(self, key: FilesetKey) -> list[str]:
        """Its files were removed: a failure or hold of it is no longer a problem."""
        ids = self.queue.mark_gone(key.root)
        if not ids:
            return []
        self._remove_report(key)
        log.info("fileset %s was removed; job(s) %s no longer shown", key.root, ids)
        return [key.error_report]

    def _skip_duplicate(self, key: FilesetKey, manifest: Manifest) -> bool:
        """The same content imported before from the same paths by the same user: under
        the "link" and "skip" policies it is not imported again (duplicates.py)."""
        if self.rules.duplicates == "import":
            return False
        job = earlier_copy(self.queue, self.catalog, self.staging, key, manifest)
        if job is None:
            return False
        linked = self.rules.duplicates == "link"
        dup = self.queue.record_duplicate(key, self.transfer, manifest, job, linked)
        log.info(
            "fileset %s is the same content as job %d (fileset %s): not imported again "
            "(duplicates = %s; job %d)",
            key.root,
            job.id,
            job.fileset_id,
            self.rules.duplicates,
            dup.id,
        )
        return True

    # -- importing -------------------------------------------------------------------

    async def _run_job(self, job_id: int) -> None:
        async with self._limiter:
            job = await trio.to_thread.run_sync(self.queue.job, job_id)
            if job.state != "queued":
                return
            key = job.key
            if self._members_busy(key, job.manifest):
                await trio.to_thread.run_sync(self.queue.supersede, job.id)
                return  # it changed after it was queued: the next close queues it again
            current = await trio.to_thread.run_sync(self.manifest, key)
            if not same_files(current, job.manifest):
                await trio.to_thread.run_sync(self.queue.supersede, job.id)
                if current:
                    self._settle_again(key)
                else:
                    self.paths_changed(await trio.to_thread.run_sync(self._gone, key))
                return
            busy = [key.root, *job.manifest]
            self._importing.update(busy)  # no new handle on these from here on (EBUSY)
            self._importing_roots.add(key.root)
            try:
                if await trio.to_thread.run_sync(self._still_written, key, current):
                    await trio.to_thread.run_sync(self.queue.supersede, job.id)
                    self._settle_again(key)
                    return
                outcome = await trio.to_thread.run_sync(self._import_job, job)
            finally:
                self._importing.difference_update(busy)
                self._importing_roots.discard(key.root)
                for waiting in [k for k in self._deferred]:
                    self._deferred.discard(waiting)
                    self._settle_again(waiting)
            await self._after(job, outcome)

    async def _retry_at(self, job_id: int, when: float) -> None:
        """A passing failure: try again at ``when`` (unix time, persisted in the queue)."""
        await trio.sleep(max(0.0, when - time.time()))
        job = await trio.to_thread.run_sync(self.queue.job, job_id)
        if job.state != "retrying":
            return  # changed, committed or removed meanwhile
        await trio.to_thread.run_sync(self.queue.requeue, job_id)
        await self._run_job(job_id)

    def _settle_again(self, key: FilesetKey) -> None:
        self.tracker.changed(key, trio.current_time())
        self._poke()

    def _still_written(self, key: FilesetKey, manifest: Manifest) -> bool:
        """Is a file of the fileset open for writing through a handle the tracker does
        not count (opened before a daemon restart: see imports/writers.py)?"""
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

    def _plan(self, job: Job) -> SourceFileset:
        """The fileset's files, main file first; a run directory imported before gets its
        later files as a clearly named follow-up (``run2.followup-1/...``)."""
        key = job.key
        include = {self.staging / p for p in job.manifest}
        if not key.is_dir:
            main = self.staging / key.root
            plan = plan_fileset(main)
            others = sorted(p for p in include if p != main)
            extra = tuple(
                dataclasses.replace(
                    plan.main,
                    path=p,
                    rel_name="/".join(sanitize_name(c) for c in p.relative_to(main.parent).parts),
                    client_path=str(p)[1:],
                )
                for p in others
            )
            return SourceFileset(plan.root, plan.files + extra)
        plan = plan_fileset(self.staging / key.root, include=lambda p: p in include)
        earlier = self.queue.imported_count(key.root)
        if not earlier:
            return plan
        top = plan.main.rel_name.split("/", 1)[0]
        renamed = FOLLOW_UP.format(name=top, n=earlier)
        files = tuple(
            dataclasses.replace(f, rel_name=renamed + f.rel_name[len(top) :]) for f in plan.files
        )
        return SourceFileset(plan.root, files)

    def _import_job(self, job: Job) -> tuple[int | None, str | None]:
        """Runs in a worker thread: the import itself. Returns (fileset, error)."""
        key = job.key
        self.queue.start(job.id)
        self._remove_report(key)
        done = [0, time.monotonic()]

        def on_bytes(n: int) -> None:
            done[0] += n
            if time.monotonic() - done[1] >= PROGRESS_EVERY:
                done[1] = time.monotonic()
                self.queue.progress(job.id, done[0])

        try:
            owner, group = self.importer.resolve_identity(key.user, key.group)
            plan = self._plan(job)
            hooks = ImportHooks(
                on_prefix=lambda prefix: self.queue.set_prefix(job.id, prefix),
                on_handoff=lambda: self.queue.hand_off(job.id),
                on_bytes=on_bytes,
                on_commit=self.queue.commit_statements(job),
            )
            # the *_rm removal comes later (_end_linger): the names linger for a writer
            # that comes back instead of vanishing under it
            fileset = self.importer.import_fileset(
                plan,
                owner,
                group,
                job.transfer,
                Target(key.project, key.dataset, key.screen),
                hooks,
                remove_sources=False,
            )
        except Exception as exc:
            if self._committed(job):  # the writer failed after the import's own commit
                return self._imported_despite(job, exc)
            return None, self._failed(job, exc)
        try:
            self._record_hashes(fileset)
        except Exception:  # only duplicate detection misses these: never the import
            log.exception("could not record the hashes of job %d", job.id)
        if isinstance(fileset, FilesetWithWarning) and fileset.warning:
            self._warned(job, fileset)
        else:
            log.info(
                "ingest job %d: %s imported as fileset %d (%s)",
                job.id,
                key.root,
                fileset.id,
                job.transfer,
            )
        return fileset.id, None

    def _committed(self, job: Job) -> bool:
        try:
            return self.queue.job(job.id).state == "imported"
        except Exception:
            log.exception("could not read back ingest job %d", job.id)
            return False

    def _imported_despite(self, job: Job, exc: Exception) -> tuple[int | None, str | None]:
        """The catalog committed the import (with the job: ``on_commit``), then a later
        step failed (an OMERO server gone before the fileset could be read back). It is
        imported: failing or retrying it would import it twice. Kept, with a warning."""
        warning = f"imported, then: {exc}"
        fileset_id = None
        try:
            fileset_id = self.queue.job(job.id).fileset_id
            self.queue.set_warning(job.id, warning)
        except Exception:  # the import stands; the report and the log still say it
            log.exception("could not record the warning of job %d", job.id)
        self._write_report(job, warning, kind="warning", fileset_id=fileset_id)
        log.warning(
            "ingest job %d: %s imported as fileset %s (%s) with a warning: %s",
            job.id,
            job.key.root,
            fileset_id,
            job.transfer,
            warning,
        )
        return fileset_id, None

    def _warned(self, job: Job, fileset: FilesetWithWarning) -> None:
        """Imported, but the server reported an error after the images were saved: the
        job stays ``imported`` (retrying would import it twice); the warning goes to the
        queue, the report beside the fileset and the log."""
        try:
            self.queue.set_warning(job.id, fileset.warning)
        except Exception:  # the import stands; the report and the log still say it
            log.exception("could not record the warning of job %d", job.id)
        self._write_report(job, fileset.warning, kind="warning", fileset_id=fileset.id)
        log.warning(
            "ingest job %d: %s imported as fileset %d (%s) with a warning: %s",
            job.id,
            job.key.root,
            fileset.id,
            job.transfer,
            fileset.warning,
        )

    def _failed(self, job: Job, exc: Exception) -> str:
        key = job.key
        if isinstance(exc, OmerofsError):
            message = str(exc)
        else:  # a bug, or an error nobody wrapped: still reported, files still untouched
            log.exception("ingest job %d (%s) crashed", job.id, key.root)
            message = f"internal error: {exc!r}"
        if is_transient(exc):
            attempts = job.attempts + 1
            delay = self.rules.backoff(attempts)
            when = time.time() + delay
            self.queue.retry_later(job.id, message, when)
            self._write_report(job, message, kind="retrying", next_try=when)
            log.warning(
                "ingest job %d (%s) failed for a passing reason, retried in %.0f s "
                "(attempt %d): %s",
                job.id,
                key.root,
                delay,
                attempts,
                message,
            )
        else:
            self.queue.fail(job.id, message)
            unknown = is_outcome_unknown(exc)  # it may have landed: a person must look
            self._write_report(job, message, kind="unknown" if unknown else "failed")
            log.error(
                "ingest job %d (%s) failed%s: %s",
                job.id,
                key.root,
                " (outcome unknown: not retried; check OMERO, then commit to retry)"
                if unknown
                else "",
                message,
            )
        return message

    def _record_hashes(self, fileset: Fileset) -> None:
        hashes = {}
        for entry in fileset.entries:
            rel = os.path.relpath("/" + entry.client_path, self.staging)
            if not rel.startswith(".."):
                hashes[rel] = entry.hash
        self.queue.set_hashes(hashes)

    async def _after(self, job: Job, outcome: tuple[int | None, str | None]) -> None:
        fileset_id, _ = outcome
        key = job.key
        changed = [key.error_report]
        if fileset_id is None:
            job = await trio.to_thread.run_sync(self.queue.job, job.id)  # SQLite: off the loop
            if job.state == "retrying" and job.next_try is not None:
                self._spawn(self._retry_at, job.id, job.next_try)
        elif transfer.removes_source(job.transfer):
            sizes = {p: size for p, (size, _) in job.manifest.items()}
            self._linger(key, sizes, trio.current_time() + self.rules.linger)
        else:
            self._frozen.update(job.manifest)
        self.paths_changed(changed)

    # -- lingering names of *_rm imports ---------------------------------------------

    def _linger(self, key: FilesetKey, files: dict[str, int], deadline: float) -> None:
        self._lingering.update(files)
        linger = self._lingers.get(key.root)
        if linger is None:
            self._lingers[key.root] = Linger(key, deadline, dict(files))
        else:
            linger.files.update(files)
            linger.deadline = max(linger.deadline, deadline)
        self._poke()

    async def _end_linger(self, linger: Linger) -> None:
        """The linger time passed: remove the imported names (if unchanged) and, for a
        run directory, its empty directories — unless a writer is back in it."""
        key = linger.key
        if self._writer_back(key):
            self._linger(key, linger.files, trio.current_time() + max(self.rules.linger, 0.05))
            return
        removed = await trio.to_thread.run_sync(self._remove_lingering, key, linger.files)
        self._lingering.difference_update(linger.files)
        self.paths_changed(removed)

    def _writer_back(self, key: FilesetKey) -> bool:
        if self.tracker.is_open(key) or self.tracker.pending(key):
            return True
        if key.root in self._importing_roots:
            return True
        return key.is_dir and _overlapping(key.root, self._importing) is not None

    def _remove_lingering(self, key: FilesetKey, files: dict[str, int]) -> list[str]:
        """The importer's removal rule (unchanged sources only; sizes decide, since every
        change through the mount is seen and the kernel may rewrite times), then the
        directories it emptied; a directory that is not empty means a writer is back."""
        sources = {self.staging / rel: (size, None) for rel, size in files.items()}
        removed = self.importer.remove_sources(sources, self.staging / key.root)
        files_removed = [os.path.relpath(p, self.staging) for p in removed.files]
        if files_removed:
            self.queue.mark_removed(files_removed)
        return files_removed + [os.path.relpath(d, self.staging) for d in removed.directories]

    # -- reports ---------------------------------------------------------------------

    def _write_report(
        self,
        job: Job,
        error: str,
        kind: str = "failed",
        next_try: float | None = None,
        fileset_id: int | None = None,
    ) -> None:
        reports.write(self.staging, job, error, kind, next_try, fileset_id)

    def _remove_report(self, key: FilesetKey) -> None:
        reports.remove(self.staging, key)

    # -- start-up: recovery and reconciliation ---------------------------------------

    def recover(self) -> None:
        """Roll back imports a crash interrupted, finish removals a crash postponed, and
        learn which staged data is imported (read-only from now on). An interrupted
        import the catalog cannot be asked about now (an OMERO outage) stays
        ``importing`` and busy, and is settled by a later pass (``_recover_later``)."""
        for job in self.queue.in_state("importing"):
            try:
                self._settle_interrupted(job)
            except Exception as exc:
                self._defer_recovery(job, exc, attempt=1)
        finished = []
        for path, (job_id, size, _mtime) in self.queue.imported_files().items():
            job = self.queue.job(job_id)
            full = self.staging / path
            if not full.exists():
                finished.append(path)
                continue
            # times may be the kernel's (see same_files): compare sizes
            if transfer.removes_source(job.transfer) and os.lstat(full).st_size == size:
                until = job.updated + self.rules.linger
                if until > time.time():
                    self._lingering.add(path)
                    self._recovered_lingers.append((job.key, path, size, until))
                    continue
                os.unlink(full)
                finished.append(path)
                log.info("removed %s, imported by job %d before a restart", path, job_id)
                continue
            if not transfer.removes_source(job.transfer):
                self._frozen.add(path)
        if finished:
            self.queue.mark_removed(finished)
        for job in self.queue.in_state("duplicate"):  # rm mode: their copies go, like imports'
            latest = self.queue.latest_for(job.key.root)
            if latest is None or latest.id != job.id or not transfer.removes_source(job.transfer):
                continue
            current = self.staged.manifest(job.key)
            if current and same_files(current, job.manifest):
                self._lingering.update(current)
                for path, (size, _) in current.items():
                    until = job.updated + self.rules.linger
                    self._recovered_lingers.append((job.key, path, size, until))
        for job in self.queue.in_state("failed", "incomplete", "retrying"):
            hidden = any(is_ignored_name(p) for p in job.key.root.split("/")[1:])
            if hidden or not (self.staging / job.key.root).exists():
                self._gone(job.key)  # clutter an older omerofs tried, or removed meanwhile

    def _settle_interrupted(self, job: Job) -> str:
        """One job a crash left ``importing``: recorded if the catalog has its fileset,
        reported if a remote catalog had taken it over, else rolled back and queued
        again. Returns its new state; raises (``CatalogUnavailable``) with nothing done
        when the catalog cannot tell, so it is never rolled back or run twice on a guess."""
        done = self.catalog.fileset_by_prefix(job.prefix) if job.prefix else None
        if done is not None:  # the catalog committed it (a remote one, before we did)
            self.queue.mark_imported(job, done.id)
            with contextlib.suppress(Exception):  # only duplicate detection needs these
                self._record_hashes(done)
            log.warning(
                "ingest job %d (%s) was imported as fileset %d before a restart",
                job.id,
                job.key.root,
                done.id,
            )
            return "imported"
        if job.handed_off:  # the server may finish or have failed it: never run it twice
            problem = (
                f"interrupted while the OMERO server imported it (template {job.prefix}); "
                "check whether it arrived, then retry with setfattr -n "
                "user.omerofs.commit -v 1 if it did not"
            )
            self.queue.fail(job.id, problem)
            self._write_report(job, problem, kind="unknown")
            log.error("ingest job %d (%s): %s", job.id, job.key.root, problem)
            return "failed"
        if job.prefix:
            self.importer.discard(job.prefix)
        self.queue.requeue(job.id)
        log.warning(
            "ingest job %d (%s) was interrupted; rolled back and queued again",
            job.id,
            job.key.root,
        )
        return "queued"

    def _defer_recovery(self, job: Job, exc: Exception, attempt: int) -> None:
        """Leave an interrupted job as it is (``importing``, its files busy) and ask
        again later: the daemon starts and serves writes meanwhile."""
        if job.id not in self._recovering:
            self._recovering[job.id] = job
            self._importing.update([job.key.root, *job.manifest])
            self._importing_roots.add(job.key.root)
        delay = self.rules.backoff(attempt)
        if is_transient(exc):
            log.warning(
                "ingest job %d (%s) was interrupted by a restart and the catalog cannot "
                "tell yet whether it was imported (%s); it stays as it is, asked again in "
                "%.0f s",
                job.id,
                job.key.root,
                exc,
                delay,
            )
        else:
            log.error(
                "recovery of ingest job %d (%s) failed; it stays as it is, tried again in %.0f s",
                job.id,
                job.key.root,
                delay,
                exc_info=exc,
            )

    async def _recover_later(self) -> None:
        """Settle the interrupted jobs ``recover`` could not, with backoff, while the
        daemon runs; each once (``_settle_interrupted`` leaves ``importing`` behind)."""
        attempt = 1
        while self._recovering:
            await trio.sleep(self.rules.backoff(attempt))
            attempt += 1
            for job_id, job in list(self._recovering.items()):
                try:
                    state = await trio.to_thread.run_sync(self._settle_interrupted, job)
                except Exception as exc:
                    self._defer_recovery(job, exc, attempt)
                    continue
                settled = await trio.to_thread.run_sync(self.queue.job, job_id)
                del self._recovering[job_id]  # busy until here, then read-only or lingering
                self._importing.difference_update([job.key.root, *job.manifest])
                self._importing_roots.discard(job.key.root)
                if state == "imported":
                    await self._after(settled, (settled.fileset_id, None))
                elif state == "queued":
                    self._spawn(self._run_job, job_id)
                else:
                    self.paths_changed([job.key.error_report])
                for waiting in list(self._deferred):
                    self._deferred.discard(waiting)
                    self._settle_again(waiting)

    def unsettled(self) -> list[FilesetKey]:
        """Staged filesets that are neither imported nor queued (written while the daemon
        was down, or closed but not yet queued when it died): they settle again."""
        keys: set[FilesetKey] = set()
        for dirpath, dirnames, filenames in os.walk(self.staging):
            dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.staging)
                key = fileset_of(rel)
                settled = rel in self._frozen or rel in self._lingering
                if key is not None and not settled and rel not in self._importing:
                    keys.add(key)
        result = []
        for key in sorted(keys, key=lambda k: k.root):
            closing = self.staged.closing(key)
            if closing is None:
                continue
            latest = self.queue.latest_for(closing.key.root)
            if (
                latest is not None
                and latest.state in ("queued", "failed", "incomplete", "retrying", "duplicate")
                and same_files(latest.manifest, closing.manifest)
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
