"""The OMERO backend's parts that need no server, exercised with real omero-py objects
(model objects, rtypes, parameters, a real ``omero.client`` against a port that refuses)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import omero
import omero.clients  # noqa: F401
import pytest
from omero.model import ExperimenterGroupI, PermissionsI
from omero.rtypes import rint, rlong, rstring, rtime

from omerofs.backends.omero import records
from omerofs.backends.omero.session import ServerConnection, connect_client
from omerofs.backends.omero.settings import OmeroSettings
from omerofs.backends.omero.writer import (
    build_fileset,
    build_settings,
    check_placeholder,
    upload,
    write_placeholder,
)
from omerofs.catalog.protocol import Snapshot
from omerofs.config import init_repo, load_config
from omerofs.errors import CatalogUnavailable, ImportFailed, UsageError
from omerofs.fs.view import RepositoryView
from omerofs.identity import IdMap, PermissionLevel, can_see, make_viewer
from omerofs.imports.filesets import plan_fileset
from tests.conftest import free_port as refused_port
from tests.conftest import make_tiff, run_cli

LEVELS = {
    "rw----": PermissionLevel.PRIVATE,
    "rwr---": PermissionLevel.READ_ONLY,
    "rwra--": PermissionLevel.READ_ANNOTATE,
    "rwrw--": PermissionLevel.READ_WRITE,
}


def group(group_id: int, name: str, perms: str) -> ExperimenterGroupI:
    g = ExperimenterGroupI(group_id, True)
    g.setName(rstring(name))
    g.getDetails().setPermissions(PermissionsI(perms))
    return g


def idmap_file(tmp_path: Path, text: str) -> IdMap:
    path = tmp_path / "idmap.toml"
    path.write_text(text)
    return IdMap.load(path)


@pytest.fixture
def idmap(tmp_path: Path) -> IdMap:
    return idmap_file(
        tmp_path,
        "[users]\nalice = 3001\nbob = 3002\nolga = 3004\nadam = 3005\n"
        "[groups]\npriv = 71001\nro = 71002\nra = 71003\nrw = 71004\n",
    )


# -- permissions, people, groups ---------------------------------------------------------


@pytest.mark.parametrize("perms,level", LEVELS.items())
def test_permission_level_from_omero_permissions(perms: str, level: PermissionLevel) -> None:
    assert records.level_of(PermissionsI(perms)) is level
    assert records.level_of(perms) is level


def omero_people(idmap: IdMap) -> Snapshot:
    """The test world as an OMERO server would return it, translated by ``records``."""
    objects = [
        group(0, "system", "rw----"),
        group(1, "user", "rwr---"),
        group(2, "guest", "rw----"),
        group(5, "priv", "rw----"),
        group(6, "ro", "rwr---"),
        group(7, "ra", "rwra--"),
        group(8, "rw", "rwrw--"),
        group(9, "nolocal", "rwr---"),
    ]
    groups = records.groups_of(objects, idmap)
    maps = [[0, 0, True], [1, 2, False], [0, 6, False], [5, 6, False]]
    maps += [[g, u, False] for g in (6, 7, 8) for u in (2, 3)]
    maps += [[5, 2, False], [5, 3, False], [5, 4, True], [9, 2, False]]
    memberships = records.memberships_of(maps, groups)
    rows = [[0, "root"], [1, "guest"], [2, "alice"], [3, "bob"], [4, "olga"], [6, "adam"]]
    rows += [[7, "nobody-here"]]
    experimenters = records.experimenters_of(rows, memberships, groups, {2: 5, 6: 0}, idmap)
    snap = Snapshot(event_id=1, groups=groups, experimenters=experimenters)
    snap.memberships = [m for m in memberships if m.experimenter_id in experimenters]
    return snap


def test_groups_and_users_from_omero_objects(idmap: IdMap) -> None:
    snap = omero_people(idmap)
    assert {g.name: (g.level, g.gid) for g in snap.groups.values()} == {
        "system": (PermissionLevel.PRIVATE, 0),
        "priv": (PermissionLevel.PRIVATE, 71001),
        "ro": (PermissionLevel.READ_ONLY, 71002),
        "ra": (PermissionLevel.READ_ANNOTATE, 71003),
        "rw": (PermissionLevel.READ_WRITE, 71004),
    }  # user/guest never hold data; "nolocal" has no local group: hidden
    people = {e.name: e for e in snap.experimenters.values()}
    assert set(people) == {"root", "alice", "bob", "olga", "adam"}
    assert (people["root"].uid, people["root"].admin) == (0, True)
    assert (people["adam"].uid, people["adam"].admin) == (3005, True)
    assert not people["alice"].admin and people["alice"].default_group_id == 5
    assert people["bob"].default_group_id == 5  # no OMERO default known: first real group
    assert ("user", "nobody-here") in idmap.unmapped
    assert ("group", "nolocal") in idmap.unmapped


def test_one_visibility_rule_for_omero_records(idmap: IdMap) -> None:
    """The records feed identity.can_see unchanged: the same matrix as the embedded one."""
    snap = omero_people(idmap)

    def viewer(exp_id: int):
        e = snap.experimenters[exp_id]
        pairs = [(m.group_id, m.owner) for m in snap.memberships if m.experimenter_id == exp_id]
        return make_viewer(exp_id, e.admin, pairs)

    alice, bob, olga, adam = 2, 3, 4, 6
    for gid, others_see in ((5, False), (6, True), (7, True), (8, True)):
        level = snap.groups[gid].level
        assert can_see(viewer(bob), alice, gid, level) is others_see
        assert can_see(viewer(alice), alice, gid, level)
        assert can_see(viewer(adam), alice, gid, level)
    assert can_see(viewer(olga), alice, 5, snap.groups[5].level)  # owner of the private group
    view = RepositoryView(snap, 1, lambda v, s: [])
    homes = {node.name for node in view._homes.values()}
    assert homes >= {"alice", "bob", "olga", "adam"}


def test_idmap_names_and_errors(tmp_path: Path) -> None:
    m = idmap_file(tmp_path, '[users]\nalice = "root"\nbob = 7\n[groups]\nlab = "root"\n')
    assert (m.uid("alice"), m.uid("bob"), m.uid("root"), m.gid("lab"), m.gid("root")) == (
        0,
        7,
        0,
        0,
        0,
    )
    assert m.uid("no-such-user-here") is None and m.uid("no-such-user-here") is None
    assert sum(1 for kind, _ in m.unmapped if kind == "user") == 1  # reported once
    with pytest.raises(UsageError, match="alice"):  # names the bad entry
        idmap_file(tmp_path, "[users]\nalice = 1.5\n")
    with pytest.raises(UsageError, match="cannot read"):
        IdMap.load(tmp_path / "missing.toml")


# -- rows -> records -----------------------------------------------------------------------


def test_projection_rows_to_fileset_entries() -> None:
    raw = [
        [
            rlong(9),
            rlong(31),
            rstring("/data/a/img.ome.tif"),
            rstring("u_2/2026-11/25/x/"),
            rstring("img.ome.tif"),
            rlong(10),
            rstring("ab" * 20),
            rstring("SHA1-160"),
            rstring("image/tiff"),
        ],
        [
            rlong(9),
            rlong(30),
            rstring("/data/a/main.tif"),
            rstring("u_2/2026-11/25/x"),
            rstring("main.tif"),
            rlong(20),
            rstring("cd" * 20),
            None,
            None,
        ],
    ]
    rows = records.rows(raw)
    assert rows[1][7] is None
    entries = records.entries_of(rows)[9]
    assert [e.name for e in entries] == ["main.tif", "img.ome.tif"]  # server order
    assert entries[0].path == "u_2/2026-11/25/x/"  # normalised like OMERO's own paths
    assert entries[0].repo_path == "u_2/2026-11/25/x/main.tif"
    assert (entries[0].hasher, entries[0].mimetype) == ("", "application/octet-stream")
    assert records.rows([[rtime(1700000000000), rint(3)]]) == [[1700000000000, 3]]


def test_event_log_rows_and_transfer_annotations() -> None:
    event = records.event_of(
        records.rows([[rlong(5), rstring("ome.model.fs.Fileset"), rlong(9), rstring("INSERT")]])[0]
    )
    assert (event.id, event.entity, event.entity_id, event.action) == (5, "Fileset", 9, "INSERT")
    for mode, cls in records.TRANSFER_CLASSES.items():
        assert records.transfer_of(cls) == mode
    assert records.transfer_of(None) == "upload"
    assert records.transfer_of("something.Else") == "upload"


# -- what is sent to the server ----------------------------------------------------------


def test_fileset_and_settings_for_import_fileset(world_dir: Path) -> None:
    folder = world_dir / "acq"
    make_tiff(folder / "b_main.tif")
    (folder / "a_notes.txt").write_text("notes")
    plan = plan_fileset(folder)
    fileset = build_fileset(plan, "ln_rm")
    paths = [e.getClientPath().getValue() for e in fileset.copyUsedFiles()]
    assert paths == [str(f.path).lstrip("/") for f in plan.files]  # Java's form: no leading /
    assert not paths[0].startswith("/")
    assert paths[0].endswith("b_main.tif")  # main file first: Bio-Formats opens the first
    (job,) = fileset.linkedJobList()
    versions = {nv.name: nv.value for nv in job.getVersionInfo()}
    assert versions["client"] == "omerofs" and versions["omero.version"]
    (note,) = fileset.linkedAnnotationList()
    assert note.getNs().getValue() == records.FILE_TRANSFER_NS
    assert note.getTextValue().getValue() == records.TRANSFER_CLASSES["ln_rm"]
    assert build_fileset(plan, "upload").linkedAnnotationList() == []

    settings = build_settings(42)
    assert settings.checksumAlgorithm.getValue().getValue() == "SHA1-160"
    assert settings.userSpecifiedTarget.getId().getValue() == 42
    assert not settings.userSpecifiedTarget.isLoaded()
    assert settings.doThumbnails.getValue() and not settings.noStatsInfo.getValue()
    assert build_settings(None).userSpecifiedTarget is None


class TokenStore:
    """The server writing the placeholder: visible on disk only once closed (RawFileBean
    flushes on close), at ``path`` — which is the client's path only with the right
    managed_dir."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.closed = path, b"", False

    def write(self, data: bytes, offset: int, length: int) -> None:
        self.data = data[:length]

    def close(self) -> None:
        self.path.write_bytes(self.data)
        self.closed = True


