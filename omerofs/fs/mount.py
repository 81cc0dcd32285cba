"""Mount wiring: mountpoint checks, the pyfuse3 session, signals, the catalog follower.

Unmount happens only on a clean exit (SIGTERM/SIGINT or ``omerofs umount``); a crashed
daemon leaves a stale mount that the next ``omerofs mount`` detects and clears. Every
daemon holds its lock in ``REPO/run/`` (daemon_lock.py), makes the repository's private
directories private again (ownership.py), tells systemd when it is up (sdnotify.py) and
can serve Prometheus metrics (metrics.py).
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from omerofs import sdnotify
from omerofs.address import METRICS_ENV
from omerofs.backend import open_backend
from omerofs.catalog.protocol import Catalog, Fileset, Snapshot
from omerofs.config import RepoConfig
from omerofs.daemon_lock import DaemonLock, check_free
from omerofs.errors import CatalogUnavailable, MountError, UsageError
from omerofs.fs.operations import ViewOperations
from omerofs.fs.passthrough import Backings
from omerofs.fs.view import FilesetLoader, Invalidation, RepositoryView, fetch_all
from omerofs.identity import Viewer, fully_visible_groups
from omerofs.logs import DAEMON_LOG_ENV
from omerofs.metrics import metrics_server
from omerofs.ownership import private_dirs, secure_dir
from omerofs.template import expand_root_depth

if TYPE_CHECKING:
    from omerofs.fs.ingest_ops import IngestOperations

log = logging.getLogger(__name__)


# -- mountpoints -------------------------------------------------------------------------


def mount_table() -> dict[str, tuple[str, str]]:
    """Mountpoint -> (fstype, "major:minor") from /proc/self/mountinfo (no FS access)."""
    table = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            table[point] = (fields[sep + 1], fields[2])
    return table


def is_mounted(mountpoint: Path) -> bool:
    return str(Path(os.path.abspath(mountpoint))) in mount_table()


def prepare_mountpoint(mountpoint: Path) -> Path:
    """Check the mountpoint is an empty directory; clear a stale mount of a dead daemon."""
    mountpoint = Path(os.path.abspath(mountpoint))
    if is_mounted(mountpoint):
        try:
            os.statvfs(mountpoint)  # statfs always reaches the daemon; stat may be cached
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise MountError(f"{mountpoint}: {exc.strerror}") from None
            fusermount_unmount(mountpoint, lazy=True)
            print(
                f"omerofs: cleared a stale mount at {mountpoint} (its daemon had died)",
                file=sys.stderr,
            )
        else:
            raise MountError(f"{mountpoint} is already mounted")
    if not mountpoint.exists():
        raise MountError(f"mountpoint {mountpoint} does not exist")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if any(mountpoint.iterdir()):
        raise MountError(f"mountpoint {mountpoint} is not empty")
    return mountpoint


def fusermount_unmount(mountpoint: Path, lazy: bool = False) -> None:
    args = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise MountError(f"cannot unmount {mountpoint}: {message}")


def unmount(mountpoint: Path, timeout: float = 10.0) -> None:
    """``omerofs umount``: unmount and wait until the kernel no longer lists it."""
    mountpoint = Path(os.path.abspath(mountpoint))
    if not is_mounted(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted")
    fstype = mount_table()[str(mountpoint)][0]
    if not fstype.startswith("fuse"):
        raise UsageError(f"{mountpoint} is not an omerofs mount ({fstype})")
    fusermount_unmount(mountpoint)
    deadline = time.monotonic() + timeout
    while is_mounted(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_ahead_file(mountpoint: Path) -> Path | None:
    """The sysfs knob of the mount's readahead (its bdi), if mounted."""
    entry = mount_table().get(str(mountpoint))
    return None if entry is None else Path(f"/sys/class/bdi/{entry[1]}/read_ahead_kb")


def set_read_ahead(mountpoint: Path, kib: int) -> None:
    """Raise readahead for the mount's bdi: the 128 KiB default halves streaming reads.
    Only effective once the kernel has processed FUSE_INIT, whose reply caps it again."""
    knob = read_ahead_file(mountpoint)
    if knob is None:
        return
    try:
        knob.write_text(str(kib))
    except OSError as exc:
        log.warning("could not set read_ahead_kb for %s: %s", mountpoint, exc)


