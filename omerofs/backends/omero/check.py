"""``omerofs check`` for an OMERO repository: will this backend work here?

Each check is one row (name, ok, detail, fix). The order is the order an admin fixes
things in: a server that cannot be reached makes every later server check meaningless,
so they are reported as not run (FAIL) with the first row's fix. Nothing here writes to
the server; on this machine only a scratch file in the ManagedRepository mount is made
and removed again. (A real import test, ``--import-test``, is not implemented yet.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from omero.rtypes import unwrap

from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.config import RepoConfig
from omerofs.errors import OmerofsError

SAMPLE = 20  # fileset entries compared with the local mount of the ManagedRepository


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(config: RepoConfig, catalog: OmeroCatalog) -> list[Check]:
    """All checks for ``config``'s OMERO backend, in order."""
    rows = local_checks(config)
    try:
        ec = catalog.server.call(lambda sf: sf.getAdminService().getEventContext())
    except OmerofsError as exc:
        where = f"{config.omero.host}:{config.omero.port}" if config.omero else "?"
        rows.insert(
            0,
            Check(
                "server reachable",
                False,
                str(exc),
                f"check that OMERO runs and [omero] host/port ({where}) and the credentials "
                "file are right",
            ),
        )
        skipped = "not run: the server is unreachable"
        names = (
            "service account",
            "sudo",
            "catalog queries",
            "plates and screens",
            "event log",
            "repository files",
        )
        return rows[:1] + [Check(n, False, skipped, rows[0].fix) for n in names] + rows[1:]
    rows.insert(0, Check("server reachable", True, f"logged in as {ec.userName}"))
    rows[1:1] = account_checks(ec) + server_checks(config, catalog)
    return rows


def account_checks(ec: Any) -> list[Check]:
    """The service account's powers, from its ``omero.sys.EventContext``."""
    privileges = {unwrap(p.getValue()) for p in (ec.adminPrivileges or [])}
    account = (
        Check("service account", True, f"{ec.userName} is an administrator")
        if ec.isAdmin
        else Check(
            "service account",
            False,
            f"{ec.userName} is not an administrator: it cannot read other users' data",
            "make it a (restricted) administrator in OMERO",
        )
    )
    if ec.isAdmin and "Sudo" in privileges:
        sudo = Check("sudo", True, "may import as any user (Sudo privilege)")
    elif ec.leaderOfGroups:
        sudo = Check(
            "sudo",
            False,
            f"no Sudo privilege; may import only for members of the groups it owns "
            f"(ids {', '.join(str(g) for g in ec.leaderOfGroups)})",
            "grant the Sudo privilege for imports (the view alone needs none)",
        )
    else:
        sudo = Check(
            "sudo",
            False,
            "no Sudo privilege and owns no group: imports (ingest mount, omerofs import) fail",
            "grant the Sudo privilege for imports (the view alone needs none)",
        )
    return [account, sudo]


def server_checks(config: RepoConfig, catalog: OmeroCatalog) -> list[Check]:
    rows = []
    try:
        snap = catalog.snapshot_people()
        filesets = catalog.filesets_for(0, None, snap.max_fileset_id, limit=SAMPLE)
        unmapped = sorted(f"{kind} {name}" for kind, name in catalog.idmap.unmapped)
        rows.append(
            Check(
                "catalog queries",
                bool(snap.experimenters) and bool(snap.groups),
                f"{len(snap.experimenters)} users, {len(snap.groups)} groups, "
                f"{len(snap.projects)} projects, {len(snap.datasets)} datasets, "
                f"newest fileset {snap.max_fileset_id}",
                "" if snap.experimenters else "no OMERO user maps to a local account: see idmap",
            )
        )
        if unmapped:
            rows.append(
                Check(
                    "uid/gid coverage",
                    False,
                    f"hidden (no local account or group): {', '.join(unmapped[:20])}"
                    + (" ..." if len(unmapped) > 20 else ""),
                    "create the local accounts/groups or map them in [omero] idmap",
                )
            )
        else:
            rows.append(Check("uid/gid coverage", True, "every OMERO user and group is mapped"))
        rows.append(plate_check(catalog, snap, filesets))
    except OmerofsError as exc:
        rows.append(Check("catalog queries", False, str(exc), "see the error; report it"))
        rows.append(
            Check(
                "plates and screens",
                False,
                "not run: the catalog queries failed",
                "fix the catalog queries first",
            )
        )
        filesets = []
    try:
        last = catalog.last_event_id()
        rows.append(Check("event log", last > 0, f"last event {last}", "" if last else "empty"))
    except OmerofsError as exc:
        rows.append(Check("event log", False, str(exc), "the account must read EventLog"))
    rows.append(repository_files(config.managed_dir, filesets))
    return rows