def test_placeholder_check_in_a_real_directory(world_dir: Path) -> None:
    managed = world_dir / "ManagedRepository" / "alice_2" / "x"
    managed.mkdir(parents=True)
    location = managed / "img.tif"
    store = TokenStore(location)
    write_placeholder(store, location, b"token-1")
    assert store.closed  # closed before we look: the server flushes only then
    check_placeholder(location, b"token-1")  # the server wrote where we look
    assert not location.exists()  # and we could delete it: ready for the link

    elsewhere = world_dir / "server-side" / "img.tif"
    elsewhere.parent.mkdir()
    write_placeholder(TokenStore(elsewhere), location, b"token-2")
    with pytest.raises(ImportFailed, match="not there.*managed_dir"):
        check_placeholder(location, b"token-2")  # wrong managed_dir

    location.write_bytes(b"another repository's bytes")
    with pytest.raises(ImportFailed, match="something other"):
        check_placeholder(location, b"token-3")
    assert location.read_bytes() == b"another repository's bytes"  # left alone


def test_placeholder_that_cannot_be_deleted(tmpfs) -> None:
    """A read-only mount of the repository: the check fails before any link is made."""
    mounted = tmpfs("managed")
    location = mounted / "img.tif"
    write_placeholder(TokenStore(location), location, b"token")
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    try:
        with pytest.raises(ImportFailed, match="write access to the ManagedRepository"):
            check_placeholder(location, b"token")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mounted)], check=True)


