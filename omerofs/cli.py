"""The ``omerofs`` command. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import grp
import json
import logging
import os
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

from omerofs.backend import Backend, open_backend
from omerofs.catalog.local import LocalCatalog
from omerofs.catalog.protocol import Catalog, Snapshot
from omerofs.config import RepoConfig, init_repo, load_config
from omerofs.errors import OmerofsError, UsageError
from omerofs.identity import PermissionLevel
from omerofs.ingest.importer import Target
from omerofs.ingest.transfer import MODES as TRANSFER_MODES

AUTO_GID_BASE = 70000


def _repo(args: argparse.Namespace) -> Path:
    repo = args.repo or os.environ.get("OMEROFS_REPO")
    if not repo:
        raise UsageError("no repository given: use -r/--repo DIR or set OMEROFS_REPO")
    return Path(repo)


def _open(args: argparse.Namespace) -> tuple[RepoConfig, LocalCatalog]:
    """The embedded catalog, for commands that change users and groups."""
    config = load_config(_repo(args))
    if config.omero is not None:
        raise UsageError(
            f"{config.root} uses the OMERO server {config.omero.host}: manage its users, "
            "groups and memberships in OMERO"
        )
    return config, LocalCatalog(config.catalog_path)


def _open_backend(args: argparse.Namespace) -> Backend:
    return open_backend(load_config(_repo(args)))


def _setup_logging(config: RepoConfig | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = []
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.INFO if verbose else logging.WARNING)
    stderr.addFilter(lambda record: not getattr(record, "reported", False))  # printed by caller
    handlers.append(stderr)
    if config is not None:
        config.log_dir.mkdir(exist_ok=True)
        handlers.append(logging.FileHandler(config.log_dir / "omerofs.log"))
    logging.getLogger("omerofs").propagate = True
    logging.basicConfig(
        force=True,
        level=logging.INFO,
        handlers=handlers,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    handlers[0].setFormatter(logging.Formatter("omerofs: %(message)s"))


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
            raise UsageError("an OMERO backend needs --omero-" + ", --omero-".join(missing))
        omero["credentials"] = os.path.abspath(omero["credentials"])
        kwargs["omero"] = omero
    config = init_repo(_repo(args), **kwargs)
    if config.omero is None:
        LocalCatalog(config.catalog_path, create=True).close()
    print(f"initialised omerofs repository at {config.root}")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    exp = catalog.add_experimenter(
        args.name, args.uid, admin=args.admin, default_group=args.default_group
    )
    print(f"added user {exp.name} (id {exp.id}, uid {exp.uid}{', admin' if exp.admin else ''})")
    return 0


def cmd_group_add(args: argparse.Namespace) -> int:
    _, catalog = _open(args)
    level = PermissionLevel.parse(args.perms)
    gid = args.gid if args.gid is not None else _pick_gid(args.name, catalog.used_gids())
    group = catalog.add_group(args.name, level, gid)
    print(f"added group {group.name} (id {group.id}, {level.label} {level.perms}, gid {group.gid})")
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


def cmd_import(args: argparse.Namespace) -> int:
    backend = _open_backend(args)
    try:
        _setup_logging(backend.config, args.verbose)
        target = Target.parse(args.target)
        mode = args.transfer or backend.config.transfer
        importer = backend.importer
        user = args.user or _caller_name(backend.catalog)
        owner, group = importer.resolve_identity(user, args.group, os.getuid())
        sources = [Path(p) for p in args.paths]
        outcomes = importer.import_paths(sources, owner, group, mode, target)
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
    concurrency = args.concurrency or config.concurrency
    xattrs = config.ingest_xattrs if args.xattrs is None else args.xattrs
    passthrough = config.ingest_passthrough and not args.no_passthrough
    if settle < 0 or concurrency < 1:
        raise UsageError("--settle must be >= 0 and --concurrency >= 1")
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
        "--xattrs" if xattrs else "--no-xattrs",
        *([] if passthrough else ["--no-passthrough"]),
    ]
    pid = mount.spawn_daemon(config, Path(args.mountpoint), extra)
    print(
        f"ingest mount at {os.path.abspath(args.mountpoint)} ({mode}, settle {settle:g} s, "
        f"daemon pid {pid})"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from omerofs.ingest.queue import JobQueue

    config = load_config(_repo(args))
    queue = JobQueue(config.catalog_path)
    try:
        counts = queue.counts()
        active = queue.in_state("importing", "queued")
        failed = [j for j in queue.in_state("failed")][-args.limit :]
    finally:
        queue.close()
    report = {
        "users": counts,
        "in_flight": [
            {
                "job": j.id,
                "user": j.key.user,
                "fileset": j.key.root,
                "state": j.state,
                "bytes_done": j.bytes_done,
                "bytes_total": j.bytes_total,
                "attempts": j.attempts,
            }
            for j in active
        ],
        "failures": [
            {
                "job": j.id,
                "user": j.key.user,
                "fileset": j.key.root,
                "error": j.error,
                "when": datetime.fromtimestamp(j.updated).isoformat(timespec="seconds"),
            }
            for j in failed
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    states = ("queued", "importing", "imported", "failed")
    print("USER".ljust(16) + "".join(s.upper().rjust(11) for s in states))
    for user, by_state in sorted(counts.items()):
        print(user.ljust(16) + "".join(str(by_state.get(s, 0)).rjust(11) for s in states))
    if not counts:
        print("(no ingest jobs yet)")
    for item in report["in_flight"]:
        pct = 100 * item["bytes_done"] / item["bytes_total"] if item["bytes_total"] else 0
        print(
            f"{item['state']}: job {item['job']} {item['fileset']} "
            f"{item['bytes_done']}/{item['bytes_total']} bytes ({pct:.0f}%)"
        )
    for item in report["failures"]:
        print(f"FAILED job {item['job']} {item['fileset']} at {item['when']}: {item['error']}")
    if report["failures"]:
        print(
            "retry after fixing: setfattr -n user.omerofs.commit -v 1 <file or directory> "
            "in the ingest mount"
        )
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from omerofs.fs import mount

    mount.unmount(Path(args.mountpoint))
    print(f"unmounted {os.path.abspath(args.mountpoint)}")
    return 0


def _snapshot(catalog: Catalog, with_filesets: bool) -> Snapshot:
    """People, groups and containers, and if asked every finished fileset."""
    snap = catalog.snapshot_people()
    if with_filesets:
        filesets = catalog.filesets_for(-1, None, snap.max_fileset_id)
        snap.filesets = {fs.id: fs for fs in filesets}
    return snap


def cmd_ls(args: argparse.Namespace) -> int:
    backend = _open_backend(args)
    try:
        snap = _snapshot(backend.catalog, args.what == "filesets")
    finally:
        backend.close()
    rows: list[dict] = []
    if args.what == "users":
        for e in sorted(snap.experimenters.values(), key=lambda e: e.id):
            groups = [
                snap.groups[m.group_id].name + ("*" if m.owner else "")
                for m in snap.memberships
                if m.experimenter_id == e.id
            ]
            default = (
                snap.groups[e.default_group_id].name if e.default_group_id is not None else "-"
            )
            rows.append(
                {
                    "id": e.id,
                    "name": e.name,
                    "uid": e.uid,
                    "admin": e.admin,
                    "default_group": default,
                    "groups": ",".join(sorted(groups)),
                }
            )
    elif args.what == "groups":
        for g in sorted(snap.groups.values(), key=lambda g: g.id):
            members = sorted(
                snap.experimenters[m.experimenter_id].name + ("*" if m.owner else "")
                for m in snap.memberships
                if m.group_id == g.id
            )
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
            rows.append(
                {
                    "id": c.id,
                    "name": c.name,
                    "owner": snap.experimenters[c.owner_id].name,
                    "group": snap.groups[c.group_id].name,
                }
            )
    else:
        for fs in sorted(snap.filesets.values(), key=lambda f: f.id):
            owner = snap.experimenters[fs.owner_id].name
            group = snap.groups[fs.group_id].name
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
                    "datasets": ",".join(snap.datasets[d].name for d in fs.dataset_ids) or "-",
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
    if args.fileset is None:
        backend = _open_backend(args)
        try:
            config, snap = backend.config, _snapshot(backend.catalog, True)
        finally:
            backend.close()
        total = sum(e.size for fs in snap.filesets.values() for e in fs.entries)
        info = {
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
        config, catalog = _open(args)
        fs = catalog.fileset(args.fileset)
        info = {
            "fileset": fs.id,
            "owner_id": fs.owner_id,
            "group_id": fs.group_id,
            "template_prefix": fs.template_prefix,
            "transfer": fs.transfer,
            "created": datetime.fromtimestamp(fs.created).isoformat(timespec="milliseconds"),
            "dataset_ids": list(fs.dataset_ids),
            "images": [
                {
                    "name": i.name,
                    "size": [i.size_x, i.size_y, i.size_z, i.size_c, i.size_t],
                    "pixel_type": i.pixel_type,
                }
                for i in catalog.images_of(fs.id)
            ],
            "files": [
                {"path": e.repo_path, "size": e.size, "sha1": e.hash, "client_path": e.client_path}
                for e in fs.entries
            ],
        }
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


# -- parser --------------------------------------------------------------------------------


NO_PASSTHROUGH_HELP = "all reads and writes through the daemon (no kernel passthrough)"


def build_parser() -> argparse.ArgumentParser:
    repo = argparse.ArgumentParser(add_help=False)
    repo.add_argument(
        "-r",
        "--repo",
        default=argparse.SUPPRESS,
        help="repository directory (default: $OMEROFS_REPO)",
    )
    parser = argparse.ArgumentParser(
        prog="omerofs", description="FUSE views and imports for OMERO repositories"
    )
    parser.add_argument("-r", "--repo", help="repository directory (default: $OMEROFS_REPO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[repo], help="create a new repository")
    p.add_argument("--template", help="ManagedRepository path template (OMERO's tokens)")
    p.add_argument("--omero-host", help="use this OMERO server as the catalog")
    p.add_argument("--omero-port", type=int, help="its port (default 4064)")
    p.add_argument("--omero-credentials", help="TOML file: username, password (mode 0600)")
    p.add_argument("--omero-managed-dir", help="the server's ManagedRepository, mounted here")
    p.add_argument("--omero-idmap", help="TOML file mapping OMERO names to local uids/gids")
    p.set_defaults(func=cmd_init)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="sub", required=True)
    p = user.add_parser("add", parents=[repo], help="add a user mapped to a POSIX uid")
    p.add_argument("name")
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--admin", action="store_true")
    p.add_argument("--default-group")
    p.set_defaults(func=cmd_user_add)

    group = sub.add_parser("group", help="manage groups").add_subparsers(dest="sub", required=True)
    p = group.add_parser("add", parents=[repo], help="add a group")
    p.add_argument("name")
    p.add_argument(
        "--perms",
        required=True,
        help="private | read-only | read-annotate | read-write (or rw----, rwr---, ...)",
    )
    p.add_argument(
        "--gid", type=int, help="POSIX gid (default: same-named local group, else 70000+)"
    )
    p.set_defaults(func=cmd_group_add)
    p = group.add_parser("add-member", parents=[repo], help="add a user to a group")
    p.add_argument("group")
    p.add_argument("user")
    p.add_argument("--owner", action="store_true", help="make the user a group owner")
    p.set_defaults(func=cmd_group_add_member)

    p = sub.add_parser("import", parents=[repo], help="import files or directories")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--transfer",
        choices=TRANSFER_MODES,
        help="transfer mode (default: the repository's [import] transfer)",
    )
    p.add_argument("-T", "--target", help="Dataset:name:D or Project:name:P/Dataset:name:D")
    p.add_argument("-u", "--user", help="import as this user (default: the caller's user)")
    p.add_argument("-g", "--group", help="import into this group (default: user's default)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("mount", parents=[repo], help="mount the read-only repository view")
    p.add_argument("mountpoint")
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--no-passthrough", action="store_true", help=NO_PASSTHROUGH_HELP)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("ingest", parents=[repo], help="mount the writable ingest area")
    p.add_argument("mountpoint")
    p.add_argument(
        "--transfer",
        choices=TRANSFER_MODES,
        help="transfer mode of imports (default: [ingest] transfer, ln_rm)",
    )
    p.add_argument("--settle", type=float, help="seconds a closed fileset must stay unchanged")
    p.add_argument("--concurrency", type=int, help="imports running at once")
    xattrs = p.add_mutually_exclusive_group()
    xattrs.add_argument(
        "--xattrs",
        action="store_true",
        default=None,
        help="readable state xattrs (user.omerofs.*): every write(2) then costs a round trip",
    )
    xattrs.add_argument(
        "--no-xattrs",
        dest="xattrs",
        action="store_false",
        default=None,
        help="no readable xattrs (the default)",
    )
    p.add_argument("--no-passthrough", action="store_true", help=NO_PASSTHROUGH_HELP)
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("status", parents=[repo], help="ingest queue, imports and failures")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20, help="how many recent failures to show")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("umount", parents=[repo], help="unmount a view or an ingest mount")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("ls", parents=[repo], help="list catalog contents")
    p.add_argument(
        "what",
        nargs="?",
        default="filesets",
        choices=["filesets", "users", "groups", "projects", "datasets"],
    )
    p.add_argument("--user")
    p.add_argument("--group")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("info", parents=[repo], help="summarise the repository or one fileset")
    p.add_argument("fileset", nargs="?", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    return parser


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
        print(f"omerofs: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except (OSError, sqlite3.Error) as exc:  # unexpected, but still one line, not a traceback
        print(f"omerofs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
