"""Running omerofs as a service (issue 12, item 6): systemd's readiness protocol over a
real datagram socket, journal-formatted stderr, the unit files, and ``mount -t
fuse.omerofs`` / fstab lines through mount(8) with the helper installed in /sbin."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omerofs import mount_helper, units
from omerofs.daemon_lock import running_daemons
from omerofs.errors import UsageError
from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, wait_for

ALICE = 3001
HELPER = Path("/sbin") / units.HELPER


def daemon(repo_root: Path, *args: str, env: dict | None = None, stderr=None):
    return subprocess.Popen(
        [sys.executable, "-m", "omerofs.cli", "-r", str(repo_root), *args, "--foreground"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen, mountpoint: Path) -> None:
    """Teardown: the daemon we started, by its pid; never a mount left behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if _in_mount_table(mountpoint):  # (a dead daemon's mount fails os.path.ismount)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@needs_fuse
@needs_root
def test_ready_is_sent_once_mounted_and_stopping_on_sigterm(populated, world_dir) -> None:
    """The systemd side of Type=notify: a datagram socket named by NOTIFY_SOCKET."""
    mp = world_dir / "ingest"
    mp.mkdir()
    address = str(world_dir / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        proc = daemon(populated.config.root, "ingest", str(mp), env={"NOTIFY_SOCKET": address})
        try:
            message = sock.recv(4096).decode().split("\n")
            assert "READY=1" in message and f"MAINPID={proc.pid}" in message
            assert os.path.ismount(mp) and "alice" in os.listdir(mp)  # up when READY says so
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode() == "STOPPING=1"
            assert proc.wait(timeout=15) == 0  # a clean stop: unmounted, exit 0
            assert not os.path.ismount(mp)
        finally:
            stop(proc, mp)


@needs_fuse
@needs_root
def test_journal_gets_priorities_instead_of_timestamps(populated, world_dir) -> None:
    mp = world_dir / "view"
    mp.mkdir()
    journal = world_dir / "journal.txt"
    with open(journal, "wb") as stream:
        st = os.fstat(stream.fileno())
        proc = daemon(
            populated.config.root,
            "mount",
            str(mp),
            env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stderr=stream,
        )
    try:
        wait_for(lambda: "view mounted at" in journal.read_text(), timeout=30, what="a log line")
    finally:
        stop(proc, mp)
    lines = journal.read_text().splitlines()
    assert f"<6>omerofs: view mounted at {mp} (pid {proc.pid})" in lines
    assert all(line.startswith("<") for line in lines), lines


def test_units_render_and_verify(world_dir) -> None:
    written = units.install(
        world_dir / "units", world_dir / "sbin", world_dir / "etc", reload=False
    )
    assert {p.name for p in written} == {*units.UNITS, units.HELPER}
    view = (world_dir / "units/omerofs-view@.service").read_text()
    assert "Type=notify" in view and "Restart=on-failure" in view
    assert f"ExecStart={sys.executable} -m omerofs.cli mount %f --foreground" in view
    ingest = (world_dir / "units/omerofs-ingest@.service").read_text()
    assert f"ExecStart={sys.executable} -m omerofs.cli ingest %f --foreground" in ingest
    helper = world_dir / "sbin" / units.HELPER
    assert os.access(helper, os.X_OK) and sys.executable in helper.read_text()
    if shutil.which("systemd-analyze"):
        for name in units.UNITS:  # an instance, as systemctl would load it
            instance = world_dir / "units" / name.replace("@.", "@mnt-x.")
            shutil.copy(world_dir / "units" / name, instance)
            res = subprocess.run(
                ["systemd-analyze", "verify", "--man=no", str(instance)],
                capture_output=True,
                text=True,
            )
            assert res.returncode == 0 and "omerofs" not in res.stderr, res.stderr


def test_units_write_the_repository_and_refuse_a_non_repository(populated, world_dir) -> None:
    units.install(
        world_dir / "u", world_dir / "s", world_dir / "e", populated.config.root, reload=False
    )
    assert f"OMEROFS_REPO={populated.config.root}\n" in (world_dir / "e/omerofs.env").read_text()
    with pytest.raises(UsageError, match="not an omerofs repository"):
        units.install(world_dir / "u", world_dir / "s", world_dir / "e", world_dir, reload=False)


INGEST_OPTIONS = "ingest,transfer=cp,settle=10,concurrency=3,xattrs,metrics=9464"
INGEST_ARGS = [
    "--transfer",
    "cp",
    "--settle",
    "10",
    "--concurrency",
    "3",
    "--xattrs",
    "--metrics",
    "9464",
]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["R", "/m", "-o", "rw,view,_netdev,nofail"], ["-r", "R", "mount", "/m"]),
        (
            ["R", "/m", "-o", "ro,x-systemd.automount,nopassthrough"],
            ["-r", "R", "mount", "/m", "--no-passthrough"],
        ),
        (["R", "/m", "-n", "-o", INGEST_OPTIONS], ["-r", "R", "ingest", "/m", *INGEST_ARGS]),
    ],
)
def test_mount_options_translate(argv, expected) -> None:
    assert mount_helper.parse(argv).argv() == expected


