"""An OMERO repository whose server is down (a real omero.client against a port that
refuses): the catalog serves its last persisted state, flagged stale, and both the view
and the ingest mount start and work from it (issue #14, "server outages")."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import omero.clients  # noqa: F401
import pytest
from omero.model import ExperimenterGroupI, PermissionsI
from omero.rtypes import rstring

from omerofs.backends.omero import records
from omerofs.backends.omero.cache import CatalogCache, describe_outage
from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.catalog.protocol import Fileset, FilesetEntry, Snapshot
from omerofs.catalog.sqlite import Database
from omerofs.config import load_config
from omerofs.errors import CatalogUnavailable
from omerofs.identity import IdMap
from tests.conftest import (
    MountedView,
    as_user,
    make_tiff,
    needs_fuse,
    needs_root,
    run_cli,
    wait_for,
)
from tests.conftest import free_port as refused_port

PREFIX = "alice_2/2026-12/02/13-00-00.000/"


def people(idmap: IdMap) -> Snapshot:
    """Users and groups as the server returned them before it went down (real omero-py
    objects through ``records``)."""

    def group(group_id: int, name: str, perms: str) -> ExperimenterGroupI:
        g = ExperimenterGroupI(group_id, True)
        g.setName(rstring(name))
        g.getDetails().setPermissions(PermissionsI(perms))
        return g

    groups = records.groups_of([group(0, "system", "rw----"), group(5, "lab", "rwr---")], idmap)
    memberships = records.memberships_of([[5, 2, False], [5, 3, False], [0, 0, True]], groups)
    experimenters = records.experimenters_of(
        [[0, "root"], [2, "alice"], [3, "bob"]], memberships, groups, {2: 5, 3: 5}, idmap
    )
    return Snapshot(
        event_id=900,
        max_fileset_id=11,
        experimenters=experimenters,
        groups=groups,
        memberships=memberships,
    )


def alice_fileset(managed: Path) -> Fileset:
    """A fileset imported before the outage, its file in the ManagedRepository."""
    placed = make_tiff(managed / PREFIX / "cells.tif", seed=5)
    return Fileset(
        id=11,
        owner_id=2,
        group_id=5,
        template_prefix=PREFIX,
        transfer="upload",
        created=1764680400.0,
        entries=(
            FilesetEntry(
                0,
                "data/cells.tif",
                PREFIX,
                "cells.tif",
                placed.stat().st_size,
                hashlib.sha1(placed.read_bytes()).hexdigest(),
                "SHA1-160",
                "image/tiff",
            ),
        ),
        image_count=1,
    )


@pytest.fixture
def down_repo(world_dir: Path):
    """An OMERO repository (``omerofs init --omero-*``) whose server refuses, with the
    state a previous run persisted."""
    cred = world_dir / "cred.toml"
    cred.write_text('username = "svc"\npassword = "secret"\n')
    cred.chmod(0o600)
    idmap = world_dir / "idmap.toml"
    idmap.write_text("[users]\nalice = 3001\nbob = 3002\n[groups]\nlab = 71001\n")
    managed = world_dir / "managed"
    managed.mkdir()
    root = world_dir / "orepo"
    result = run_cli(
        "-r", str(root), "init", "--omero-host", "127.0.0.1",
        "--omero-port", str(refused_port()), "--omero-credentials", str(cred),
        "--omero-managed-dir", str(managed), "--omero-idmap", str(idmap),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = load_config(root)
    db = Database(config.catalog_path, "repository state")
    try:
        cache = CatalogCache(db)
        cache.save_people(people(IdMap.load(idmap)))
        cache.save_filesets([alice_fileset(managed)], 0, None, 0, 11)
    finally:
        db.close()
    return config


def test_the_catalog_serves_its_last_known_state_while_the_server_is_down(down_repo) -> None:
    config = down_repo
    db = Database(config.catalog_path, "repository state")
    catalog = OmeroCatalog(config.omero, cache=CatalogCache(db))
    try:
        snap = catalog.snapshot_people()  # a real omero.client is refused underneath
        assert {e.name for e in snap.experimenters.values()} == {"root", "alice", "bob"}
        assert catalog.stale and "ConnectionRefused" in catalog.stale
        assert catalog.experimenter_by_name("alice").uid == 3001
        assert catalog.is_member("bob", "lab")
        assert catalog.last_event_id() == 900  # nothing newer can be known
        (fs,) = catalog.filesets_for(2, {5}, snap.max_fileset_id)
        assert fs.id == 11 and fs.entries[0].name == "cells.tif"
        assert catalog.filesets_for(3, set(), snap.max_fileset_id) == []  # bob's own: none
        with pytest.raises(CatalogUnavailable):
            catalog.fileset_by_prefix(PREFIX)  # "is it imported?" cannot be answered
        with pytest.raises(CatalogUnavailable):
            catalog.changes(900)
        outage = describe_outage(db)
        assert outage and "unreachable since" in outage and "serving users" in outage
    finally:
        catalog.close()
        db.close()


def test_without_saved_state_an_outage_is_an_error(world_dir: Path, down_repo) -> None:
    config = down_repo
    empty = Database(world_dir / "empty.db", "repository state")
    catalog = OmeroCatalog(config.omero, cache=CatalogCache(empty))
    try:
        with pytest.raises(CatalogUnavailable, match="ConnectionRefused"):
            catalog.snapshot_people()
        assert describe_outage(empty) is None  # never reached and nothing served
    finally:
        catalog.close()
        empty.close()


def test_cached_ranges_drop_what_the_server_no_longer_returns(world_dir: Path) -> None:
    db = Database(world_dir / "c.db", "repository state")
    try:
        cache = CatalogCache(db)

        def fs(i: int, owner: int, group: int) -> Fileset:
            return Fileset(i, owner, group, f"u_{owner}/{i}/", "upload", 0.0, ())

        cache.save_filesets([fs(1, 2, 5), fs(2, 3, 5), fs(3, 2, 6)], 0, None, 0, 10)
        assert [f.id for f in cache.filesets_for(2, {5}, 10)] == [1, 2, 3]
        # alice's own range fetched again: fileset 3 is gone on the server
        cache.save_filesets([fs(1, 2, 5)], 2, set(), 0, 10)
        assert [f.id for f in cache.filesets_for(0, None, 10)] == [1, 2]
        cache.forget_filesets([2])
        assert [f.id for f in cache.filesets_for(0, None, 10, after=0, limit=5)] == [1]
        snap = people(_idmap(world_dir))
        cache.save_people(snap)
        loaded, saved = cache.load_people()
        assert loaded.experimenters == snap.experimenters and loaded.groups == snap.groups
        assert loaded.memberships == snap.memberships and saved <= time.time()
    finally:
        db.close()


def _idmap(world_dir: Path) -> IdMap:
    path = world_dir / "idmap-c.toml"
    path.write_text("[users]\nalice = 3001\nbob = 3002\n[groups]\nlab = 71001\n")
    return IdMap.load(path)


@needs_fuse
@needs_root
def test_view_and_ingest_start_while_the_server_is_down(down_repo, world_dir: Path) -> None:
    config = down_repo
    mounts: list[MountedView] = []
    try:
        view_mp, ingest_mp = world_dir / "view", world_dir / "ingest"
        view_mp.mkdir()
        ingest_mp.mkdir()
        mounts.append(MountedView(config.root, view_mp, ("mount",)))
        mounts.append(
            MountedView(
                config.root,
                ingest_mp,
                ("ingest", "--transfer", "cp", "--settle", "0.3", "--xattrs"),
            )
        )
        # the view: alice's fileset from the saved tree, byte-exact
        placed = config.managed_dir / PREFIX / "cells.tif"
        path = view_mp / "alice" / "ManagedRepository" / PREFIX / "cells.tif"
        res = _run(3001, "sha1sum", str(path))
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[0] == hashlib.sha1(placed.read_bytes()).hexdigest()
        wait_for(lambda: "stale" in mounts[0].log.read_text(), timeout=10, what="stale in the log")
        # the ingest mount: alice can save; the import waits for the server
        assert os.stat(ingest_mp / "alice").st_uid == 3001
        target = ingest_mp / "alice" / "P" / "D" / "new.tif"
        res = _run(
            3001,
            "/bin/sh",
            "-c",
            f"mkdir -p {target.parent} && head -c 4096 /dev/urandom > {target}",
        )
        assert res.returncode == 0, res.stderr
        data = target.read_bytes()
        wait_for(
            lambda: _state(target) not in (None, "open", "settling", "staged", "importing"),
            timeout=30,
            what="the import attempt",
        )
        assert _state(target) != "imported"
        assert target.read_bytes() == data  # kept for when the server is back
        assert all(m.proc.poll() is None for m in mounts)  # neither daemon died
    finally:
        for m in reversed(mounts):
            m.close()


def _run(uid: int, *cmd: str):
    import subprocess

    return subprocess.run(as_user(uid, list(cmd)), capture_output=True, text=True, timeout=60)


def _state(path: Path) -> str | None:
    try:
        return os.getxattr(path, "user.omerofs.state").decode()
    except OSError:
        return None