class ReceivingStore:
    """The server's side of an upload, as a file on disk (what RawFileStore.write does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")

    def write(self, data: bytes, offset: int, length: int) -> None:
        assert len(data) == length
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)


def test_upload_sends_every_byte_and_returns_the_sha1(world_dir: Path) -> None:
    source = world_dir / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    received = ReceivingStore(world_dir / "received")
    seen: list[int] = []
    sha1 = upload(received, source, seen.append)
    assert received.path.read_bytes() == source.read_bytes()
    assert sha1 == hashlib.sha1(source.read_bytes()).hexdigest()
    assert sum(seen) == source.stat().st_size
    empty = world_dir / "empty"
    empty.write_bytes(b"")
    assert upload(ReceivingStore(world_dir / "r2"), empty) == hashlib.sha1(b"").hexdigest()


# -- configuration and the connection --------------------------------------------------


def settings_for(tmp_path: Path, port: int, mode: int = 0o600) -> OmeroSettings:
    cred = tmp_path / "cred.toml"
    cred.write_text('username = "svc"\npassword = "secret"\n')
    cred.chmod(mode)
    return OmeroSettings("127.0.0.1", port, cred, tmp_path / "ManagedRepository")


def test_credentials_must_be_private(tmp_path: Path) -> None:
    assert settings_for(tmp_path, 4064).login() == ("svc", "secret")
    with pytest.raises(UsageError, match="chmod 600"):
        settings_for(tmp_path, 4064, 0o644).login()


def test_a_refusing_server_backs_off_and_recovers(tmp_path: Path) -> None:
    """A real omero.client against a closed port: CatalogUnavailable at once, no new
    attempt during the backoff, doubling delays, and a session once it answers again."""
    settings = settings_for(tmp_path, refused_port())
    now = [1000.0]
    attempts: list[float] = []
    server_up = [False]

    class Answering:  # what a logged-in client offers: a session
        def getSession(self):
            return "session"

        def closeSession(self):
            pass

        def __del__(self):
            pass

    def connect(s: OmeroSettings):
        attempts.append(now[0])
        if server_up[0]:
            return Answering()
        return connect_client(s)

    conn = ServerConnection(settings, connect, clock=lambda: now[0], max_delay=8)
    with pytest.raises(CatalogUnavailable, match="ConnectionRefused"):
        conn.call(lambda sf: sf)
    with pytest.raises(CatalogUnavailable, match="retrying in 1 s"):
        conn.call(lambda sf: sf)
    assert len(attempts) == 1
    delays = []
    for _ in range(5):
        now[0] = conn._retry_at
        with pytest.raises(CatalogUnavailable):
            conn.call(lambda sf: sf)
        delays.append(conn._retry_at - now[0])
    assert delays == [2, 4, 8, 8, 8]
    server_up[0] = True
    now[0] = conn._retry_at
    assert conn.call(lambda sf: sf) == "session"
    assert conn.last_error is None


def test_a_lost_session_reconnects_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, refused_port())
    made = []

    class Client:
        def getSession(self):
            return len(made)

        def closeSession(self):
            pass

        def __del__(self):
            pass

    def connect(_s):
        made.append(Client())
        return made[-1]

    conn = ServerConnection(settings, connect)
    calls = []

    def expires_once(sf):
        calls.append(sf)
        if len(calls) == 1:
            raise omero.RemovedSessionException()
        return sf

    assert conn.call(expires_once) == 2  # a new session, the call retried
    assert len(made) == 2


def test_omero_config_and_cli(world_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, refused_port())
    root = world_dir / "orepo"
    result = run_cli(
        "-r",
        str(root),
        "init",
        "--omero-host",
        "127.0.0.1",
        "--omero-port",
        str(settings.port),
        "--omero-credentials",
        str(settings.credentials),
        "--omero-managed-dir",
        str(world_dir / "managed"),
    )
    assert result.returncode == 0, result.stderr
    config = load_config(root)
    assert config.backend == "omero" and config.omero is not None
    assert config.managed_dir == world_dir / "managed"
    assert config.omero.credentials == settings.credentials
    result = run_cli("-r", str(root), "user", "add", "zed", "--uid", "4000")
    assert result.returncode != 0 and "manage its users" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("-r", str(root), "ls", "users")
    assert result.returncode != 0 and "ConnectionRefused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("-r", str(world_dir / "o2"), "init", "--omero-host", "h")
    assert result.returncode == 2 and "--omero-credentials" in result.stderr
    with pytest.raises(UsageError, match="absolute"):
        init_repo(world_dir / "o3", omero={"host": "h", "credentials": "/c", "managed_dir": "rel"})


def test_event_log_translated_for_the_view() -> None:
    """An import seen in OMERO's EventLog: the Fileset row at upload start is not news,
    its images are; the import's own dataset links and a new dataset's project link are
    part of the arrival; a later link moves a shown fileset; memberships name the member."""
    raw = [
        records.event_of(row)
        for row in [
            [1, "ome.model.fs.Fileset", 50, "INSERT"],
            [2, "ome.model.containers.Dataset", 7, "INSERT"],
            [3, "ome.model.containers.ProjectDatasetLink", 70, "INSERT"],
            [4, "ome.model.core.Image", 500, "INSERT"],
            [5, "ome.model.core.Image", 501, "INSERT"],
            [6, "ome.model.containers.DatasetImageLink", 900, "INSERT"],
            [7, "ome.model.annotations.CommentAnnotation", 3, "INSERT"],
            [8, "ome.model.containers.DatasetImageLink", 901, "INSERT"],
            [9, "ome.model.meta.GroupExperimenterMap", 40, "INSERT"],
            [10, "ome.model.meta.GroupExperimenterMap", 41, "DELETE"],
            [11, "ome.model.fs.Fileset", 12, "DELETE"],
            [12, "ome.model.containers.ProjectDatasetLink", 71, "INSERT"],
        ]
    ]
    refs = records.EventRefs(
        fileset_of_image={500: 50, 501: 50},
        fileset_of_link={900: 50, 901: 33},
        member_of_map={40: 2},
        dataset_of_link={70: 7, 71: 3},
    )
    events = [(e.id, e.entity, e.entity_id, e.action) for e in records.view_events(raw, refs)]
    assert events == [
        (2, "Dataset", 7, "INSERT"),
        (4, "Fileset", 50, "INSERT"),  # once, though it has two images
        (8, "Fileset", 33, "UPDATE"),  # an older fileset linked to a dataset: it moves
        (9, "GroupExperimenterMap", 2, "INSERT"),  # the member, not the map row
        (10, "GroupExperimenterMap", -1, "DELETE"),
        (11, "Fileset", 12, "DELETE"),
        (12, "ProjectDatasetLink", 71, "INSERT"),  # an existing dataset moved
    ]
    # an image whose fileset vanished before we looked, a link of a deleted image
    lost = records.view_events(
        [records.event_of([20, "ome.model.containers.DatasetImageLink", 902, "DELETE"])],
        records.EventRefs(),
    )
    assert [(e.entity, e.action) for e in lost] == [("Fileset", "UPDATE")]
