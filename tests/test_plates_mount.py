"""A plate in the real view mount, read by another user through setpriv: under
Screens/, listed but refused (EACCES) under OMERO's default download policy, readable
byte for byte once ``[view] binary_access`` has ``+plate``."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, run_cli, wait_for
from tests.test_plates import copy_plate

pytestmark = [needs_fuse, needs_root]
CAROL = 3003  # a member of the read-only group "ro" only (tests.conftest.Repo.populate)


def as_carol(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(CAROL, list(cmd)), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("policy", ["default", "+plate"])
def test_a_plate_in_the_mounted_view(populated, mount_view, world_dir, policy) -> None:
    if policy != "default":
        toml = populated.config.root / "omerofs.toml"
        toml.write_text(
            toml.read_text().replace(
                'binary_access = "+read,+write,+image"',
                'binary_access = "+read,+write,+image,+plate"',
            )
        )
    plate = copy_plate(world_dir / "src")
    res = run_cli(
        "-r", str(populated.config.root), "import", str(plate), "--user", "alice",
        "--group", "ro", "-T", "Screen:name:HCS", "--transfer", "cp",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    view = mount_view(populated)
    screen = f"{view.mountpoint}/carol/Groups/ro/Screens/HCS"
    listed = as_carol(
        "ls", screen, f"{screen}/Plate Name 0", f"{screen}/Plate Name 0/plate-rows-2.zarr"
    )
    assert listed.returncode == 0, listed.stderr
    assert "Plate Name 0" in listed.stdout and "plate-rows-2.zarr" in listed.stdout
    assert {"A", "B", "OME"} <= set(listed.stdout.split())
    main = f"{screen}/Plate Name 0/plate-rows-2.zarr/.zattrs"
    read = as_carol("cat", main)
    if policy == "default":
        # OMERO's default (+read,+write,+image) lacks +plate: listed, but not downloadable
        assert read.returncode != 0 and "Permission denied" in read.stderr
        mode = as_carol("stat", "-c", "%a", main).stdout.strip()
        assert mode == "0"
        with pytest.raises(PermissionError):  # root is refused by the daemon, too
            open(main, "rb").close()
    else:
        assert read.returncode == 0, read.stderr
        assert read.stdout == (plate / ".zattrs").read_text()
        chunk = f"{screen}/Plate Name 0/plate-rows-2.zarr/B/1/0/0/0/0/0/0/0"
        wait_for(lambda: os.path.exists(chunk), timeout=10, what="the chunk in the view")
        got = subprocess.run(as_user(CAROL, ["cat", chunk]), capture_output=True, timeout=60)
        assert got.stdout == (plate / "B/1/0/0/0/0/0/0/0").read_bytes()


def test_minus_read_leaves_originals_to_who_may_edit(populated, mount_view, world_dir) -> None:
    """``-read``: alice reads her own file through her tree; bob, a member of the
    read-write group, too (every member may edit there); carol, in the read-only group,
    sees alice's file there but may not open it (each user has their own inodes)."""
    toml = populated.config.root / "omerofs.toml"
    toml.write_text(
        toml.read_text().replace(
            'binary_access = "+read,+write,+image"', 'binary_access = "-read,+write,+image"'
        )
    )
    ro = populated.import_file(make_tiff(world_dir / "s" / "ro.tif", seed=1), "alice", "ro")
    rw = populated.import_file(make_tiff(world_dir / "s" / "rw.tif", seed=2), "alice", "rw")
    view = mount_view(populated)

    def cat(uid: int, user: str, fs) -> int:
        path = f"{view.mountpoint}/{user}/ManagedRepository/{fs.entries[0].repo_path}"
        return subprocess.run(as_user(uid, ["cat", path]), capture_output=True).returncode

    assert cat(3001, "alice", ro) == 0 and cat(3001, "alice", rw) == 0  # the owner
    assert cat(3002, "bob", rw) == 0  # read-write group: every member may edit
    assert cat(3002, "bob", ro) != 0  # read-only group: bob may look, not edit
    assert cat(CAROL, "carol", ro) != 0
    listed = as_carol("ls", f"{view.mountpoint}/carol/Groups/ro/Orphans")
    assert listed.returncode == 0 and "ro.tif" in listed.stdout  # listed all the same