@pytest.mark.parametrize(
    "argv,message",
    [
        (["R", "/m", "-o", "view,bogus"], "unknown mount option 'bogus'"),
        (["R", "/m", "-o", "view,transfer=cp"], "unknown mount option 'transfer=cp' for -o view"),
        (["R", "/m", "-o", "ingest,transfer=mv"], "transfer=mv: expected one of"),
        (["R", "/m", "-o", "view,ingest"], "not both"),
        (["R", "-o", "view"], "usage: mount.fuse.omerofs"),
        (["R", "/m", "-o", "metrics=host:"], "--metrics"),
    ],
)
def test_bad_mount_options_are_errors(argv, message) -> None:
    with pytest.raises(UsageError, match=message):
        mount_helper.parse(argv)


@pytest.fixture
def sbin_helper():
    """The helper where mount(8) looks for it; an admin's own copy is put back after."""
    saved = HELPER.with_name(HELPER.name + ".omerofs-test-saved")
    if HELPER.exists():
        HELPER.rename(saved)
    units._write(HELPER, units.render_helper(), 0o755)
    try:
        yield HELPER
    finally:
        HELPER.unlink(missing_ok=True)
        if saved.exists():
            saved.rename(HELPER)


def _unmount_and_reap(config, mountpoint: Path) -> None:
    """Teardown for daemons mount(8) started: unmount, then end the daemon by its pid."""
    pids = [d.pid for d in running_daemons(config) if d.mountpoint == str(mountpoint)]
    if _in_mount_table(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    for pid in pids:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


@needs_fuse
@needs_root
def test_mount_t_fuse_omerofs_for_real(populated, world_dir, sbin_helper) -> None:
    config = populated.config
    img = make_tiff(world_dir / "src" / "cells.tif", seed=2)
    populated.import_file(img, "alice", mode="cp")
    view, ingest = world_dir / "view", world_dir / "ingest"
    view.mkdir()
    ingest.mkdir()
    try:
        res = subprocess.run(
            ["mount", "-t", "fuse.omerofs", str(config.root), str(view), "-o", "view,_netdev"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(view)
        found = subprocess.run(
            as_user(ALICE, ["find", str(view / "alice")]), capture_output=True, text=True
        )
        assert "cells.tif" in found.stdout, found.stderr
        fstab = world_dir / "fstab"  # an fstab line, read by mount(8) itself
        fstab.write_text(
            f"{config.root} {ingest} fuse.omerofs ingest,transfer=cp,settle=0.3,xattrs,noauto 0 0\n"
        )
        res = subprocess.run(
            ["mount", "--fstab", str(fstab), str(ingest)], capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        daemons = {d.role: d for d in running_daemons(config)}
        assert daemons["ingest"].mountpoint == str(ingest)
        target = ingest / "alice/D/new.tif"
        script = f"mkdir -p {target.parent} && cp {img} {target}"
        subprocess.run(as_user(ALICE, ["/bin/sh", "-c", script]), check=True)
        wait_for(
            lambda: os.getxattr(target, "user.omerofs.state") == b"imported",
            timeout=30,
            what="the import through the fstab-mounted ingest area (transfer=cp, xattrs)",
        )
        res = subprocess.run(["umount", str(view)], capture_output=True, text=True)
        assert res.returncode == 0 and not os.path.ismount(view), res.stderr
        wait_for(
            lambda: "view" not in {d.role for d in running_daemons(config)},
            what="the view daemon to exit after umount",
        )
        bad = subprocess.run(
            ["mount", "-t", "fuse.omerofs", str(config.root), str(view), "-o", "view,bogus"],
            capture_output=True,
            text=True,
        )
        assert bad.returncode == 1 and "unknown mount option 'bogus'" in bad.stderr
        assert not os.path.ismount(view)
    finally:
        _unmount_and_reap(config, view)
        _unmount_and_reap(config, ingest)


@needs_fuse
@needs_root
def test_ingest_daemon_runs_the_notifier(populated, mount_view, world_dir) -> None:
    """With [notify] in omerofs.toml the ingest daemon runs omerofs.notify's notifier as
    one more task: a failed import reaches a real webhook receiver on 127.0.0.1."""
    import http.server
    import threading

    received: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with open(populated.config.root / "omerofs.toml", "a") as toml:
            toml.write(
                "\n[notify]\npoll_interval = 0.05\n[[notify.webhook]]\nname = 'hook'\n"
                f"url = 'http://127.0.0.1:{server.server_address[1]}/omerofs'\n"
            )
        daemon = mount_view(populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.3"))
        bad = world_dir / "bad.tif"
        bad.write_bytes(b"no image here\n" * 20)
        script = f"mkdir -p {daemon.mountpoint}/alice/D && cp {bad} {daemon.mountpoint}/alice/D/"
        subprocess.run(as_user(ALICE, ["/bin/sh", "-c", script]), check=True)
        wait_for(lambda: received, timeout=60, what="the webhook for the failed import")
        assert b"bad.tif" in received[0]
        assert "notifications on: webhook:hook" in daemon.log.read_text()
    finally:
        server.shutdown()
        server.server_close()


def _in_mount_table(mountpoint: Path) -> bool:
    """Mounted, by the kernel's table alone: a stat could wait for the daemon."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mountpoint) for line in f)


@needs_fuse
@needs_root
@pytest.mark.parametrize("role", ["mount", "ingest"])
def test_sigterm_while_starting_still_unmounts_cleanly(populated, world_dir, role) -> None:
    """systemd may stop a daemon the moment it starts: a SIGTERM that comes once the
    mount exists but before the loop answers anything (or watches for signals) is held,
    then unmounts cleanly; it neither kills the daemon (a stale mount) nor hangs it (a
    stat of its own root that nobody answers). Several rounds: the timing varies."""
    for round_ in range(4):
        mp = world_dir / f"{role}-{round_}"
        mp.mkdir()
        proc = daemon(populated.config.root, role, str(mp))
        try:
            deadline = time.monotonic() + 30
            while not _in_mount_table(mp):
                assert proc.poll() is None and time.monotonic() < deadline, "did not mount"
                time.sleep(0.001)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert not _in_mount_table(mp)
        finally:  # a hung daemon's mount: detach it first, or stopping it would hang
            if proc.poll() is None and _in_mount_table(mp):
                subprocess.run(["umount", "-l", str(mp)], capture_output=True)
            stop(proc, mp)
