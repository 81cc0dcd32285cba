"""``omerofs check`` rows for an OMERO repository (omerofs/backends/omero/check.py)."""

from __future__ import annotations

from pathlib import Path

import omero
import omero.clients  # noqa: F401
import omero.sys
from omero.model import AdminPrivilegeI
from omero.rtypes import rstring

from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.backends.omero.check import account_checks, repository_files, run_checks
from omerofs.catalog.protocol import Fileset, FilesetEntry
from omerofs.config import init_repo
from tests.conftest import free_port as refused_port


def omero_repo(world_dir: Path, managed: Path):
    cred = world_dir / "cred.toml"
    cred.write_text('username = "svc"\npassword = "x"\n')
    cred.chmod(0o600)
    return init_repo(
        world_dir / "orepo",
        omero={
            "host": "127.0.0.1",
            "port": str(refused_port()),
            "credentials": str(cred),
            "managed_dir": str(managed),
        },
    )


def test_an_unreachable_server_fails_first_and_local_checks_still_run(world_dir, tmpfs) -> None:
    managed = tmpfs("managed")  # another filesystem than the repository's staging
    config = omero_repo(world_dir, managed)
    catalog = OmeroCatalog(config.omero)
    try:
        rows = run_checks(config, catalog)  # a real omero.client, refused
    finally:
        catalog.close()
    by_name = {r.name: r for r in rows}
    assert rows[0].name == "server reachable" and not rows[0].ok
    assert "ConnectionRefused" in rows[0].detail and "host/port" in rows[0].fix
    assert not by_name["sudo"].ok and "not run" in by_name["sudo"].detail
    assert by_name["managed_dir"].ok  # writable here
    assert not by_name["staging"].ok and "[ingest] staging" in by_name["staging"].fix
    assert all(r.fix for r in rows if not r.ok)  # every FAIL says what to do


def test_service_account_powers_from_the_event_context() -> None:
    def context(admin: bool, privileges: list[str], leads: list[int]) -> omero.sys.EventContext:
        ec = omero.sys.EventContext()
        ec.userName, ec.isAdmin, ec.leaderOfGroups = "svc", admin, leads
        ec.adminPrivileges = []
        for name in privileges:
            p = AdminPrivilegeI()
            p.setValue(rstring(name))
            ec.adminPrivileges.append(p)
        return ec

    account, sudo = account_checks(context(True, ["Sudo", "ReadSession"], []))
    assert account.ok and sudo.ok
    account, sudo = account_checks(context(True, [], []))  # a "data viewer": view only
    assert account.ok and not sudo.ok and "Sudo" in sudo.fix
    account, sudo = account_checks(context(False, [], [7, 9]))
    assert not account.ok and not sudo.ok and "7, 9" in sudo.detail


def test_repository_files_compared_with_the_mount(world_dir: Path) -> None:
    managed = world_dir / "managed"
    (managed / "u_2/x").mkdir(parents=True)
    (managed / "u_2/x/a.tif").write_bytes(b"12345")

    def fileset(size: int) -> Fileset:
        entry = FilesetEntry(0, "a.tif", "u_2/x/", "a.tif", size, "", "", "image/tiff")
        return Fileset(1, 2, 5, "u_2/x/", "upload", 0.0, (entry,))

    assert repository_files(managed, [fileset(5)]).ok
    wrong = repository_files(managed, [fileset(6)])
    assert not wrong.ok and "managed_dir" in wrong.fix
    assert not repository_files(world_dir / "elsewhere", [fileset(5)]).ok
    assert repository_files(managed, []).ok  # nothing to compare yet
