"""Kernel passthrough, observed from outside: with it, the bytes of a read or a write
never pass through the daemon (its /proc/PID/io counters do not move); without it
(--no-passthrough, or a kernel that does not offer it) the daemon carries them. Both
paths must give the same bytes."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from omerofs.imports.transfer import sha1_file
from tests.conftest import MountedView, make_tiff, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import sh

pytestmark = [needs_fuse, needs_root]
MIB = 1 << 20


def daemon_io(mounted: MountedView) -> dict[str, int]:
    """Bytes the daemon read and wrote through syscalls (pread/pwrite and /dev/fuse)."""
    lines = Path(f"/proc/{mounted.proc.pid}/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def passthrough_state(mounted: MountedView) -> str:
    """What the daemon logged once FUSE_INIT was done; skip where the kernel lacks it."""
    marker = "kernel passthrough: "
    wait_for(lambda: marker in mounted.log.read_text(), timeout=10, what="the passthrough log")
    state = mounted.log.read_text().rsplit(marker, 1)[1].splitlines()[0]
    if "does not offer" in state or "lacks" in state:
        pytest.skip(f"no kernel passthrough here: {state}")
    return state


@pytest.fixture
def big_image(populated, world_dir):
    src = make_tiff(world_dir / "big.tif", shape=(16, 512, 1024), dtype="uint8")  # 8 MiB
    fs = populated.import_file(src, "alice", "ro", "ln")
    return src, f"alice/ManagedRepository/{fs.template_prefix}/{fs.entries[0].name}"


def test_view_reads_bypass_the_daemon(populated, mount_view, big_image) -> None:
    src, rel = big_image
    fast = mount_view(populated, "view")
    assert passthrough_state(fast) == "on"
    slow = mount_view(populated, "view-np", ("mount", "--no-passthrough"))
    # (both daemons log to one file: wait for the second one's line)
    wait_for(lambda: "off (--no-passthrough" in slow.log.read_text(), what="the daemon's log")
    for mounted, carried in ((fast, False), (slow, True)):
        before = daemon_io(mounted)["rchar"]
        assert sha1_file(mounted.mountpoint / rel) == sha1_file(src)
        moved = daemon_io(mounted)["rchar"] - before
        assert (moved >= os.path.getsize(src)) == carried, (moved, mounted.log.read_text()[-3000:])


def test_one_file_open_many_times_at_once(populated, mount_view, big_image) -> None:
    """Opens of one inode share its backing id; the last release forgets it, and the next
    open registers a new one."""
    src, rel = big_image
    view = mount_view(populated, "view")
    passthrough_state(view)
    path = view.mountpoint / rel
    expected = src.read_bytes()
    files = [open(path, "rb") for _ in range(3)]  # noqa: SIM115
    try:
        for i, f in enumerate(files):
            f.seek(i * MIB)
            assert f.read(MIB) == expected[i * MIB : (i + 1) * MIB]
        with mmap.mmap(files[0].fileno(), 0, prot=mmap.PROT_READ) as mapped:
            assert mapped[-MIB:] == expected[-MIB:]
    finally:
        for f in files:
            f.close()
    for _ in range(20):  # open, read, release: ids are registered and closed each time
        with open(path, "rb") as f:
            assert f.read(4096) == expected[:4096]


@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "daemon"])
def test_ingest_writes(populated, mount_view, world_dir, passthrough: bool) -> None:
    """Writes, appends, truncation and a reader beside a writer, both ways; with
    passthrough the daemon never carries the data."""
    args = ("ingest", "--settle", "3600", "--transfer", "cp")
    mounted = mount_view(populated, "ingest", args if passthrough else (*args, "--no-passthrough"))
    if passthrough:
        assert passthrough_state(mounted) == "on"
    target = mounted.mountpoint / "alice/P/D"
    sh("alice", f"mkdir -p {target}")
    data = os.urandom(8 * MIB)
    before = daemon_io(mounted)["wchar"]
    with open(target / "w.part", "wb") as f:
        f.write(data)
        with open(target / "w.part", "rb") as reader:  # a second open of the same inode
            assert reader.read() == data
        os.fsync(f.fileno())
    moved = daemon_io(mounted)["wchar"] - before
    assert (moved >= len(data)) == (not passthrough), moved
    with open(target / "w.part", "ab") as f:  # O_APPEND
        f.write(b"tail")
    staged = populated.config.staging_dir / "alice/P/D/w.part"
    assert staged.read_bytes() == data + b"tail"
    with open(target / "w.part", "r+b") as f:  # O_TRUNC-free rewrite, then ftruncate
        f.write(b"head")
        f.truncate(MIB)
    assert os.path.getsize(target / "w.part") == MIB
    assert staged.read_bytes() == b"head" + data[4:MIB]
    with open(target / "w.part", "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert (target / "w.part").read_bytes() == b"new" == staged.read_bytes()
