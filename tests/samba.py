"""A real smbd on 127.0.0.1 for the Samba front-door tests, and the smbclient to talk to it.

smbd runs with its own smb.conf (made by omerofs.shares.smb_conf), private, lock, state,
cache and pid directories in a temporary directory, on a free high port; it is stopped
by PID (its connection children too) in teardown. The Windows users are local unix
accounts with the catalog's uids, made for the test and removed after it, with Samba
passwords in the test's own tdb.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from omerofs.shares import smb_conf
from tests.conftest import free_port

TOOLS = Path(__file__).resolve().parent.parent / "tools"
PASSWORD = "omerofs-Test-1"


def samba_missing() -> str | None:
    """Why Samba cannot run here, or None; installs it first when it can."""
    if not all(shutil.which(t) for t in ("smbd", "smbclient", "smbpasswd")):
        subprocess.run(["bash", str(TOOLS / "install-samba.sh")], capture_output=True, timeout=600)
    missing = [t for t in ("smbd", "smbclient", "smbpasswd") if not shutil.which(t)]
    if missing:
        return f"Samba is not installed and could not be ({', '.join(missing)} missing)"
    if not list(Path("/usr/lib").glob("*/samba/vfs/streams_xattr.so")):
        return "Samba's VFS modules are missing (apt-get install samba-vfs-modules)"
    return None


@contextmanager
def unix_users(users: dict[str, int]) -> Iterator[None]:
    """Local accounts NAME with uid UID (as the catalog has them), removed afterwards.
    An account that already exists with the same uid is used and left alone."""
    made = []
    try:
        for name, uid in users.items():
            try:
                if pwd.getpwnam(name).pw_uid == uid:
                    continue
                raise RuntimeError(f"a unix user {name} exists with another uid")
            except KeyError:
                pass
            subprocess.run(
                ["useradd", "-M", "-N", "-g", "100", "-d", "/nonexistent", "-s",
                 "/usr/sbin/nologin", "-u", str(uid), name],
                check=True, capture_output=True,
            )  # fmt: skip
            made.append(name)
        yield
    finally:
        for name in made:  # -f: other tests may run processes with the same uid now
            subprocess.run(["userdel", "-f", name], capture_output=True)


class Smbd:
    """smbd serving the given mounts; ``client(user, share, commands)`` runs smbclient."""

    def __init__(
        self,
        base: Path,
        config,  # noqa: ANN001 - RepoConfig, Catalog: as smb_conf takes them
        catalog,  # noqa: ANN001
        ingest: Path | None,
        view: Path | None,
        extra_shares: str = "",
        case_insensitive: bool = False,
    ) -> None:
        self.base = base
        self.port = free_port()
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.log = base / "log.smbd"
        overrides = {
            "smb ports": str(self.port),
            "interfaces": "127.0.0.1",
            "bind interfaces only": "yes",
            "disable netbios": "yes",
            "private dir": str(base / "private"),
            "lock directory": str(base / "lock"),
            "state directory": str(base / "state"),
            "cache directory": str(base / "cache"),
            "pid directory": str(base / "pid"),
            "ncalrpc dir": str(base / "ncalrpc"),
            "log file": str(self.log),
            "log level": "1",
            "max log size": "0",
            "rpc start on demand helpers": "no",
        }
        self.text = smb_conf(
            config, catalog, ingest, view,
            case_insensitive=case_insensitive, global_overrides=overrides,
        )  # fmt: skip
        self.text += extra_shares
        self.conf = base / "smb.conf"
        self.conf.write_text(self.text)
        self.client_conf = base / "client.conf"
        self.client_conf.write_text("[global]\n   client min protocol = SMB2_10\n")
        self.proc = subprocess.Popen(
            ["smbd", "--foreground", "--no-process-group", "-s", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(base / "smbd.stderr", "wb"),  # noqa: SIM115 - lives with smbd
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"smbd did not start: {self.output()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def output(self) -> str:
        logs = [self.base / "smbd.stderr", self.log]
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    def add_user(self, name: str) -> None:
        subprocess.run(
            ["smbpasswd", "-c", str(self.conf), "-s", "-a", name],
            input=f"{PASSWORD}\n{PASSWORD}\n", text=True, check=True, capture_output=True,
        )  # fmt: skip

    def client(
        self, user: str, share: str, commands: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            "smbclient", f"//127.0.0.1/{share}", "-p", str(self.port), "-s", str(self.client_conf),
            "-U", f"{user}%{PASSWORD}", "-m", "SMB3", "-c", commands,
        ]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        failed = res.returncode != 0 or "NT_STATUS_" in res.stdout + res.stderr
        if check and failed:
            raise AssertionError(f"smbclient {commands!r} as {user}: {res.stdout}{res.stderr}")
        return res

    def _children(self) -> list[int]:
        kids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:  # ppid
                kids.append(int(entry.name))
        return kids

    def stop(self) -> None:
        if self.proc.poll() is None:
            kids = self._children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in kids:  # connection processes it forked, if still there
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