async def _tune_after_init(
    mountpoint: Path,
    read_ahead_kb: int,
    backings: Backings,
    describe_xattrs: Callable[[], str] | None = None,
    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """A stat of our own root returns only after FUSE_INIT is done (requests wait for
    it); only then does a raised readahead survive. Abandoned on cancel: a SIGTERM that
    ends the loop before it answered this very stat would otherwise leave trio waiting
    for the thread, and the thread for the loop, for ever (a hung daemon whose mount
    blocks every access); the thread ends with ENOTCONN once the mount is closed."""
    task_status.started()
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    await trio.to_thread.run_sync(set_read_ahead, mountpoint, read_ahead_kb)
    log.info("read_ahead_kb of %s set to %d", mountpoint, read_ahead_kb)
    log.info("kernel passthrough: %s", backings.describe())
    if describe_xattrs is not None:  # the ingest mount: KILLPRIV_V2 is known only now
        log.info("%s", describe_xattrs())
    sdnotify.notify("READY=1", f"STATUS=serving {mountpoint}", f"MAINPID={os.getpid()}")


# -- the daemon --------------------------------------------------------------------------


LOAD_CHUNK = 20_000  # filesets per catalog query when a tree is built
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def fileset_loader(catalog: Catalog, chunk: int = LOAD_CHUNK) -> FilesetLoader:
    """Fetch only what a viewer may see: their own filesets and those of the groups in
    which ``can_see`` lets them see everybody's (all, for admins) — in chunks, so a tree
    of a million filesets never holds all their records at once (docs/performance.md)."""

    def load(viewer: Viewer, snap: Snapshot) -> Iterator[list[Fileset]]:
        levels = {g.id: g.level for g in snap.groups.values()}
        groups = fully_visible_groups(viewer, levels)
        everything = viewer.admin or groups == set(levels)
        after = 0
        while True:
            found = catalog.filesets_for(
                viewer.experimenter_id,
                None if everything else groups,
                snap.max_fileset_id,
                after=after,
                limit=chunk,
            )
            if found:
                yield found
            if len(found) < chunk:
                return
            after = found[-1].id

    return load


def serve_view(
    config: RepoConfig, mountpoint: Path, passthrough: bool = True, metrics: str | None = None
) -> None:
    """Mount the read-only view and serve it until unmounted or signalled."""
    metrics = metrics or os.environ.get(METRICS_ENV)
    with _stop_signals_held():
        mountpoint = prepare_mountpoint(mountpoint)
        with DaemonLock.acquire(config, "view", mountpoint) as lock:
            _serve_view(config, mountpoint, passthrough, metrics, lock)


def _serve_view(
    config: RepoConfig, mountpoint: Path, passthrough: bool, metrics: str | None, lock: DaemonLock
) -> None:
    if config.omero is None:
        _log_changes(secure_dir(config.managed_dir))
    backend = open_backend(config)
    catalog = backend.catalog
    try:
        view = RepositoryView(
            catalog.snapshot_people(), expand_root_depth(config.template), fileset_loader(catalog)
        )
        ops = ViewOperations(view, str(config.managed_dir), config.cache_timeout, passthrough)

        async def follow(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await follow_catalog(view, catalog, config.refresh_interval, ops.lock)

        with metrics_server(metrics, config, "view", mountpoint, view=view) as bound:
            _announce_metrics(lock, bound)
            _serve(ops, mountpoint, {"ro"}, config.read_ahead_kb, [follow], "view")
    finally:
        backend.close()


def serve_ingest(
    config: RepoConfig,
    mountpoint: Path,
    transfer_mode: str,
    settle: float,
    concurrency: int,
    readable_xattrs: bool | None = None,
    passthrough: bool = True,
    metrics: str | None = None,
) -> None:
    """Mount the writable ingest area and serve it until unmounted or signalled. One per
    repository: a second one fails naming the first (its pid and mountpoint)."""
    with _stop_signals_held(), DaemonLock.acquire(config, "ingest", mountpoint) as lock:
        _serve_ingest(
            config,
            prepare_mountpoint(mountpoint),
            transfer_mode,
            settle,
            concurrency,
            readable_xattrs,
            passthrough,
            metrics or os.environ.get(METRICS_ENV),
            lock,
        )


def _serve_ingest(
    config: RepoConfig,
    mountpoint: Path,
    transfer_mode: str,
    settle: float,
    concurrency: int,
    readable_xattrs: bool | None,
    passthrough: bool,
    metrics: str | None,
    lock: DaemonLock,
) -> None:
    from omerofs.fs.ingest_ops import IngestOperations
    from omerofs.imports.writers import ignore_lease_breaks
    from omerofs.ingest.service import IngestService

    for directory in private_dirs(config):
        _log_changes(secure_dir(directory))
    backend = open_backend(config)
    catalog = backend.catalog
    service = IngestService(config, backend.importer, transfer_mode, settle, concurrency)
    ignore_lease_breaks()
    try:
        service.recover()
        ensure_user_dirs(config, catalog)
        ops = IngestOperations(
            service,
            config.staging_dir,
            catalog.is_member,
            readable_xattrs,
            passthrough,
            sealed_uid=_owner_uid(config.managed_dir),
        )

        async def follow_users(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            last = await trio.to_thread.run_sync(catalog.last_event_id)
            while True:
                await trio.sleep(1.0)
                now = await trio.to_thread.run_sync(catalog.last_event_id)
                if now != last:  # someone may have added a user: give them a directory
                    last = now
                    await trio.to_thread.run_sync(ensure_user_dirs, config, catalog)

        tasks = [service.run, follow_users, *_notifier_tasks(config, catalog)]
        with metrics_server(metrics, config, "ingest", mountpoint) as bound:
            _announce_metrics(lock, bound)
            _serve(ops, mountpoint, set(), config.read_ahead_kb, tasks, "ingest")
    finally:
        service.close()
        backend.close()


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold stop signals (SIGTERM, SIGINT, SIGHUP) from here until the loop watches for
    them (_watch_signals unblocks them): one that comes while the daemon starts then
    unmounts it cleanly instead of killing it half-started with its mount left behind.
    Set before any thread starts (the metrics server's), which inherits the mask."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _owner_uid(directory: Path) -> int:
    """Who owns sealed originals (-1: unknown, e.g. a server's repository not mounted)."""
    try:
        return os.stat(directory).st_uid
    except OSError:
        return -1


def _notifier_tasks(config: RepoConfig, catalog: Catalog) -> list:
    """The notifier (omerofs/notify) as one more task, only if ``[notify]`` is set."""
    if not _has_section(config, "notify"):
        return []
    try:
        from omerofs.notify import run_notifier
    except ImportError as exc:
        log.warning("[notify] is configured but notifications are unavailable: %s", exc)
        return []
    return [partial(run_notifier, config, catalog)]


def _has_section(config: RepoConfig, name: str) -> bool:
    import tomllib

    given = getattr(config, name, None)
    if given is not None:
        return bool(given)
    try:
        return name in tomllib.loads((config.root / "omerofs.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _announce_metrics(lock: DaemonLock, bound: tuple[str, int] | None) -> None:
    """Where the metrics are, in the lock file (``omerofs status``, and a port 0 made
    concrete)."""
    if bound is not None:
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        lock.update(metrics=f"{host}:{bound[1]}")


def _log_changes(changes: list[str]) -> None:
    for line in changes:
        log.warning("%s", line)


def ensure_user_dirs(config: RepoConfig, catalog: Catalog) -> None:
    """``staging/<user>/``: owned by the user's uid, mode 0700: only they (and root) write.
    The staging directory itself stays private (ownership.py)."""
    staging = config.staging_dir
    if not staging.is_dir():
        secure_dir(staging)
    snap = catalog.snapshot_people()
    for exp in snap.experimenters.values():
        if exp.id == 0:
            continue
        path = staging / exp.name
        group = snap.groups.get(exp.default_group_id) if exp.default_group_id is not None else None
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.stat()
        gid = group.gid if group else st.st_gid
        if (st.st_uid, st.st_gid) != (exp.uid, gid):
            os.chown(path, exp.uid, gid)
        if st.st_mode & 0o777 != 0o700:
            path.chmod(0o700)


def _serve(
    ops: ViewOperations | IngestOperations,
    mountpoint: Path,
    extra_options: set[str],
    read_ahead_kb: int,
    tasks: list,
    kind: str,
) -> None:
    options = (
        set(pyfuse3.default_options)
        | extra_options
        | {
            "fsname=omerofs",
            f"subtype=omerofs-{kind}",
            "allow_other",
            "default_permissions",
        }
    )
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if ops.backings.wanted:
        pyfuse3.init(ops, str(mountpoint), options, passthrough=True)
    else:
        pyfuse3.init(ops, str(mountpoint), options)
    clean = False
    try:
        log.info("%s mounted at %s (pid %d)", kind, mountpoint, os.getpid())
        describe = getattr(ops, "describe_xattrs", None)
        tune = partial(_tune_after_init, mountpoint, read_ahead_kb, ops.backings, describe)
        trio.run(_main, [tune, *tasks])
        clean = True
    finally:
        pyfuse3.close(unmount=clean)
    log.info("%s at %s unmounted", kind, mountpoint)


async def _main(tasks: list) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals)
        for task in tasks:
            await nursery.start(task)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _watch_signals(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held ones arrive now
        task_status.started()
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            sdnotify.notify("STOPPING=1")
            pyfuse3.terminate()
            return


async def follow_catalog(
    view: RepositoryView, catalog: Catalog, interval: float, lock: trio.Lock
) -> None:
    """Poll the catalog's event log (one indexed query) and apply what changed. While
    the catalog is unavailable (a server restarting) the last known tree is served."""
    down: str | None = None
    while True:
        await trio.sleep(interval)
        async with lock:
            try:
                changes = await trio.to_thread.run_sync(catalog.changes, view.event_id)
                if down is not None:
                    log.info("catalog available again")
                    down = None
                if changes is None:
                    continue
                refetched = {}
                for exp_id, viewer in view.rebuild_targets(changes).items():
                    refetched[exp_id] = await trio.to_thread.run_sync(
                        fetch_all, view.loader, viewer, changes.snapshot
                    )
            except CatalogUnavailable as exc:  # said once per outage, not at every poll
                if down is None:
                    log.warning("%s; serving the last known tree until it is back", exc)
                down = str(exc)
                continue
            except Exception:  # a locked or briefly unreadable catalog: keep serving, retry
                log.exception("reading catalog changes failed; serving the last known tree")
                continue
            inval = view.apply(changes, refetched)
        if inval:
            await trio.to_thread.run_sync(_invalidate, inval)


def _invalidate(inval: Invalidation) -> None:
    """Tell the kernel what changed (from a worker thread: these calls may block)."""
    for parent, name in inval.entries:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name))
    for inode in inval.inodes:
        with contextlib.suppress(OSError):  # the kernel never saw it: nothing to drop
            pyfuse3.invalidate_inode(inode, attr_only=False)


def wait_for_read_ahead(mountpoint: Path, kib: int, deadline: float) -> None:
    """A mount is ready when its readahead is raised (files opened earlier keep 128 KiB);
    where it cannot be raised (not root), mounted is ready."""
    knob = read_ahead_file(mountpoint)
    if knob is None or not os.access(knob, os.W_OK):
        return
    while time.monotonic() < deadline:
        try:
            if int(knob.read_text()) == kib:
                return
        except (OSError, ValueError):
            return
        time.sleep(0.01)


def spawn_daemon(
    config: RepoConfig, mountpoint: Path, args: list[str], timeout: float = 30.0
) -> int:
    """Run ``omerofs ARGS... MOUNTPOINT --foreground`` detached; return its pid once mounted."""
    if args[0] == "ingest":  # names the running one, wherever it is mounted
        check_free(config, "ingest", mountpoint)
    mountpoint = prepare_mountpoint(mountpoint)  # "already mounted" says it best for a view
    check_free(config, "view" if args[0] == "mount" else "ingest", mountpoint)
    config.log_dir.mkdir(exist_ok=True)
    log_path = config.log_dir / f"{args[0]}.log"
    command = [
        sys.executable,
        "-m",
        "omerofs.cli",
        "-r",
        str(config.root),
        *args,
        str(mountpoint),
        "--foreground",
    ]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            env={**os.environ, DAEMON_LOG_ENV: str(log_path)},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(mountpoint):
            wait_for_read_ahead(mountpoint, config.read_ahead_kb, deadline)
            return proc.pid
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise MountError(f"mount daemon exited: {tail[0] if tail else 'see ' + str(log_path)}")
        time.sleep(0.05)
    proc.terminate()
    raise MountError(f"mount did not come up within {timeout:.0f} s (see {log_path})")