def plate_check(catalog: OmeroCatalog, snap: Any, filesets: list) -> Check:
    """The plate queries the view depends on: Screens, Plates and ScreenPlateLinks (read
    with the people, in ``snap``) and each fileset's plate through ``WellSample ->
    Image`` (``ws.well.plate.id``), asked for the sampled filesets, or for id 0 (none:
    OMERO's ids start at 1) on an empty server so the query still meets the server."""
    ids = [f.id for f in filesets]
    try:
        in_plates = catalog.plate_filesets(ids or [0])
    except OmerofsError as exc:
        return Check(
            "plates and screens",
            False,
            f"the WellSample -> plate query failed: {exc}",
            "the service account must read WellSample, Well and Plate; report the error",
        )
    linked = {p for _, p in snap.screen_plate}
    return Check(
        "plates and screens",
        True,
        f"{len(snap.screens)} screens, {len(snap.plates)} plates "
        f"({len(linked & set(snap.plates))} in a screen); "
        f"{len(in_plates)} of {len(ids)} sampled filesets are plates",
    )


def repository_files(managed: Path, filesets: list) -> Check:
    """Do the server's files appear under [omero] managed_dir with their sizes?"""
    entries = [e for fs in filesets for e in fs.entries][:SAMPLE]
    if not entries:
        return Check("repository files", True, "no fileset on the server to compare yet")
    wrong = []
    for e in entries:
        try:
            size = os.stat(managed / e.repo_path).st_size
        except OSError as exc:
            wrong.append(f"{e.repo_path}: {exc.strerror}")
            continue
        if size != e.size:
            wrong.append(f"{e.repo_path}: {size} bytes here, {e.size} on the server")
    if wrong:
        return Check(
            "repository files",
            False,
            f"{len(wrong)} of {len(entries)} sampled files differ: {wrong[0]}",
            f"is [omero] managed_dir ({managed}) the server's ManagedRepository, mounted here?",
        )
    return Check("repository files", True, f"{len(entries)} sampled files found with their sizes")


def local_checks(config: RepoConfig) -> list[Check]:
    """What this machine must offer: the ManagedRepository mount, writable for in-place
    imports, and staging on the same filesystem for ln/ln_rm."""
    managed, staging = config.managed_dir, config.staging_dir
    rows = []
    if not managed.is_dir():
        rows.append(
            Check(
                "managed_dir",
                False,
                f"{managed} is not a directory",
                "mount the server's ManagedRepository there",
            )
        )
        return rows
    try:
        fd, scratch = tempfile.mkstemp(prefix=".omerofs-check-", dir=managed)
        os.close(fd)
        os.unlink(scratch)
        rows.append(Check("managed_dir", True, f"{managed} is writable here (in-place modes)"))
    except OSError as exc:
        rows.append(
            Check(
                "managed_dir",
                False,
                f"{managed}: cannot create a file ({exc.strerror})",
                "mount it read-write for ln/ln_s/cp modes, or import with upload only",
            )
        )
    probe = staging if staging.exists() else staging.parent
    try:
        same = os.stat(probe).st_dev == os.stat(managed).st_dev
    except OSError as exc:
        rows.append(Check("staging", False, f"{probe}: {exc.strerror}", "create it"))
        return rows
    rows.append(
        Check("staging", True, f"{staging} is on the ManagedRepository's filesystem (ln works)")
        if same
        else Check(
            "staging",
            False,
            f"{staging} is on another filesystem than {managed}: ln/ln_rm cannot link",
            "set [ingest] staging to a directory on the ManagedRepository's filesystem, "
            "or use cp/upload",
        )
    )
    return rows
