"""``omerofs check`` for an embedded repository: will it work, and is it intact?

Each check is one row (name, result, detail, fix), in the order an admin fixes things:
the config, the catalog file, the originals in ManagedRepository against the catalog,
staging and the repository's private directories, the users' local accounts, the
daemons. ``FAIL`` means something is broken or at risk (the command exits 1); ``WARN``
is worth a look but works (a catalog user without a local account: the mounts show a
bare uid); ``SKIP`` was not run (``--deep`` hashes every original). Nothing here writes:
the catalog is opened read-only, files are only stat()ed and read.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import Fileset
from omerofs.config import RepoConfig
from omerofs.errors import OmerofsError
from omerofs.pids import alive
from omerofs.progress import Progress

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SHOWN = 5  # paths named in one row's detail; the rest are counted
CHUNK = 1 << 20
TMP_PREFIX = ".omerofs-import-"  # an import in progress (backends/local/writer.py)
PRIVATE_MODE = 0o700  # omerofs/ownership.py
# For SHA-1 the catalog's hasher names OMERO's ChecksumAlgorithm "SHA1-160".
SHA1_HASHERS = ("SHA1-160", "SHA1", "sha1")


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # PASS, WARN, FAIL or SKIP
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.result == FAIL

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "result": self.result, "detail": self.detail, "fix": self.fix}


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


# -- config ----------------------------------------------------------------------------------


def config_check(config: RepoConfig) -> Check:
    """omerofs.toml passed its schema (load_config), and [notify] its own."""
    if config.notify:
        try:
            from omerofs.notify import load_notify_settings

            load_notify_settings(config)
        except OmerofsError as exc:
            return Check("config", FAIL, str(exc), "correct [notify] (docs/notifications.md)")
    return Check("config", PASS, f"{config.root / 'omerofs.toml'} matches the schema")


def config_failed(path: Path, error: str) -> Check:
    return Check(
        "config", FAIL, error, f"correct {path} (every key: docs/config.md); nothing else was run"
    )


# -- the catalog file ----------------------------------------------------------------------


def catalog_check(config: RepoConfig) -> Check:
    """SQLite's own integrity check, foreign keys, and the schema version."""
    from omerofs.backends.local.catalog import SCHEMA_VERSION
    from omerofs.catalog.sqlite import Database

    path = config.catalog_path
    fix = (
        f"stop the daemons and restore {path} from a backup (sqlite3 {path.name} .recover "
        "salvages what is readable)"
    )
    if not path.exists():
        return Check("catalog", FAIL, f"{path} does not exist", "restore it from a backup")
    try:
        store = Database(path, "the catalog", readonly=True)
    except OmerofsError as exc:
        return Check("catalog", FAIL, str(exc), fix)
    try:
        db = store.conn
        problems = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            return Check("catalog", FAIL, f"integrity_check: {_listed(problems)}", fix)
        dangling = db.execute("PRAGMA foreign_key_check").fetchall()
        if dangling:
            rows = [f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in dangling]
            return Check(
                "catalog",
                FAIL,
                f"{len(dangling)} row(s) refer to rows that are not there: {_listed(rows)}",
                "remove or correct those rows (a hand edit?), or restore a backup",
            )
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None or str(row[0]) != str(SCHEMA_VERSION):
            return Check(
                "catalog",
                FAIL,
                f"schema version {row[0] if row else 'missing'}, this omerofs reads "
                f"{SCHEMA_VERSION}",
                "run the omerofs version that wrote it, or restore a backup",
            )
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        return Check(
            "catalog",
            PASS,
            f"integrity ok, foreign keys ok, schema {SCHEMA_VERSION}, {pages} pages",
        )
    except sqlite3.Error as exc:
        return Check("catalog", FAIL, f"{path}: {exc}", fix)
    finally:
        store.close()


def read_filesets(config: RepoConfig) -> tuple[list[Fileset], Any, list[str]]:
    """Every fileset, the people snapshot, and the rows a view would skip."""
    from omerofs.backends.local.catalog import LocalCatalog
    from omerofs.catalog.rows import fileset_problem

    catalog = LocalCatalog(config.catalog_path, readonly=True)
    try:
        snap = catalog.snapshot_people()
        found = catalog.filesets_for(-1, None, snap.max_fileset_id)
    finally:
        catalog.close()
    good, bad = [], []
    for fs in found:
        if problem := fileset_problem(fs):
            bad.append(f"fileset {fs.id}: {problem}")
        else:
            good.append(fs)
    people = [f"{what}: {problem}" for what, problem in catalog.bad_rows.seen.items()]
    return good, snap, people + bad


