"""The ``omerofs`` command. Every failure is one line on stderr starting with
``omerofs:`` and a non-zero exit (2: the input was wrong; 1: the operation failed)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import grp
import json
import logging
import math
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from omerofs import __version__
from omerofs.address import MetricsOption
from omerofs.backend import Backend, open_backend
from omerofs.backends.local.catalog import LocalCatalog
from omerofs.catalog.protocol import Catalog, Fileset, Snapshot
from omerofs.catalog.rows import fileset_problem
from omerofs.config import MAX_CONCURRENCY, RepoConfig, config_reference, init_repo, load_config
from omerofs.errors import NotFound, OmerofsError, UsageError
from omerofs.identity import MAX_POSIX_ID, PermissionLevel
from omerofs.imports.importer import Target
from omerofs.imports.transfer import MODES as TRANSFER_MODES

AUTO_GID_BASE = 70000


def _repo(args: argparse.Namespace) -> Path:
    repo = args.repo or os.environ.get("OMEROFS_REPO")
    if not repo:
        raise UsageError("no repository given: use -r/--repo DIR or set OMEROFS_REPO")
    return Path(repo)


# Where each people-and-groups command is done on an OMERO server instead.
IN_OMERO = {
    "user add": "omero user add (or OMERO.web: Admin > Users)",
    "user modify": "OMERO.web: Admin > Users (or omero user joingroup/leavegroup)",
    "user remove": "OMERO.web: Admin > Users; OMERO keeps users who own data (deactivate "
    "them, or move their data with omero chown)",
    "group add": "omero group add (or OMERO.web: Admin > Groups)",
    "group modify": "omero group perms (or OMERO.web: Admin > Groups)",
    "group remove": "OMERO.web: Admin > Groups (move its data first with omero chgrp)",
    "group add-member": "omero user joingroup / omero group adduser",
    "group remove-member": "omero user leavegroup / omero group removeuser",
}


def _open(args: argparse.Namespace) -> tuple[RepoConfig, LocalCatalog]:
    """The embedded catalog, writable, for commands that change users and groups."""
    config = load_config(_repo(args))
    if config.omero is not None:
        what = f"{args.command} {args.sub}"
        raise UsageError(
            f"{config.root} uses the OMERO server {config.omero.host}: manage its users "
            f"and groups in OMERO ({what}: {IN_OMERO.get(what, 'OMERO.web: Admin')})"
        )
    return config, LocalCatalog(config.catalog_path)


def _open_reader(config: RepoConfig) -> Catalog:
    """A catalog for commands that only read: the embedded one opened read-only (anyone
    who may read the file may look), or the OMERO server (its login needs root)."""
    if config.omero is None:
        return LocalCatalog(config.catalog_path, readonly=True)
    return _open_backend_of(config).catalog


@contextlib.contextmanager
def _reader(args: argparse.Namespace) -> Iterator[tuple[RepoConfig, Catalog]]:
    """The repository's config and a read-only catalog, closed afterwards."""
    config = load_config(_repo(args))
    catalog = _open_reader(config)
    try:
        yield config, catalog
    finally:
        catalog.close()


def _open_backend_of(config: RepoConfig) -> Backend:
    return open_backend(config)


def _open_backend(args: argparse.Namespace) -> Backend:
    return open_backend(load_config(_repo(args)))


def _setup_logging(config: RepoConfig | None, verbose: bool) -> None:
    """stderr (the journal's format under systemd), rotating timestamped log files."""
    from omerofs import logs

    logs.setup(config, verbose)


# -- subcommands ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    kwargs: dict = {"template": args.template} if args.template else {}
    omero = {
        key: str(value)
        for key in ("host", "port", "credentials", "managed_dir", "idmap")
        if (value := getattr(args, "omero_" + key)) is not None
    }
    if omero:
        missing = [k for k in ("host", "credentials", "managed_dir") if k not in omero]
        if missing:
            flags = ", ".join("--omero-" + k.replace("_", "-") for k in missing)
            raise UsageError(f"an OMERO backend also needs {flags}")
        omero["credentials"] = os.path.abspath(omero["credentials"])
        kwargs["omero"] = omero
    root = Path(os.path.abspath(_repo(args)))
    if not root.parent.is_dir():
        raise UsageError(
            f"{root.parent} does not exist: create it first (init makes only the "
            "repository directory itself)"
        )
    config = init_repo(root, **kwargs)
    if config.omero is None:
        LocalCatalog(config.catalog_path, create=True).close()
    print(f"initialised omerofs repository at {config.root}")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    exp = catalog.add_experimenter(
        args.name, args.uid, admin=args.admin, default_group=args.default_group, email=args.email
    )
    print(f"added user {exp.name} (id {exp.id}, uid {exp.uid}{', admin' if exp.admin else ''})")
    return 0


