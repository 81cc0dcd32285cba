"""One ingest daemon per repository (issue 12, item 3): a second one fails with one line
naming the first; a daemon killed with -9 leaves no lock behind (the kernel drops the
flock with the process). Views each hold their own mountpoint's lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from omerofs.config import load_config
from omerofs.daemon_lock import DaemonLock, holder, lock_path, running_daemons
from omerofs.errors import AlreadyExists
from tests.conftest import MountedView, as_user, needs_fuse, needs_root, run_cli, wait_for

pytestmark = [needs_fuse, needs_root]


def test_second_ingest_names_the_running_one(populated, mount_view, world_dir) -> None:
    first = mount_view(populated, "ingest", ("ingest", "--settle", "60"))
    root = str(populated.config.root)
    other = world_dir / "ingest2"
    other.mkdir()
    for extra in ([], ["--foreground"]):  # refused by the CLI, and by the daemon itself
        res = run_cli("-r", root, "ingest", str(other), *extra)
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1, res.stderr
        assert lines[0].startswith("omerofs: an ingest daemon already serves"), lines
        assert f"pid {first.proc.pid}" in lines[0] and str(first.mountpoint) in lines[0]
        assert not os.path.ismount(other)
    data = json.loads(lock_path(populated.config, "ingest").read_text())
    assert data["pid"] == first.proc.pid and data["role"] == "ingest"
    assert data["mountpoint"] == str(first.mountpoint) and data["started"]
    (info,) = running_daemons(load_config(populated.config.root))
    assert (info.role, info.pid) == ("ingest", first.proc.pid)
    assert info.mountpoint == str(first.mountpoint)


def test_kill_9_leaves_no_lock(populated, world_dir) -> None:
    root = populated.config.root
    mp1, mp2 = world_dir / "i1", world_dir / "i2"
    mp1.mkdir()
    mp2.mkdir()
    first = MountedView(root, mp1, ("ingest", "--settle", "60"))
    second = None
    try:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        wait_for(lambda: holder(lock_path(populated.config, "ingest")) is None, what="release")
        second = MountedView(root, mp2, ("ingest", "--settle", "60"))  # starts: no stale lock
        (info,) = running_daemons(populated.config)
        assert info.pid == second.proc.pid and info.mountpoint == str(mp2)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp1)], capture_output=True)
        first.close()
        if second is not None:
            second.close()
    assert running_daemons(populated.config) == []


def test_views_hold_one_lock_each(populated, mount_view) -> None:
    a = mount_view(populated, "view-a")
    b = mount_view(populated, "view-b", ("mount", "--no-passthrough"))
    found = {(i.role, i.pid, i.mountpoint) for i in running_daemons(populated.config)}
    assert found == {
        ("view", a.proc.pid, str(a.mountpoint)),
        ("view", b.proc.pid, str(b.mountpoint)),
    }


def test_lock_in_process(populated, world_dir) -> None:
    """The same rules without a mount: held until released, then free again."""
    config = populated.config
    with DaemonLock.acquire(config, "ingest", world_dir / "x") as lock:
        assert holder(lock.path).pid == os.getpid()
        with pytest.raises(AlreadyExists, match=f"pid {os.getpid()}, mounted at {world_dir}/x"):
            DaemonLock.acquire(config, "ingest", world_dir / "y")
    assert holder(lock_path(config, "ingest")) is None
    assert lock_path(config, "ingest").read_text() == ""  # describes no one any more


def test_anyone_can_see_the_running_daemons(populated, mount_view) -> None:
    """``omerofs status`` runs for every user: reading a lock needs only read access."""
    first = mount_view(populated, "ingest", ("ingest", "--settle", "60"))
    script = (
        "from pathlib import Path; from omerofs.config import load_config; "
        "from omerofs.daemon_lock import running_daemons; "
        f"config = load_config(Path('{populated.config.root}')); "
        "print([(d.role, d.pid) for d in running_daemons(config)])"
    )
    res = subprocess.run(
        as_user(3002, [sys.executable, "-c", script]), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str([("ingest", first.proc.pid)])