# -- originals against the catalog ---------------------------------------------------------


def _in_progress(rel: str) -> bool:
    """Below a running import's private directory (its pid is alive)."""
    for part in rel.split("/")[:-1]:
        if part.startswith(TMP_PREFIX):
            pid = part[len(TMP_PREFIX) :].split("-", 1)[0]
            return pid.isdigit() and alive(int(pid))
    return False


def _disk_files(managed: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(managed):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, managed)
        for name in sorted(filenames):
            yield name if rel_dir == "." else f"{rel_dir}/{name}"


def repository_checks(
    config: RepoConfig, filesets: list[Fileset], deep: bool, progress: Progress | None
) -> list[Check]:
    """Missing and extra files, sizes, (with ``deep``) SHA-1s, and originals sealed."""
    managed = config.managed_dir
    entries = {e.repo_path: e for fs in filesets for e in fs.entries}
    logs = {fs.template_prefix.rstrip("/") + ".log" for fs in filesets}
    missing, wrong_size, unsealed, present = [], [], [], []
    account = os.stat(managed)
    for rel, entry in entries.items():
        path = managed / rel
        try:
            st = os.stat(path)  # an ln_s original: its target
        except OSError as exc:
            why = "dangling link" if os.path.islink(path) else exc.strerror
            missing.append(f"{rel} ({why})")
            continue
        present.append(rel)
        if st.st_size != entry.size:
            wrong_size.append(f"{rel} ({st.st_size} bytes, catalog {entry.size})")
        lst = os.lstat(path)
        if stat.S_ISREG(lst.st_mode) and (
            lst.st_uid != account.st_uid or stat.S_IMODE(lst.st_mode) & 0o222
        ):
            unsealed.append(f"{rel} (uid {lst.st_uid}, mode {stat.S_IMODE(lst.st_mode):04o})")
    extra = [
        rel
        for rel in _disk_files(managed)
        if rel not in entries and rel not in logs and not _in_progress(rel)
    ]
    n_sets = len(filesets)
    rows = [
        Check(
            "missing files",
            FAIL,
            f"{len(missing)} of {len(entries)} catalogued originals are not there: "
            f"{_listed(missing)}",
            "restore them from a backup to the same path (omerofs info ID lists a fileset's)",
        )
        if missing
        else Check(
            "missing files", PASS, f"all {len(entries)} originals of {n_sets} filesets are there"
        ),
        Check(
            "extra files",
            FAIL,
            f"{len(extra)} file(s) the catalog does not know: {_listed(extra)}",
            f"move them out of {managed} (import them with omerofs import if they are data)",
        )
        if extra
        else Check("extra files", PASS, "every file in ManagedRepository is catalogued"),
        Check(
            "file sizes",
            FAIL,
            f"{len(wrong_size)} original(s) differ in size from the catalog: {_listed(wrong_size)}",
            "restore them from a backup (the catalog's SHA-1 tells the right copy)",
        )
        if wrong_size
        else Check("file sizes", PASS, f"{len(present)} originals have their catalogued sizes"),
        Check(
            "sealed originals",
            FAIL,
            f"{len(unsealed)} original(s) writable or not the repository's: {_listed(unsealed)}",
            f"chown {account.st_uid}:{account.st_gid} and chmod a-w them (users must not "
            "change originals)",
        )
        if unsealed
        else Check("sealed originals", PASS, "originals are read-only and the repository's"),
    ]
    if not deep:
        rows.append(Check("checksums", SKIP, "not run: --deep reads and hashes every original"))
        return rows
    sizes = {rel: entries[rel].size for rel in present}
    if progress is not None:
        progress.total_files, progress.total_bytes = len(present), sum(sizes.values())
    differ, unreadable = [], []
    for rel in present:
        entry = entries[rel]
        if progress is not None:
            progress.start_item(rel, [sizes[rel]])
        try:
            digest = _sha1(managed / rel, progress.add_bytes if progress else None)
        except OSError as exc:
            unreadable.append(f"{rel} ({exc.strerror})")
            continue
        if entry.hasher in SHA1_HASHERS and digest != entry.hash.lower():
            differ.append(rel)
    if progress is not None:
        progress.finish()
    if differ or unreadable:
        rows.append(
            Check(
                "checksums",
                FAIL,
                "; ".join(
                    part
                    for part in (
                        f"{len(differ)} original(s) differ from their SHA-1: {_listed(differ)}"
                        if differ
                        else "",
                        f"unreadable: {_listed(unreadable)}" if unreadable else "",
                    )
                    if part
                ),
                "restore them from a backup: their bytes changed after the import",
            )
        )
    else:
        other = sum(entries[rel].hasher not in SHA1_HASHERS for rel in present)
        note = f" ({other} with another hasher read, not compared)" if other else ""
        rows.append(
            Check("checksums", PASS, f"{len(present) - other} originals match their SHA-1{note}")
        )
    return rows