def cmd_user_modify(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    changes = (args.uid, args.admin, args.default_group, args.email)
    if all(c is None for c in changes):
        raise UsageError(
            "nothing to change: give --uid, --admin/--no-admin, --default-group or --email"
        )
    exp = catalog.modify_experimenter(
        args.name,
        uid=args.uid,
        admin=args.admin,
        default_group=args.default_group,
        email=args.email,
    )
    print(
        f"user {exp.name}: uid {exp.uid}, {'admin' if exp.admin else 'not admin'}, "
        f"default group id {exp.default_group_id}, email {exp.email or '-'}"
    )
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    moved = catalog.remove_experimenter(args.name, move_to=args.move_to)
    n = sum(len(v) for v in moved.values())
    extra = f"; {n} object(s) now belong to {args.move_to}" if n else ""
    print(f"removed user {args.name}{extra}")
    return 0


def cmd_group_add(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    level = PermissionLevel.parse(args.perms)
    gid = args.gid if args.gid is not None else _pick_gid(args.name, catalog.used_gids())
    group = catalog.add_group(args.name, level, gid)
    print(f"added group {group.name} (id {group.id}, {level.label} {level.perms}, gid {group.gid})")
    return 0


def cmd_group_modify(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    if args.perms is None and args.gid is None:
        raise UsageError("nothing to change: give --perms or --gid")
    level = PermissionLevel.parse(args.perms) if args.perms is not None else None
    group = catalog.modify_group(args.name, level=level, gid=args.gid)
    print(f"group {group.name}: {group.level.label} {group.level.perms}, gid {group.gid}")
    return 0


def cmd_group_remove(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    moved = catalog.remove_group(args.name, force=args.force, move_to=args.move_to)
    n = sum(len(v) for v in moved.values())
    extra = f"; {n} object(s) moved to {args.move_to}" if n else ""
    print(f"removed group {args.name}{extra}")
    return 0


def _pick_gid(name: str, used: set[int]) -> int:
    """A local group of the same name keeps its gid; otherwise the first free one from 70000."""
    try:
        gid = grp.getgrnam(name).gr_gid
        if gid not in used:
            return gid
    except KeyError:
        pass
    gid = AUTO_GID_BASE
    while gid in used:
        gid += 1
    return gid


def cmd_group_add_member(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    catalog.add_member(args.group, args.user, owner=args.owner)
    print(f"{args.user} is now {'an owner' if args.owner else 'a member'} of {args.group}")
    return 0


def cmd_group_remove_member(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    catalog.remove_member(args.group, args.user)
    print(f"{args.user} is no longer a member of {args.group}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    target = Target.parse(args.target)
    if args.user is None and os.geteuid() == 0:
        raise UsageError(
            "running as root: say whom to import as with --user NAME "
            "(--user root imports as root, into the system group)"
        )
    backend = _open_backend(args)
    try:
        _setup_logging(backend.config, args.verbose)
        mode = args.transfer or backend.config.transfer
        importer = backend.importer
        user = args.user or _caller_name(backend.catalog)
        owner, group = importer.resolve_identity(user, args.group, os.getuid())
        if owner.id == 0:
            print(
                f"omerofs: warning: importing as root, into group {group.name!r}", file=sys.stderr
            )
        sources = [Path(p) for p in args.paths]
        if args.dry_run:
            return _dry_run(sources, owner.name, group.name, mode, target)
        outcomes = _import_with_progress(importer, sources, owner, group, mode, target, args)
    finally:
        backend.close()
    failed = 0
    for outcome in outcomes:
        if outcome.fileset is not None:
            fs = outcome.fileset
            print(
                f"{outcome.source}: fileset {fs.id}, {fs.image_count} image(s), "
                f"{len(fs.entries)} file(s) -> {fs.template_prefix}"
            )
        else:
            failed += 1
            print(f"omerofs: {outcome.source}: import failed: {outcome.error}", file=sys.stderr)
    return 1 if failed else 0


def _import_with_progress(
    importer: Any,
    sources: list[Path],
    owner: Any,
    group: Any,
    mode: str,
    target: Target,
    args: argparse.Namespace,
) -> list:
    """A live line on a terminal (omerofs/progress.py), plain lines with --progress
    elsewhere; the results themselves still go to stdout afterwards."""
    from omerofs.imports.importer import ImportHooks
    from omerofs.progress import Progress

    files, size = _source_totals(sources)
    progress = Progress.for_stream(sys.stderr, "importing", files, size, args.progress)
    if not (progress.live or progress.lines):
        return importer.import_paths(sources, owner, group, mode, target)

    def hooks(plan: Any) -> ImportHooks:
        sizes = []
        for f in plan.files:
            try:
                sizes.append(os.path.getsize(f.path))
            except OSError:
                sizes.append(0)
        name = plan.root.name + ("/" if plan.root.is_dir() else "")
        progress.start_item(name, sizes)
        return ImportHooks(on_bytes=progress.add_bytes)

    def clear_first(record: logging.LogRecord) -> bool:  # a warning gets a line of its own
        progress.clear()
        return True

    stderr_handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
    ]
    for handler in stderr_handlers:
        handler.addFilter(clear_first)
    try:
        return importer.import_paths(sources, owner, group, mode, target, hooks=hooks)
    finally:
        for handler in stderr_handlers:
            handler.removeFilter(clear_first)
        progress.finish()


def _source_totals(sources: list[Path]) -> tuple[int, int]:
    """Files and bytes below the sources (stat only: the totals of the display)."""
    files = size = 0
    for source in sources:
        walk = [(str(source.parent), [], [source.name])] if not source.is_dir() else os.walk(source)
        for dirpath, _, names in walk:
            for name in names:
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if st.st_mode & 0o170000 == 0o100000:  # regular files
                    files, size = files + 1, size + st.st_size
    return files, size


def _dry_run(sources: list[Path], user: str, group: str, mode: str, target: Target) -> int:
    """Print the filesets an import would make, and change nothing."""
    from omerofs.imports.filesets import plan_fileset

    print(f"would import as {user} into {group} ({mode}), {target.describe()}:")
    failed = 0
    for source in sources:
        try:
            plan = plan_fileset(source)
        except OmerofsError as exc:
            failed += 1
            print(f"omerofs: {source}: {exc}", file=sys.stderr)
            continue
        size = sum(os.path.getsize(f.path) for f in plan.files)
        print(
            f"{plan.root}: 1 fileset, {len(plan.files)} file(s), {size} bytes, "
            f"main file {plan.main.path}"
        )
        for f in plan.files[1:]:
            print(f"  {f.path}")
    return 1 if failed else 0


def _caller_name(catalog: Catalog) -> str:
    exp = catalog.experimenter_by_uid(os.getuid())
    if exp is None:
        raise UsageError(f"uid {os.getuid()} is not mapped to an OMERO user; pass --user")
    return exp.name


def cmd_mount(args: argparse.Namespace) -> int:
    from omerofs.fs import mount  # pyfuse3 is only needed by mounting commands

    config = load_config(_repo(args))
    passthrough = config.view_passthrough and not args.no_passthrough
    if args.foreground:
        _setup_logging(config, True)
        mount.serve_view(config, Path(args.mountpoint), passthrough)
        return 0
    extra = ["mount", *([] if passthrough else ["--no-passthrough"])]
    pid = mount.spawn_daemon(config, Path(args.mountpoint), extra)
    print(f"mounted the repository view at {os.path.abspath(args.mountpoint)} (daemon pid {pid})")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from omerofs.fs import mount

    config = load_config(_repo(args))
    mode = args.transfer or config.ingest_transfer
    settle = config.settle if args.settle is None else args.settle
    concurrency = config.concurrency if args.concurrency is None else args.concurrency
    xattrs = config.ingest_xattrs if args.xattrs is None else args.xattrs
    passthrough = config.ingest_passthrough and not args.no_passthrough
    rules = config.ingest_rules.with_overrides(  # (acquisition's flags: ingest/settings.py)
        run_settle=args.run_settle, commit_only=args.commit_only or None
    )
    config = dataclasses.replace(config, ingest_rules=rules)
    if args.foreground:
        _setup_logging(config, True)
        mount.serve_ingest(
            config, Path(args.mountpoint), mode, settle, concurrency, xattrs, passthrough
        )
        return 0
    extra = [
        "ingest",
        "--transfer",
        mode,
        "--settle",
        str(settle),
        "--concurrency",
        str(concurrency),
        *([] if xattrs is None else ["--xattrs" if xattrs else "--no-xattrs"]),  # None: auto
        *([] if passthrough else ["--no-passthrough"]),
        *["--run-settle", str(rules.run_settle), *(["--commit-only"] if rules.commit_only else [])],
    ]
    pid = mount.spawn_daemon(config, Path(args.mountpoint), extra)
    print(
        f"ingest mount at {os.path.abspath(args.mountpoint)} ({mode}, settle {settle:g} s, "
        f"daemon pid {pid})"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from omerofs import status

    config = load_config(_repo(args))
    if args.ack:
        done = status.acknowledge(config, args.ack)
        already = [j for j in args.ack if j not in done]
        print(
            "acknowledged job(s) "
            + (", ".join(map(str, done)) or "-")
            + (f" (already: {', '.join(map(str, already))})" if already else "")
        )
        return 0
    report = status.report(config, args.limit, status.daemons(config))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(status.render(report))
    return 0


def cmd_notify_test(args: argparse.Namespace) -> int:
    from omerofs.notify import send_test

    with _reader(args) as (config, catalog):
        lines = send_test(config, catalog, args.user)
    for line in lines:
        print(line)
    return 0


def cmd_notify_email(args: argparse.Namespace) -> int:
    from omerofs.notify import set_email_preference

    with _reader(args) as (config, catalog):
        set_email_preference(config, catalog, args.user, args.level)
    what = {
        "all": "failures at once and success digests",
        "failures": "failures only (no success digests)",
        "none": "nothing",
    }[args.level]
    print(f"{args.user} now receives by e-mail: {what}")
    return 0


def cmd_notify_status(args: argparse.Namespace) -> int:
    from omerofs.notify import notify_status

    config = load_config(_repo(args))
    rows = notify_status(config)
    if args.state:
        rows = [r for r in rows if r["state"] == args.state]
    rows = rows[-args.limit :]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        {
            "id": r["id"],
            "state": r["state"],
            "channel": r["channel"],
            "event": r["event"],
            "user": r["user"],
            "to": r["recipient"] or "-",
            "tries": r["attempts"],
            "when": _clock(r["done"] or r["next_attempt"] or r["created"]),
            "last error": r["last_error"] or "-",
        }
        for r in rows
    ]
    _print_rows(table, False)
    return 0


def _clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


CHECK_VERSION = 1  # of ``omerofs check --json`` (docs/cli.md)


def cmd_commit(args: argparse.Namespace) -> int:
    from omerofs.ingest.commit import request_commit

    for path in args.paths:
        request_commit(Path(path))
        print(f"committed {path}")
    return 0


def cmd_shares_smb_conf(args: argparse.Namespace) -> int:
    from omerofs.shares import smb_conf

    with _reader(args) as (config, catalog):
        print(
            smb_conf(
                config,
                catalog,
                Path(args.ingest).absolute() if args.ingest else None,
                Path(args.view).absolute() if args.view else None,
                case_insensitive=args.case_insensitive,
            ),
            end="",
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The checks live in omerofs/check.py (embedded) and backends/omero/check.py (OMERO)."""
    from omerofs import check
    from omerofs.config import CONFIG_NAME
    from omerofs.progress import Progress

    root = Path(os.path.abspath(_repo(args)))
    backend = None
    try:
        config = load_config(root)
    except UsageError as exc:  # a config that fails its schema is the first row
        rows = [check.config_failed(root / CONFIG_NAME, _one_line(exc))]
    else:
        backend = config.backend
        if config.omero is None:
            progress = Progress.for_stream(sys.stderr, "hashing", 0, 0, None) if args.deep else None
            rows = check.run_local_checks(config, deep=args.deep, progress=progress)
        else:
            rows = [check.config_check(config), *_omero_checks(config)]
            if args.deep:
                rows.append(
                    check.Check("checksums", check.SKIP, "--deep: the OMERO server keeps them")
                )
            rows += [check.queue_check(config), check.daemons_check(config)]
    failed = any(r.failed for r in rows)
    if args.json:
        report = {
            "version": CHECK_VERSION,
            "repository": str(root),
            "backend": backend,
            "ok": not failed,
            "checks": [r.as_json() for r in rows],
        }
        print(json.dumps(report, indent=2))
    else:
        print(check.render(rows))
    return 1 if failed else 0


def _omero_checks(config: RepoConfig) -> list:
    from omerofs import check
    from omerofs.backends.omero.check import run_checks

    backend = _open_backend_of(config)
    try:
        return check.from_omero(run_checks(config, backend.catalog))
    finally:
        backend.close()


def cmd_umount(args: argparse.Namespace) -> int:
    from omerofs.fs import mount

    mount.unmount(Path(args.mountpoint))
    print(f"unmounted {os.path.abspath(args.mountpoint)}")
    return 0


def _snapshot(catalog: Catalog, with_filesets: bool) -> Snapshot:
    """People, groups and containers, and if asked every finished fileset that passes
    the checks a view applies (a bad row is reported, not fatal)."""
    snap = catalog.snapshot_people()
    if with_filesets:
        filesets = catalog.filesets_for(-1, None, snap.max_fileset_id)
        snap.filesets = {}
        for fs in filesets:
            if problem := fileset_problem(fs):
                print(f"omerofs: warning: skipping fileset {fs.id}: {problem}", file=sys.stderr)
            else:
                snap.filesets[fs.id] = fs
    return snap


def _read_snapshot(args: argparse.Namespace, with_filesets: bool) -> tuple[RepoConfig, Snapshot]:
    with _reader(args) as (config, catalog):
        return config, _snapshot(catalog, with_filesets)


def _name(table: dict, key: int | None) -> str:
    found = table.get(key)
    return found.name if found is not None else f"?{key}"


def cmd_ls(args: argparse.Namespace) -> int:
    config, snap = _read_snapshot(args, args.what == "filesets")
    if args.user and args.user not in {e.name for e in snap.experimenters.values()}:
        raise NotFound(f"no such user {args.user!r}")
    if args.group and args.group not in {g.name for g in snap.groups.values()}:
        raise NotFound(f"no such group {args.group!r}")
    rows: list[dict] = []
    if args.what == "users":
        for e in sorted(snap.experimenters.values(), key=lambda e: e.id):
            if args.user and e.name != args.user:
                continue
            groups = [
                _name(snap.groups, m.group_id) + ("*" if m.owner else "")
                for m in snap.memberships
                if m.experimenter_id == e.id
            ]
            if args.group and args.group not in {g.rstrip("*") for g in groups}:
                continue
            rows.append(
                {
                    "id": e.id,
                    "name": e.name,
                    "uid": e.uid,
                    "admin": e.admin,
                    "default_group": _name(snap.groups, e.default_group_id)
                    if e.default_group_id is not None
                    else "-",
                    "groups": ",".join(sorted(groups)),
                    "email": e.email or "-",
                }
            )
    elif args.what == "groups":
        for g in sorted(snap.groups.values(), key=lambda g: g.id):
            if args.group and g.name != args.group:
                continue
            members = sorted(
                _name(snap.experimenters, m.experimenter_id) + ("*" if m.owner else "")
                for m in snap.memberships
                if m.group_id == g.id
            )
            if args.user and args.user not in {m.rstrip("*") for m in members}:
                continue
            rows.append(
                {
                    "id": g.id,
                    "name": g.name,
                    "level": g.level.label,
                    "perms": g.level.perms,
                    "gid": g.gid,
                    "members": ",".join(members),
                }
            )
    elif args.what in ("projects", "datasets"):
        source = snap.projects if args.what == "projects" else snap.datasets
        for c in sorted(source.values(), key=lambda c: c.id):
            owner, group = _name(snap.experimenters, c.owner_id), _name(snap.groups, c.group_id)
            if (args.user and owner != args.user) or (args.group and group != args.group):
                continue
            rows.append({"id": c.id, "name": c.name, "owner": owner, "group": group})
    else:
        for fs in sorted(snap.filesets.values(), key=lambda f: f.id):
            owner = _name(snap.experimenters, fs.owner_id)
            group = _name(snap.groups, fs.group_id)
            if (args.user and owner != args.user) or (args.group and group != args.group):
                continue
            rows.append(
                {
                    "id": fs.id,
                    "owner": owner,
                    "group": group,
                    "transfer": fs.transfer,
                    "files": len(fs.entries),
                    "images": fs.image_count,
                    "bytes": sum(e.size for e in fs.entries),
                    "datasets": ",".join(_name(snap.datasets, d) for d in fs.dataset_ids) or "-",
                    "created": datetime.fromtimestamp(fs.created).isoformat(timespec="seconds"),
                    "prefix": fs.template_prefix,
                }
            )
    _print_rows(rows, args.json)
    return 0


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


def cmd_info(args: argparse.Namespace) -> int:
    if args.target is None:
        config, snap = _read_snapshot(args, True)
        total = sum(e.size for fs in snap.filesets.values() for e in fs.entries)
        info: dict = {
            "repository": str(config.root),
            "backend": config.backend,
            "template": config.template,
            "default_transfer": config.transfer,
            "users": len(snap.experimenters),
            "groups": len(snap.groups),
            "projects": len(snap.projects),
            "datasets": len(snap.datasets),
            "filesets": len(snap.filesets),
            "files": sum(len(fs.entries) for fs in snap.filesets.values()),
            "bytes": total,
            "last_event": snap.event_id,
        }
    else:
        info = _fileset_info(args)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                print(f"{key}:")
                for item in value:
                    print("  " + ", ".join(f"{k}={v}" for k, v in item.items()))
            else:
                print(f"{key}: {value}")
    return 0


def _fileset_info(args: argparse.Namespace) -> dict:
    """One fileset, named by its id or by a path in a mount or the ManagedRepository."""
    from omerofs.fs import locate

    with _reader(args) as (config, catalog):
        snap = catalog.snapshot_people()
        where: dict = {}
        if args.target.isdigit():
            fs = locate.fileset_by_id(catalog, int(args.target))
        else:
            found = locate.locate(Path(args.target), config.managed_dir)
            where = {"path": os.path.abspath(args.target), "found_in": found.kind}
            if found.kind == "ingest":
                return where | _staged_info(config, found.staged or "")
            if found.repo_path is not None:
                fs = locate.fileset_at(catalog, found.repo_path)
            else:
                fs = locate.fileset_named(catalog, snap, found.named)
        if problem := fileset_problem(fs):
            raise UsageError(f"fileset {fs.id} is malformed in the catalog: {problem}")
        images = getattr(catalog, "images_of", None)  # the embedded catalog keeps them
        return where | _describe_fileset(fs, snap, images(fs.id) if images else None)


def _describe_fileset(fs: Fileset, snap: Snapshot, images: list | None) -> dict:
    info = {
        "fileset": fs.id,
        "owner": _name(snap.experimenters, fs.owner_id),
        "group": _name(snap.groups, fs.group_id),
        "owner_id": fs.owner_id,
        "group_id": fs.group_id,
        "template_prefix": fs.template_prefix,
        "transfer": fs.transfer,
        "created": datetime.fromtimestamp(fs.created).isoformat(timespec="milliseconds"),
        "datasets": [_name(snap.datasets, d) for d in fs.dataset_ids],
        "dataset_ids": list(fs.dataset_ids),
        "image_count": fs.image_count,
    }
    if images is not None:
        info["images"] = [
            {
                "name": i.name,
                "size": [i.size_x, i.size_y, i.size_z, i.size_c, i.size_t],
                "pixel_type": i.pixel_type,
            }
            for i in images
        ]
    info["files"] = [
        {"path": e.repo_path, "size": e.size, "sha1": e.hash, "client_path": e.client_path}
        for e in fs.entries
    ]
    return info


def _staged_info(config: RepoConfig, staged: str) -> dict:
    """A path in the ingest mount: the latest ingest job of the fileset holding it."""
    from omerofs.catalog.sqlite import Database

    store = Database(config.catalog_path, "the ingest queue in", readonly=True)
    try:
        rows = store.query(
            "SELECT id, root, state, fileset_id, error FROM ingest_jobs "
            "WHERE (root=? OR substr(?, 1, length(root) + 1) = root || '/') "
            "AND state NOT IN ('superseded', 'gone') "
            "ORDER BY id DESC LIMIT 1",
            (staged, staged),
        )
    except sqlite3.OperationalError:  # no ingest queue yet
        rows = []
    finally:
        store.close()
    if not rows:
        return {"staged": staged, "state": "not imported (no ingest job for it yet)"}
    job, root, state, fileset_id, error = rows[0]
    return {
        "staged": staged,
        "job": job,
        "fileset_root": root,
        "state": state,
        "fileset": fileset_id,
        "error": error,
    }


# -- parser --------------------------------------------------------------------------------


NO_PASSTHROUGH_HELP = "all reads and writes through the daemon (no kernel passthrough)"


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other failure."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("omerofs").strip()
        self.exit(
            2, f"omerofs: {where + ': ' if where else ''}{message} (see '{self.prog} --help')\n"
        )


def _posix_id(kind: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} {text!r} is not a number") from None
        if not 0 <= value <= MAX_POSIX_ID:
            raise argparse.ArgumentTypeError(f"{kind} {value} is outside 0 ... {MAX_POSIX_ID}")
        return value

    return parse


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is outside {low} ... {high}" if high else f"must be >= {low}, not {value}"
            )
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def _job_id(text: str) -> int:
    return _count(1)(text)


def _cmd(sub: Any, name: str, parents: list, help: str, examples: str) -> Parser:
    """A subcommand whose --help ends with examples."""
    return sub.add_parser(
        name,
        parents=parents,
        help=help,
        description=help[:1].upper() + help[1:] + ".",
        epilog="examples:\n" + "\n".join("  " + line for line in examples.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    repo = Parser(add_help=False)
    repo.add_argument(
        "-r",
        "--repo",
        default=argparse.SUPPRESS,
        help="repository directory (default: $OMEROFS_REPO), e.g. -r /data/omerofs",
    )
    parser = Parser(
        prog="omerofs",
        description="FUSE views and imports for OMERO repositories.",
        epilog="examples:\n  omerofs -r /data/omerofs init\n  omerofs -r /data/omerofs "
        "mount /mnt/omero\n  omerofs status\n\nEach command has --help with examples; "
        "docs/cli.md has them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"omerofs {__version__}")
    parser.add_argument(
        "-r", "--repo", help="repository directory (default: $OMEROFS_REPO), e.g. -r /data/omerofs"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    json_help = "machine-readable output (JSON), e.g. --json | jq ."

    p = _cmd(
        sub,
        "init",
        [repo],
        "create a new repository",
        """
omerofs -r /data/omerofs init
omerofs -r /data/omerofs init --template '%user%_%userId%//%year%-%month%/%day%/%time%'
omerofs -r /srv/omerofs init --omero-host omero.example.org --omero-credentials \\
    /etc/omerofs/omero.toml --omero-managed-dir /mnt/omero/ManagedRepository""",
    )
    p.add_argument(
        "--template",
        help="ManagedRepository path template (OMERO's omero.fs.repo."
        "path tokens), e.g. --template '%%user%%_%%userId%%//%%year%%-%%month%%'",
    )
    p.add_argument(
        "--omero-host",
        help="use this OMERO server as the catalog, e.g. --omero-host omero.example.org",
    )
    p.add_argument(
        "--omero-port",
        type=_count(1, 65535),
        help="its port (default 4064), e.g. --omero-port 4064",
    )
    p.add_argument(
        "--omero-credentials",
        help="TOML file with username and password (mode "
        "0600), e.g. --omero-credentials /etc/omerofs/omero.toml",
    )
    p.add_argument(
        "--omero-managed-dir",
        help="the server's ManagedRepository as mounted "
        "here, e.g. --omero-managed-dir /mnt/omero/ManagedRepository",
    )
    p.add_argument(
        "--omero-idmap",
        help="TOML file mapping OMERO names to local uids/gids, "
        "e.g. --omero-idmap /etc/omerofs/idmap.toml",
    )
    p.set_defaults(func=cmd_init)

    users = sub.add_parser("user", help="add, change and remove users (embedded catalog)")
    user = users.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = _cmd(
        user,
        "add",
        [repo],
        "add a user mapped to a POSIX uid",
        """
omerofs user add alice --uid 3001 --default-group lab
omerofs user add adam --uid 3005 --admin --email adam@example.org""",
    )
    p.add_argument("name", help="the OMERO user name, e.g. alice")
    p.add_argument(
        "--uid",
        type=_posix_id("uid"),
        required=True,
        help="the local uid the user's files show, e.g. --uid 3001",
    )
    p.add_argument(
        "--admin", action="store_true", help="an OMERO admin: sees and may import for everybody"
    )
    p.add_argument(
        "--default-group",
        help="the group imports go to by default (the user joins it), e.g. --default-group lab",
    )
    p.add_argument("--email", help="where notifications go, e.g. --email alice@example.org")
    p.set_defaults(func=cmd_user_add)
    p = _cmd(
        user,
        "modify",
        [repo],
        "change a user's uid, admin flag, default group or email",
        """
omerofs user modify alice --uid 3101
omerofs user modify alice --default-group imaging --email alice@example.org
omerofs user modify bob --no-admin""",
    )
    p.add_argument("name", help="the user to change, e.g. alice")
    p.add_argument("--uid", type=_posix_id("uid"), help="a new local uid, e.g. --uid 3101")
    admin = p.add_mutually_exclusive_group()
    admin.add_argument("--admin", action="store_true", default=None, help="make an admin")
    admin.add_argument(
        "--no-admin", dest="admin", action="store_false", default=None, help="no longer an admin"
    )
    p.add_argument("--default-group", help="one of the user's groups, e.g. --default-group lab")
    p.add_argument("--email", help="a new address ('' clears it), e.g. --email a@example.org")
    p.set_defaults(func=cmd_user_modify)
    p = _cmd(
        user,
        "remove",
        [repo],
        "remove a user (their data is never deleted)",
        """
omerofs user remove carol                 # refused while carol owns data (lists it)
omerofs user remove carol --move-to olga  # olga now owns carol's filesets""",
    )
    p.add_argument("name", help="the user to remove, e.g. carol")
    p.add_argument(
        "--move-to",
        metavar="USER",
        help="give the user's filesets, projects and "
        "datasets to USER first (OMERO's chown), e.g. --move-to olga",
    )
    p.set_defaults(func=cmd_user_remove)

    groups = sub.add_parser("group", help="add, change and remove groups and memberships")
    group = groups.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = _cmd(
        group,
        "add",
        [repo],
        "add a group",
        """
omerofs group add lab --perms read-annotate
omerofs group add imaging --perms rwr--- --gid 71002""",
    )
    p.add_argument("name", help="the OMERO group name, e.g. lab")
    p.add_argument(
        "--perms",
        required=True,
        help="private | read-only | read-annotate | read-write (or rw----, rwr---, ...), "
        "e.g. --perms read-only",
    )
    p.add_argument(
        "--gid",
        type=_posix_id("gid"),
        help="POSIX gid (default: same-named local group, "
        "else the first free from 70000), e.g. --gid 71002",
    )
    p.set_defaults(func=cmd_group_add)
    p = _cmd(
        group,
        "modify",
        [repo],
        "change a group's permission level or gid",
        """
omerofs group modify lab --perms read-only
omerofs group modify lab --gid 71010""",
    )
    p.add_argument("name", help="the group to change, e.g. lab")
    p.add_argument("--perms", help="a new permission level, e.g. --perms read-only")
    p.add_argument("--gid", type=_posix_id("gid"), help="a new POSIX gid, e.g. --gid 71010")
    p.set_defaults(func=cmd_group_modify)
    p = _cmd(
        group,
        "remove",
        [repo],
        "remove a group (its data is never deleted)",
        """
omerofs group remove oldlab                           # refused if it holds data or members
omerofs group remove oldlab --move-to lab --force     # data to lab, memberships dropped""",
    )
    p.add_argument("name", help="the group to remove, e.g. oldlab")
    p.add_argument(
        "--move-to",
        metavar="GROUP",
        help="move its filesets, projects and "
        "datasets to GROUP first (OMERO's chgrp), e.g. --move-to lab",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also drop its memberships (members keep their other groups)",
    )
    p.set_defaults(func=cmd_group_remove)
    p = _cmd(
        group,
        "add-member",
        [repo],
        "add a user to a group",
        """
omerofs group add-member lab bob
omerofs group add-member lab olga --owner""",
    )
    p.add_argument("group", help="the group, e.g. lab")
    p.add_argument("user", help="the user, e.g. bob")
    p.add_argument("--owner", action="store_true", help="make the user a group owner")
    p.set_defaults(func=cmd_group_add_member)
    p = _cmd(
        group,
        "remove-member",
        [repo],
        "take a user out of a group",
        """
omerofs group remove-member lab bob""",
    )
    p.add_argument("group", help="the group, e.g. lab")
    p.add_argument("user", help="the user, e.g. bob")
    p.set_defaults(func=cmd_group_remove_member)

    p = _cmd(
        sub,
        "import",
        [repo],
        "import files or directories, one fileset each",
        """
omerofs import --user alice scan.czi
omerofs import --user alice -g lab -T Project:name:P/Dataset:+name:D run1/ run2/
omerofs import --user alice --transfer ln_s --dry-run /data/plate/""",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a file (one fileset) or a directory (one fileset of all below it)",
    )
    p.add_argument(
        "--transfer",
        choices=TRANSFER_MODES,
        help="transfer mode (default: the repository's [import] transfer), e.g. --transfer ln",
    )
    p.add_argument(
        "-T",
        "--target",
        help="Dataset:name:D or Project:name:P/Dataset:name:D, "
        "OMERO's +name qualifier accepted, e.g. -T Dataset:+name:Day1",
    )
    p.add_argument(
        "-u",
        "--user",
        help="import as this user (default: the caller's user; required as root), e.g. -u alice",
    )
    p.add_argument(
        "-g",
        "--group",
        help="import into this group (default: the user's default group), e.g. -g lab",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the filesets that would be imported; change nothing",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each step on stderr")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress on stderr: a live line on a terminal (the default there), "
        "a plain line per fileset elsewhere",
    )
    shown.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress display, even on a terminal",
    )
    p.set_defaults(func=cmd_import)

    p = _cmd(
        sub,
        "mount",
        [repo],
        "mount the read-only repository view",
        """
omerofs mount /mnt/omero
omerofs mount /mnt/omero --no-passthrough""",
    )
    p.add_argument("mountpoint", help="an empty directory, e.g. /mnt/omero")
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--no-passthrough", action="store_true", help=NO_PASSTHROUGH_HELP)
    p.add_argument("--metrics", action=MetricsOption)  # omerofs/address.py (service)
    p.set_defaults(func=cmd_mount)

    p = _cmd(
        sub,
        "ingest",
        [repo],
        "mount the writable ingest area",
        """
omerofs ingest /mnt/ingest
omerofs ingest /mnt/ingest --transfer cp --settle 30 --concurrency 4""",
    )
    p.add_argument("mountpoint", help="an empty directory, e.g. /mnt/ingest")
    p.add_argument(
        "--transfer",
        choices=TRANSFER_MODES,
        help="transfer mode of imports (default: [ingest] transfer, ln_rm), e.g. --transfer cp",
    )
    p.add_argument(
        "--settle",
        type=_seconds,
        help="seconds a closed fileset must stay unchanged (finite, >= 0), e.g. --settle 30",
    )
    p.add_argument(
        "--concurrency",
        type=_count(1, MAX_CONCURRENCY),
        help=f"imports running at once (1 ... {MAX_CONCURRENCY}), e.g. --concurrency 4",
    )
    p.add_argument(
        "--run-settle",
        type=_seconds,
        help="seconds a run directory must stay unchanged (default: [ingest] run_settle, 300)",
    )
    p.add_argument(
        "--commit-only",
        action="store_true",
        help="import only on an explicit commit (xattr, NAME.done, omerofs commit)",
    )
    xattrs = p.add_mutually_exclusive_group()
    xattrs.add_argument(
        "--xattrs",
        action="store_true",
        default=None,
        help="readable state xattrs (user.omerofs.*) even where the kernel does not grant "
        "KILLPRIV_V2 (every write(2) then costs a round trip); default: [ingest] xattrs (auto)",
    )
    xattrs.add_argument(
        "--no-xattrs",
        dest="xattrs",
        action="store_false",
        default=None,
        help="no readable xattrs (default: on only where the kernel grants KILLPRIV_V2)",
    )
    p.add_argument("--no-passthrough", action="store_true", help=NO_PASSTHROUGH_HELP)
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--metrics", action=MetricsOption)  # omerofs/address.py (service)
    p.set_defaults(func=cmd_ingest)

    p = _cmd(
        sub,
        "status",
        [repo],
        "daemons, ingest queue, recent imports and failures",
        """
omerofs status
omerofs status --json --limit 100
omerofs status --ack 17 18""",
    )
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument(
        "--limit",
        type=_count(1),
        default=20,
        help="how many recent imports and failures to show (>= 1), e.g. --limit 50",
    )
    p.add_argument(
        "--ack",
        type=_job_id,
        nargs="+",
        metavar="JOB",
        help="acknowledge failed jobs: no longer shown, e.g. --ack 17",
    )
    p.set_defaults(func=cmd_status)

    p = _cmd(
        sub,
        "check",
        [repo],
        "check that the repository works and is intact (run this first)",
        """
omerofs check
omerofs check --deep          # also hash every original against the catalog's SHA-1
omerofs check --json | jq '.checks[] | select(.result == "FAIL")'""",
    )
    p.add_argument(
        "--deep", action="store_true", help="read every original and compare its SHA-1 (slow)"
    )
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_check)

    notify = sub.add_parser(
        "notify", help="notifications: send a test, set a user's e-mail choice, the outbox"
    )
    notify_sub = notify.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = _cmd(
        notify_sub,
        "test",
        [repo],
        "send a test message to a user on every channel now (docs/notifications.md)",
        """
omerofs notify test --user alice""",
    )
    p.add_argument("-u", "--user", required=True, help="whom to send it to, e.g. --user alice")
    p.set_defaults(func=cmd_notify_test)
    p = _cmd(
        notify_sub,
        "email",
        [repo],
        "choose what a user receives by e-mail",
        """
omerofs notify email --user alice failures   # failures at once, no success digests
omerofs notify email --user bob none
omerofs notify email --user bob all          # back to the default""",
    )
    p.add_argument("-u", "--user", required=True, help="the user, e.g. --user alice")
    p.add_argument(
        "level",
        choices=("all", "failures", "none"),
        help="all (the default), failures (no success digests) or none",
    )
    p.set_defaults(func=cmd_notify_email)
    p = _cmd(
        notify_sub,
        "status",
        [repo],
        "the notification outbox: pending, sent, skipped and dead messages",
        """
omerofs notify status
omerofs notify status --state dead
omerofs notify status --json --limit 500""",
    )
    p.add_argument(
        "--state",
        choices=("pending", "sent", "skipped", "dead"),
        help="only messages in this state, e.g. --state dead",
    )
    p.add_argument(
        "--limit",
        type=_count(1),
        default=50,
        help="how many of the newest messages to show (>= 1), e.g. --limit 200",
    )
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_notify_status)

    p = _cmd(
        sub,
        "commit",
        [],
        "import a fileset in an ingest mount now, without waiting for it to settle",
        """
omerofs commit /mnt/ingest/alice/P/D/run2        # a run directory (commit-only areas too)
omerofs commit /mnt/ingest/alice/P/D/cells.tif   # one file""",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a file or directory in an ingest mount, e.g. /mnt/ingest/alice/P/D/run2",
    )
    p.set_defaults(func=cmd_commit)

    shares = sub.add_parser("shares", help="network shares of the mounts (docs/shares.md)")
    shares_sub = shares.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = _cmd(
        shares_sub,
        "smb-conf",
        [repo],
        "print an smb.conf serving the mounts to this repository's users over SMB",
        """
omerofs shares smb-conf --ingest /mnt/ingest --view /mnt/omero > /etc/samba/smb.conf
omerofs shares smb-conf --ingest /mnt/ingest --case-insensitive""",
    )
    p.add_argument("--ingest", metavar="MOUNT", help="the ingest mount, e.g. /mnt/ingest")
    p.add_argument("--view", metavar="MOUNT", help="the view mount, e.g. /mnt/omero")
    p.add_argument(
        "--case-insensitive",
        action="store_true",
        help="Windows name matching on the ingest share (slower for many files)",
    )
    p.set_defaults(func=cmd_shares_smb_conf)

    p = _cmd(
        sub,
        "umount",
        [repo],
        "unmount a view or an ingest mount",
        """
omerofs umount /mnt/omero""",
    )
    p.add_argument("mountpoint", help="an omerofs mount, e.g. /mnt/omero")
    p.set_defaults(func=cmd_umount)

    p = _cmd(
        sub,
        "ls",
        [repo],
        "list catalog contents",
        """
omerofs ls
omerofs ls users --group lab
omerofs ls filesets --user alice --json""",
    )
    p.add_argument(
        "what",
        nargs="?",
        default="filesets",
        choices=["filesets", "users", "groups", "projects", "datasets"],
        help="what to list (default: filesets)",
    )
    p.add_argument(
        "--user", help="only what this user owns (or, for groups, is in), e.g. --user alice"
    )
    p.add_argument("--group", help="only what is in this group, e.g. --group lab")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_ls)

    p = _cmd(
        sub,
        "info",
        [repo],
        "summarise the repository, or show one fileset",
        """
omerofs info
omerofs info 42
omerofs info /mnt/omero/alice/Groups/lab/Datasets/Day1/scan.czi
omerofs info /mnt/ingest/alice/P/D/run1/""",
    )
    p.add_argument(
        "target",
        nargs="?",
        metavar="FILESET_OR_PATH",
        help="a fileset id, or a path in a view, an ingest mount or the ManagedRepository",
    )
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_info)

    p = _cmd(
        sub,
        "config-reference",
        [],
        "print the omerofs.toml reference (docs/config.md)",
        """
omerofs config-reference > docs/config.md""",
    )
    p.set_defaults(func=cmd_config_reference)
    return parser


def cmd_config_reference(args: argparse.Namespace) -> int:
    print(config_reference(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # until a command sets up logging, warnings stay out of its one-line error output
    # (omero-py configures the root logger when it is imported)
    logging.getLogger("omerofs").addHandler(logging.NullHandler())
    logging.getLogger("omerofs").propagate = False
    try:
        return int(args.func(args))
    except OmerofsError as exc:
        print(f"omerofs: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except ModuleNotFoundError as exc:  # an extra that is not installed (omero-py)
        print(f"omerofs: {exc.name} is not installed (for OMERO: make omero)", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:  # unexpected, but still one line, not a traceback
        print(f"omerofs: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
