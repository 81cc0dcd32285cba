"""The view and the ingest mount re-exported by a real nfs-ganesha (FSAL VFS) on 127.0.0.1,
read and written through a real NFS client (libnfs's nfs-cat/nfs-ls/nfs-cp: the kernel
here may have no NFS client): reads over NFSv4, writes over NFSv3 (see ``Ganesha.put``).

FSAL VFS keeps each file as a kernel file handle and reopens it with open_by_handle_at
whenever it needs it; after the kernel evicted the FUSE inodes (drop_caches) that open
must still find the file (tests/test_nfs_handles.py is the same at the kernel level).
ganesha runs with its own config, log, pid file and recovery directory on free ports (no
dbus; rpcbind only for NFSv3's MOUNT, started here when none runs), stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import make_tiff, needs_fuse, needs_root, wait_for
from tests.samba import free_port
from tests.test_ingest_mount import sh
from tests.test_nfs_handles import drop_caches

pytestmark = [needs_fuse, needs_root]
TOOLS = Path(__file__).resolve().parent.parent / "tools"
CLIENT_TIMEOUT = 60


def ganesha_missing() -> str | None:
    """Why nfs-ganesha cannot run here, or None; installs it first when it can."""
    tools = ("ganesha.nfsd", "nfs-cat", "nfs-cp")
    if not all(shutil.which(t) for t in tools):
        install = ["bash", str(TOOLS / "install-ganesha.sh")]
        subprocess.run(install, capture_output=True, timeout=600)
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        return f"nfs-ganesha is not installed and could not be ({', '.join(missing)} missing)"
    if not list(Path("/usr/lib").glob("*/ganesha/libfsalvfs.so")):
        return "ganesha's VFS FSAL is missing (apt-get install nfs-ganesha-vfs)"
    return None


GANESHA_CONF = """\
NFS_CORE_PARAM {{
    Protocols = 3, 4;
    NFS_Port = {port};
    MNT_Port = {mnt_port};
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {state}/recovery; }}
EXPORT {{
    Export_Id = 1;
    Path = {path};
    Pseudo = /{pseudo};
    Access_Type = {access};
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
"""


class Ganesha:
    """One running ganesha.nfsd, and libnfs's command-line client to talk to it."""

    def __init__(self, port: int, export: Path, pseudo: str, log: Path) -> None:
        self.port, self.export, self.pseudo, self.log = port, export, pseudo, log

    def url(self, rel: str, uid: int = 0, gid: int = 0, version: int = 4) -> str:
        ids = f"uid={uid}&gid={gid}"
        if version == 4:  # the pseudo file system, straight to the NFS port
            return f"nfs://127.0.0.1/{self.pseudo}/{rel}?version=4&nfsport={self.port}&{ids}"
        # NFSv3 mounts the export's path through MOUNT; the ports come from rpcbind
        return f"nfs://127.0.0.1{self.export}/{rel}?version=3&{ids}"

    def _client(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run(args, capture_output=True, timeout=CLIENT_TIMEOUT)
        if res.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed: {res.stderr.decode(errors='replace')}\n"
                f"ganesha log: {self.log.read_text(errors='replace')[-3000:]}"
            )
        return res

    def cat(self, rel: str, uid: int = 0, gid: int = 0, version: int = 4) -> bytes:
        return self._client("nfs-cat", self.url(rel, uid, gid, version)).stdout

    def ls(self, rel: str, uid: int = 0, gid: int = 0, version: int = 4) -> list[str]:
        out = self._client("nfs-ls", self.url(rel, uid, gid, version)).stdout.decode()
        return sorted(line.split(None, 5)[5] for line in out.splitlines() if line.strip())

    def put(self, local: Path, rel: str, uid: int = 0, gid: int = 0) -> None:
        """Written over NFSv3: libnfs 4.0's NFSv4 writes never send a WRITE (the file is
        created empty and nfs-cp fails, on a plain directory too; Kodi's NFSv4 copies
        fail the same way), so v4 writes cannot be tested with this client."""
        self._client("nfs-cp", str(local), self.url(rel, uid, gid, version=3))


def _rpcbind_running() -> bool:
    res = subprocess.run(["rpcinfo", "-p", "127.0.0.1"], capture_output=True, timeout=30)
    return res.returncode == 0


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def rpcbind() -> Iterator[None]:
    """rpcbind for NFSv3's MOUNT (NFSv4 alone needs none); one already running is used
    and left alone, one started here is stopped by PID."""
    if _rpcbind_running():
        yield
        return
    proc = subprocess.Popen(
        ["rpcbind", "-f", "-w"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(_rpcbind_running, timeout=30, interval=0.1, what="rpcbind")
        yield
    finally:
        _stop(proc)


@contextmanager
def ganesha(state: Path, export: Path, pseudo: str, access: str = "RO") -> Iterator[Ganesha]:
    """ganesha.nfsd re-exporting ``export`` (NFSv4 as /``pseudo``, NFSv3 by its path),
    stopped by PID at the end."""
    state.mkdir(parents=True, exist_ok=True)
    port, mnt_port = free_port(), free_port()
    conf = state / "ganesha.conf"
    conf.write_text(
        GANESHA_CONF.format(
            port=port, mnt_port=mnt_port, state=state, path=export, pseudo=pseudo, access=access
        )
    )
    log = state / "ganesha.log"
    server = Ganesha(port, export, pseudo, log)
    with rpcbind():
        proc = subprocess.Popen(
            [
                "ganesha.nfsd",
                "-F",
                "-f",
                str(conf),
                "-L",
                str(log),
                "-p",
                str(state / "pid"),
                "-N",
                "NIV_EVENT",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=state,
        )
        try:

            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"ganesha died: {log.read_text(errors='replace')}")
                res = subprocess.run(
                    ["nfs-ls", server.url("")], capture_output=True, timeout=CLIENT_TIMEOUT
                )
                return res.returncode == 0

            wait_for(up, timeout=60, interval=0.2, what="ganesha serving the export")
            yield server
        finally:
            _stop(proc)


@pytest.fixture
def nfs_ready() -> None:
    reason = ganesha_missing()
    if reason:
        pytest.skip(reason)


def test_view_over_nfs_after_eviction(nfs_ready, populated, mount_view, world_dir) -> None:
    src = make_tiff(world_dir / "sources" / "nfs.tif", shape=(4, 128, 128), dtype="uint8")
    fs = populated.import_file(src, "alice", "ro", "ln")
    view = mount_view(populated, "view")
    rel = f"alice/ManagedRepository/{fs.template_prefix}{fs.entries[0].name}"
    wait_for((view.mountpoint / rel).exists, what="the file in the view")
    expected = src.read_bytes()
    with ganesha(world_dir / "ganesha", view.mountpoint, "view") as nfs:
        assert nfs.cat(rel) == expected
        assert nfs.ls("alice/Groups/ro/Orphans") == [fs.entries[0].name]
        for _ in range(2):  # ganesha keeps handles; the kernel forgot the inodes
            drop_caches()
            assert nfs.cat(rel) == expected
            assert nfs.ls("alice/Groups/ro/Orphans") == [fs.entries[0].name]
            assert nfs.cat(f"alice/Groups/ro/Orphans/{fs.entries[0].name}") == expected


def test_ingest_over_nfs_after_eviction(nfs_ready, populated, mount_view, world_dir) -> None:
    mounted = mount_view(populated, "ingest", ("ingest", "--settle", "3600", "--transfer", "cp"))
    sh("alice", f"mkdir -p {mounted.mountpoint}/alice/P/D {mounted.mountpoint}/alice/P/E")
    staged = populated.config.staging_dir / "alice/P"
    first, second = world_dir / "first.bin", world_dir / "second.bin"
    first.write_bytes(os.urandom(300_000))
    second.write_bytes(os.urandom(200_000))
    alice = {"uid": 3001, "gid": 71001}
    with ganesha(world_dir / "ganesha", mounted.mountpoint, "ingest", "RW") as nfs:
        nfs.put(first, "alice/P/D/first.bin", **alice)
        assert (staged / "D/first.bin").read_bytes() == first.read_bytes()
        assert nfs.ls("alice/P", **alice) == ["D", "E"]  # ganesha now holds E's handle
        drop_caches()
        assert nfs.cat("alice/P/D/first.bin", **alice) == first.read_bytes()
        nfs.put(second, "alice/P/E/second.bin", **alice)  # into E, by its handle
        drop_caches()
        assert nfs.ls("alice/P/E", **alice) == ["second.bin"]
        assert nfs.cat("alice/P/E/second.bin", version=3, **alice) == second.read_bytes()
        assert (staged / "E/second.bin").read_bytes() == second.read_bytes()
        assert (staged / "E/second.bin").stat().st_uid == 3001