def _sha1(path: Path, on_bytes: Callable[[int], None] | None) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return h.hexdigest()


# -- staging and the private directories ------------------------------------------------------


def staging_check(config: RepoConfig) -> Check:
    """ln/ln_rm imports from the ingest mount link staged files into ManagedRepository:
    one filesystem (st_dev) or every import copies, or fails."""
    from omerofs.imports.transfer import base_mode

    staging, managed = config.staging_dir, config.managed_dir
    probe = staging if staging.exists() else staging.parent
    where = "" if staging.exists() else " (not created yet: the ingest mount makes it)"
    if staging.exists() and not staging.is_dir():
        return Check("staging", FAIL, f"{staging} is not a directory", "remove it or move it away")
    try:
        same = os.stat(probe).st_dev == os.stat(managed).st_dev
    except OSError as exc:
        return Check("staging", FAIL, f"{probe}: {exc.strerror}", f"create {probe}")
    if same:
        return Check("staging", PASS, f"{staging} is on the ManagedRepository's filesystem{where}")
    mode = config.ingest_transfer
    detail = f"{staging}{where} is on another filesystem than {managed}"
    if base_mode(mode) == "ln":
        return Check(
            "staging",
            FAIL,
            f"{detail}: [ingest] transfer {mode} cannot link",
            "set [ingest] staging to a directory on the ManagedRepository's filesystem, "
            "or [ingest] transfer to cp_rm",
        )
    return Check("staging", PASS, f"{detail} ([ingest] transfer {mode} copies)")


def ownership_check(config: RepoConfig) -> Check:
    """ManagedRepository and staging are root's and 0700 (omerofs/ownership.py): users
    reach originals and staged files only through the mounts."""
    from omerofs.ownership import private_dirs

    wrong = []
    for directory in private_dirs(config):
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            continue  # staging before the first ingest mount
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0 or mode != PRIVATE_MODE:
            wrong.append(f"{directory} (uid {st.st_uid}, mode {mode:04o})")
    if wrong:
        return Check(
            "private directories",
            FAIL,
            f"users can reach originals outside the mounts: {_listed(wrong)}",
            "chown root:root and chmod 0700 them (every daemon start does so)",
        )
    return Check("private directories", PASS, "ManagedRepository and staging: root, 0700")


# -- people ----------------------------------------------------------------------------------


def coverage_check(snap: Any) -> Check:
    """Catalog users and groups without a local account: the mounts show bare numbers."""
    lost = []
    for e in sorted(snap.experimenters.values(), key=lambda e: e.id):
        try:
            pwd.getpwuid(e.uid)
        except KeyError:
            lost.append(f"user {e.name} (uid {e.uid})")
    for g in sorted(snap.groups.values(), key=lambda g: g.id):
        try:
            grp.getgrgid(g.gid)
        except KeyError:
            lost.append(f"group {g.name} (gid {g.gid})")
    if lost:
        return Check(
            "uid/gid coverage",
            WARN,
            f"no local account for {_listed(lost)}",
            "create them (useradd -u UID NAME, groupadd -g GID NAME) or map them to existing "
            "ones (omerofs user modify NAME --uid N)",
        )
    return Check("uid/gid coverage", PASS, "every catalog user and group has a local account")


# -- daemons ---------------------------------------------------------------------------------


def daemons_check(config: RepoConfig) -> Check:
    """Who serves the repository (REPO/run/*.lock), and whether their mounts answer."""
    from omerofs.daemon_lock import running_daemons

    try:
        found = running_daemons(config)
    except OSError as exc:
        return Check("daemons", FAIL, f"cannot read {config.root / 'run'}: {exc.strerror}", "")
    if not found:
        return Check(
            "daemons", PASS, "none running (start them with omerofs mount / omerofs ingest)"
        )
    dead = []
    for d in found:
        try:
            os.stat(d.mountpoint)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                dead.append(f"{d.role} pid {d.pid} at {d.mountpoint}")
            continue
        if not os.path.ismount(d.mountpoint):
            dead.append(f"{d.role} pid {d.pid}: {d.mountpoint} is not mounted")
    running = "; ".join(f"{d.role} pid {d.pid} at {d.mountpoint}" for d in found)
    if dead:
        return Check(
            "daemons",
            FAIL,
            f"not answering: {_listed(dead)}",
            "omerofs umount MOUNTPOINT (or fusermount3 -u), then mount again",
        )
    return Check("daemons", PASS, running)


