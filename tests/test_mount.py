"""The read-only view mounted for real, read by other uids through setpriv."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from omerofs.imports.transfer import sha1_file
from tests.conftest import (
    MountedView,
    as_user,
    make_tiff,
    needs_fuse,
    needs_root,
    run_cli,
    wait_for,
)

pytestmark = [needs_fuse, needs_root]
UIDS = {"alice": 3001, "bob": 3002, "carol": 3003, "olga": 3004, "adam": 3005}


@pytest.fixture
def scene(populated, world_dir):
    """Filesets of alice and bob in every group kind; returns {label: (fileset, source)}."""
    made = {}
    for i, (user, group, mode) in enumerate(
        [
            ("alice", "priv", "cp"),
            ("alice", "ro", "ln"),
            ("alice", "ra", "ln_s"),
            ("alice", "rw", "upload"),
            ("bob", "priv", "cp"),
            ("bob", "ro", "cp"),
        ]
    ):
        src = make_tiff(world_dir / "sources" / f"{user}-{group}.tif", seed=i)
        fs = populated.import_file(src, user, group, mode, f"Project:name:{group}P/Dataset:name:D")
        made[f"{user}-{group}"] = (fs, src)
    return made


def run_as(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user(UIDS[user], list(cmd)), capture_output=True, text=True, timeout=60
    )


def visible_names(mountpoint, user: str) -> set[str]:
    res = run_as(user, "find", f"{mountpoint}/{user}/ManagedRepository", "-type", "f")
    assert res.returncode == 0, res.stderr
    return {line.rsplit("/", 1)[1].removesuffix(".tif") for line in res.stdout.split()}


def test_every_user_sees_exactly_their_set(populated, scene, mount_view) -> None:
    view = mount_view(populated)
    mp = view.mountpoint
    expected = {
        "alice": {"alice-priv", "alice-ro", "alice-ra", "alice-rw", "bob-ro"},
        "bob": {"bob-priv", "bob-ro", "alice-ro", "alice-ra", "alice-rw"},
        "carol": {"alice-ro", "bob-ro"},
        "olga": {"alice-priv", "bob-priv"},
        "adam": set(scene),
    }
    for user, names in expected.items():
        assert visible_names(mp, user) == names, user
    # nobody gets into someone else's home, neither by listing nor by direct path
    fs, _ = scene["alice-ro"]
    direct = f"{mp}/alice/ManagedRepository/{fs.entries[0].repo_path}"
    for other in ("bob", "carol"):
        res = run_as(other, "ls", f"{mp}/alice")
        assert res.returncode != 0 and "Permission denied" in res.stderr
        res = run_as(other, "cat", direct)
        assert res.returncode != 0 and "Permission denied" in res.stderr
    # and a hidden fileset is not reachable by path in one's own home either
    fs_priv, _ = scene["alice-priv"]
    res = run_as("carol", "stat", f"{mp}/carol/ManagedRepository/{fs_priv.entries[0].repo_path}")
    assert res.returncode != 0 and "No such file" in res.stderr


def test_reads_pass_through_byte_exact(populated, scene, mount_view) -> None:
    view = mount_view(populated)
    for label, (fs, src) in scene.items():
        owner = label.split("-")[0]
        path = f"{view.mountpoint}/{owner}/ManagedRepository/{fs.entries[0].repo_path}"
        res = run_as(owner, "sha1sum", path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[0] == fs.entries[0].hash == sha1_file(src)
    named = f"{view.mountpoint}/bob/Groups/ra/Projects/raP/D/alice-ra.tif"  # an ln_s original
    assert run_as("bob", "sha1sum", named).stdout.split()[0] == scene["alice-ra"][0].entries[0].hash


def test_attributes_map_owner_group_and_modes(populated, scene, mount_view) -> None:
    view = mount_view(populated)
    fs, src = scene["alice-ro"]
    st = os.stat(f"{view.mountpoint}/bob/ManagedRepository/{fs.entries[0].repo_path}")
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (3001, 71002, "0o444")
    assert st.st_size == src.stat().st_size
    assert (
        st.st_mtime_ns
        == os.stat(populated.config.managed_dir / fs.entries[0].repo_path).st_mtime_ns
    )
    home = os.stat(f"{view.mountpoint}/bob")
    assert (home.st_uid, oct(home.st_mode & 0o777)) == (3002, "0o500")
    path = f"{view.mountpoint}/alice/ManagedRepository/{fs.entries[0].repo_path}"
    with pytest.raises(OSError) as info:  # xattrs are off: `ls -l` would ask per file
        os.getxattr(path, "user.omero.fileset")
    assert info.value.errno == errno.EOPNOTSUPP


def _open_and_close(path: str, mode: str) -> None:
    with open(path, mode):
        pass


@pytest.mark.parametrize(
    "action",
    [
        lambda p, f: _open_and_close(f, "ab"),
        lambda p, f: _open_and_close(os.path.join(p, "new.txt"), "w"),
        lambda p, f: os.mkdir(os.path.join(p, "newdir")),
        lambda p, f: os.unlink(f),
        lambda p, f: os.rename(f, f + ".x"),
        lambda p, f: os.chmod(f, 0o644),
        lambda p, f: os.truncate(f, 0),
        lambda p, f: os.setxattr(f, "user.x", b"1"),
        lambda p, f: os.symlink("x", os.path.join(p, "ln")),
    ],
    ids=[
        "append",
        "create",
        "mkdir",
        "unlink",
        "rename",
        "chmod",
        "truncate",
        "setxattr",
        "symlink",
    ],
)
def test_writes_fail_with_erofs(populated, scene, mount_view, action) -> None:
    view = mount_view(populated)
    fs, src = scene["alice-ro"]
    directory = f"{view.mountpoint}/alice/Groups/ro/Projects/roP/D"
    target = f"{directory}/alice-ro.tif"
    with pytest.raises(OSError) as info:
        action(directory, target)
    assert info.value.errno == errno.EROFS
    assert sha1_file(populated.config.managed_dir / fs.entries[0].repo_path) == sha1_file(src)


def test_new_import_appears_without_remount(populated, scene, mount_view, world_dir) -> None:
    view = mount_view(populated)
    dataset = f"{view.mountpoint}/carol/Groups/ro/Datasets/Fresh"
    orphans = f"{view.mountpoint}/carol/Groups/ro/Projects/roP/D"
    before = set(run_as("carol", "ls", orphans).stdout.split())  # warm the kernel caches
    assert not os.path.exists(dataset)
    src = make_tiff(world_dir / "late" / "late.tif", seed=42)
    res = run_cli(
        "-r",
        str(populated.config.root),
        "import",
        str(src),
        "--user",
        "bob",
        "--group",
        "ro",
        "-T",
        "Dataset:name:Fresh",
    )
    assert res.returncode == 0, res.stderr
    wait_for(
        lambda: "late.tif" in run_as("carol", "ls", dataset).stdout,
        timeout=10,
        what="the new import in carol's view",
    )
    assert set(run_as("carol", "ls", orphans).stdout.split()) == before
    # a fileset carol may not see never shows up
    hidden = make_tiff(world_dir / "late" / "hidden.tif", seed=43)
    run_cli(
        "-r",
        str(populated.config.root),
        "import",
        str(hidden),
        "--user",
        "bob",
        "--group",
        "priv",
        check=True,
    )
    wait_for(
        lambda: "hidden" in run_as("olga", "find", f"{view.mountpoint}/olga").stdout,
        timeout=10,
        what="the private import in the group owner's view",
    )
    assert "hidden" not in run_as("carol", "find", f"{view.mountpoint}/carol").stdout


def test_new_member_sees_group_after_joining(populated, scene, mount_view) -> None:
    view = mount_view(populated)
    assert visible_names(view.mountpoint, "carol") == {"alice-ro", "bob-ro"}
    run_cli("-r", str(populated.config.root), "group", "add-member", "rw", "carol", check=True)
    wait_for(
        lambda: "alice-rw" in visible_names(view.mountpoint, "carol"),
        timeout=10,
        what="group membership to take effect",
    )


def test_sigterm_unmounts_cleanly(populated, world_dir) -> None:
    mp = world_dir / "sigterm"
    mp.mkdir()
    mounted = MountedView(populated.config.root, mp)
    try:
        mounted.proc.send_signal(signal.SIGTERM)
        assert mounted.proc.wait(timeout=15) == 0
        assert not os.path.ismount(mp)
    finally:
        mounted.close()


def test_stale_mount_is_cleared_on_next_mount(populated, world_dir) -> None:
    mp = world_dir / "stale"
    mp.mkdir()
    mounted = MountedView(populated.config.root, mp)
    try:
        mounted.proc.send_signal(signal.SIGKILL)
        mounted.proc.wait(timeout=10)
        with pytest.raises(OSError) as info:
            os.listdir(mp)
        assert info.value.errno == errno.ENOTCONN
        res = run_cli("-r", str(populated.config.root), "mount", str(mp))
        assert res.returncode == 0, res.stderr
        assert "cleared a stale mount" in res.stderr
        assert "alice" in os.listdir(mp)
        res = run_cli("-r", str(populated.config.root), "umount", str(mp))
        assert res.returncode == 0, res.stderr
        wait_for(lambda: not os.path.ismount(mp), what="unmount")
        daemon_gone = wait_for(lambda: not _daemons_for(mp), what="daemon exit")
        assert daemon_gone
    finally:
        mounted.close()
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])


def _daemons_for(mp) -> list[int]:
    """PIDs of mount daemons serving ``mp`` (the CLI started it; we end only that one)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if b"omerofs.cli" in cmdline and os.fsencode(str(mp)) in cmdline:
            pids.append(int(pid))
    return pids


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda mp: None, "does not exist"),
        (lambda mp: (mp.mkdir(), (mp / "f").write_text("x")), "is not empty"),
        (lambda mp: mp.write_text("x"), "is not a directory"),
    ],
)
def test_bad_mountpoints(populated, world_dir, setup, message) -> None:
    mp = world_dir / "bad"
    setup(mp)
    res = run_cli("-r", str(populated.config.root), "mount", str(mp))
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and message in res.stderr


def test_already_mounted(populated, mount_view) -> None:
    view = mount_view(populated)
    res = run_cli("-r", str(populated.config.root), "mount", str(view.mountpoint))
    assert res.returncode != 0 and "already mounted" in res.stderr


def test_umount_of_something_not_mounted(populated, world_dir) -> None:
    res = run_cli("-r", str(populated.config.root), "umount", str(world_dir))
    assert res.returncode != 0 and "not mounted" in res.stderr


def test_python_runs_same_interpreter() -> None:
    assert sys.executable


def test_readahead_is_raised_once_fuse_init_is_done(populated, mount_view) -> None:
    """The FUSE_INIT reply caps the mount's readahead at the kernel's 128 KiB proposal;
    raised before it, the setting was silently lost (reads stayed 128 KiB requests)."""
    from omerofs.fs.mount import read_ahead_file

    view = mount_view(populated)
    knob = read_ahead_file(view.mountpoint)
    assert knob is not None
    wait_for(
        lambda: int(knob.read_text()) == populated.config.read_ahead_kb,
        what="read_ahead_kb raised",
    )
