"""The same test world on each backend, for the contract suite.

``local``: the embedded catalog, always. ``omero``: a live OMERO server named by
``OMEROFS_TEST_OMERO=omero://ADMIN:PASSWORD@HOST:PORT``; its ManagedRepository, mounted
here, in ``OMEROFS_TEST_OMERO_MANAGED`` (needed by in-place modes and file checks). The
OMERO world creates groups and users with a unique suffix, maps them to the same local
uids/gids as the embedded world with an idmap file, and leaves them and their filesets on
the server (OMERO never deletes users): point it at a test server only.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from omerofs.backend import Backend, open_backend
from omerofs.catalog.protocol import Experimenter, Group
from omerofs.config import RepoConfig, init_repo
from omerofs.imports.importer import Importer, Target
from tests.conftest import Repo

OMERO_URL = os.environ.get("OMEROFS_TEST_OMERO", "")
OMERO_MANAGED = os.environ.get("OMEROFS_TEST_OMERO_MANAGED", "")
NO_SERVER = (
    "no live OMERO server: set OMEROFS_TEST_OMERO=omero://ADMIN:PASSWORD@HOST:PORT "
    "(and OMEROFS_TEST_OMERO_MANAGED=its ManagedRepository mounted here) to run these"
)

GROUPS = {"priv": ("rw----", 71001), "ro": ("rwr---", 71002), "ra": ("rwra--", 71003),
          "rw": ("rwrw--", 71004)}  # fmt: skip
USERS = {"alice": (3001, "priv"), "bob": (3002, "priv"), "carol": (3003, "ro"),
         "olga": (3004, "priv"), "adam": (3005, None)}  # fmt: skip
MEMBERS = [(g, u, False) for g in ("ro", "ra", "rw") for u in ("alice", "bob")]
MEMBERS += [("priv", "olga", True)]


@dataclass
class World:
    """A backend holding the users and groups of ``tests.conftest.Repo.populate``."""

    kind: str
    config: RepoConfig
    backend: Backend
    names: dict[str, str]  # test name (alice, priv) -> name on the backend
    source_dir: Path  # where sources live (same filesystem as the repository: ln works)
    cleanup: list[Any] = field(default_factory=list)

    @property
    def catalog(self) -> Any:
        return self.backend.catalog

    @property
    def importer(self) -> Importer:
        return self.backend.importer

    def user(self, name: str) -> Experimenter:
        return self.catalog.experimenter_by_name(self.names[name])

    def group(self, name: str) -> Group:
        return self.catalog.group_by_name(self.names[name])

    def import_path(
        self, path: Path, user: str, group: str, mode: str, target: str | None = None
    ) -> Any:
        owner, grp = self.importer.resolve_identity(self.names[user], self.names[group])
        return self.importer.import_fileset_path(path, owner, grp, mode, Target.parse(target))

    @property
    def can_link(self) -> bool:
        return self.kind == "local" or bool(OMERO_MANAGED)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            fn()
        self.backend.close()


def local_world(root: Path) -> World:
    repo = Repo(root / "repo").populate()
    repo.catalog.close()
    backend = open_backend(repo.config)
    names = {n: n for n in [*GROUPS, *USERS]}
    source = root / "sources"
    source.mkdir()
    return World("local", repo.config, backend, names, source)


def omero_world(root: Path) -> World:
    if not OMERO_URL:
        pytest.skip(NO_SERVER)
    import omero
    import omero.clients  # noqa: F401
    from omero.model import ExperimenterGroupI, ExperimenterI, PermissionsI
    from omero.rtypes import rbool, rstring

    url = urlparse(OMERO_URL)
    tag = uuid.uuid4().hex[:6]
    names = {n: f"{n}-{tag}" for n in [*GROUPS, *USERS]}
    client = omero.client(url.hostname, url.port or 4064)
    sf = client.createSession(url.username, url.password)
    admin = sf.getAdminService()
    try:
        group_ids = {}
        for name, (perms, _gid) in GROUPS.items():
            g = ExperimenterGroupI()
            g.setName(rstring(names[name]))
            g.setLdap(rbool(False))
            g.getDetails().setPermissions(PermissionsI(perms))
            group_ids[name] = admin.createGroup(g)
        system, user_group = admin.lookupGroup("system"), admin.lookupGroup("user")
        user_ids = {}
        for name, (_uid, default) in USERS.items():
            e = ExperimenterI()
            e.setOmeName(rstring(names[name]))
            e.setFirstName(rstring(name))
            e.setLastName(rstring("omerofs-test"))
            e.setLdap(rbool(False))
            groups = [user_group] + ([system] if default is None else [])
            first = admin.getGroup(group_ids[default or "rw"])
            user_ids[name] = admin.createExperimenterWithPassword(
                e, rstring(uuid.uuid4().hex), first, groups
            )
        for group, user, owner in MEMBERS:
            exp = admin.getExperimenter(user_ids[user])
            grp = admin.getGroup(group_ids[group])
            admin.addGroups(exp, [grp])
            if owner:
                admin.addGroupOwners(grp, [exp])
    finally:
        client.__del__()
    cred = root / "omero-credentials.toml"
    cred.write_text(f'username = "{url.username}"\npassword = "{url.password}"\n')
    cred.chmod(0o600)
    idmap = root / "idmap.toml"
    idmap.write_text(
        "[users]\n"
        + "".join(f'"{names[u]}" = {uid}\n' for u, (uid, _) in USERS.items())
        + "[groups]\n"
        + "".join(f'"{names[g]}" = {gid}\n' for g, (_, gid) in GROUPS.items())
    )
    managed = Path(OMERO_MANAGED) if OMERO_MANAGED else root / "no-local-managed-repository"
    config = init_repo(
        root / "repo",
        omero={
            "host": url.hostname or "localhost",
            "port": str(url.port or 4064),
            "credentials": str(cred),
            "managed_dir": str(managed),
            "idmap": str(idmap),
        },
    )
    source = managed.parent / f"omerofs-test-{tag}" if OMERO_MANAGED else root / "sources"
    source.mkdir(parents=True)
    backend = open_backend(config)
    world = World("omero", config, backend, names, source)
    world.cleanup.append(lambda: _rmtree(source))
    return world


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def open_world(kind: str, root: Path) -> World:
    return local_world(root) if kind == "local" else omero_world(root)