def queue_check(config: RepoConfig) -> Check:
    """Failures nobody has dealt with and filesets held back, from the ingest queue
    (as ``omerofs status`` reads it): worth a look, never a failure of the repository."""
    from omerofs import status

    try:
        rep = status.report(config, 1_000_000, [])
    except (OmerofsError, sqlite3.Error) as exc:
        return Check("ingest queue", FAIL, str(exc), "see the catalog row")
    failed = len(rep["failures"])
    held = sum(j["state"] == "incomplete" for j in rep["waiting"])
    retrying = sum(j["state"] == "retrying" for j in rep["waiting"])
    if failed or held:
        parts = [
            f"{failed} failed import(s)" if failed else "",
            f"{held} held incomplete" if held else "",
        ]
        return Check(
            "ingest queue",
            WARN,
            ", ".join(p for p in parts if p) + (f", {retrying} retrying" if retrying else ""),
            "omerofs status shows them: fix and commit again, or omerofs status --ack JOB",
        )
    waiting = len(rep["waiting"]) + len(rep["in_flight"])
    return Check("ingest queue", PASS, f"no failures; {waiting} fileset(s) queued or importing")


# -- all of it -------------------------------------------------------------------------------


def run_local_checks(
    config: RepoConfig, *, deep: bool = False, progress: Progress | None = None
) -> list[Check]:
    """Every check of an embedded repository, in order."""
    rows = [config_check(config), catalog_check(config)]
    file_rows = ("missing files", "extra files", "file sizes", "sealed originals", "checksums")
    snap = None
    if not config.managed_dir.is_dir():
        rows.append(
            Check(
                "repository access",
                FAIL,
                f"{config.managed_dir} is not a directory",
                "restore it from a backup (or, for a new repository, mkdir -m 0700 it)",
            )
        )
        rows += [Check(name, SKIP, "not run: no ManagedRepository") for name in file_rows]
    elif not os.access(config.managed_dir, os.R_OK | os.X_OK):
        rows.append(
            Check(
                "repository access",
                FAIL,
                f"{config.managed_dir} is not readable by uid {os.geteuid()}",
                "run omerofs check as root",
            )
        )
        rows += [Check(name, SKIP, "not run: ManagedRepository unreadable") for name in file_rows]
    else:
        try:
            filesets, snap, bad = read_filesets(config)
        except (OmerofsError, sqlite3.Error) as exc:
            not_run = f"not run: the catalog cannot be read ({' '.join(str(exc).split())})"
            rows += [Check(name, SKIP, not_run) for name in file_rows]
        else:
            if bad:
                rows.append(
                    Check(
                        "catalog rows",
                        FAIL,
                        f"{len(bad)} row(s) the mounts skip: {_listed(bad)}",
                        "correct them with user/group modify, or remove them (docs/cli.md)",
                    )
                )
            rows += repository_checks(config, filesets, deep, progress)
    rows += [staging_check(config), ownership_check(config)]
    if snap is not None:
        rows.append(coverage_check(snap))
    rows += [queue_check(config), daemons_check(config)]
    return rows


def from_omero(rows: list[Any]) -> list[Check]:
    """The OMERO backend's rows (backends/omero/check.py: name, ok, detail, fix)."""
    return [Check(r.name, PASS if r.ok else FAIL, r.detail, r.fix) for r in rows]


def render(rows: list[Check]) -> str:
    """The table: one row per check, its fix below a row that is not PASS."""
    width = max(len(r.name) for r in rows)
    out = [f"{'RESULT':<6}  {'CHECK':<{width}}  DETAIL"]
    for r in rows:
        out.append(f"{r.result:<6}  {r.name:<{width}}  {r.detail}")
        if r.fix and r.result in (FAIL, WARN):
            out.append(f"{'':<6}  {'':<{width}}  fix: {r.fix}")
    failed = sum(r.failed for r in rows)
    warned = sum(r.result == WARN for r in rows)
    out.append("")
    out.append(
        (f"{failed} check(s) failed" if failed else "all checks passed")
        + (f", {warned} warning(s)" if warned else "")
    )
    return "\n".join(out)
