"""Plates into Screens through the ingest mount: ``<user>/[@<group>/]#<Screen>/<plate>``
(omerofs/ingest/paths.py). The path rules alone, then the real OME-Zarr plate of
shared/data (copied) written by its user through a real ingest mount, read back
through a real view mount; and a plain TIFF dropped into a screen directory, refused
with its report and kept."""

from __future__ import annotations

import pytest

from omerofs.imports.transfer import sha1_file
from omerofs.ingest.paths import FilesetKey, fileset_at, fileset_of
from omerofs.ingest.queue import JobQueue
from tests import test_ingest_mount as mount_tests
from tests.conftest import make_tiff, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import sh, wait_state, xattr
from tests.test_plates import copy_plate

ingest = mount_tests.ingest  # the fixtures: an ingest mount with [ingest] keys, sources
src = mount_tests.src


@pytest.mark.parametrize(
    "path,expected",
    [
        ("alice/#HCS/p.tif", FilesetKey("alice", None, None, None, "alice/#HCS/p.tif", False)),
        (
            "alice/#HCS/plate.zarr/A/1/0/.zarray",
            FilesetKey("alice", None, None, None, "alice/#HCS/plate.zarr", True),
        ),
        (
            "alice/@lab/#HCS/plate.zarr/.zattrs",
            FilesetKey("alice", "lab", None, None, "alice/@lab/#HCS/plate.zarr", True),
        ),
        # a "#" directory deeper down is an ordinary name (a dataset, a run)
        ("alice/P/#D/x.tif", FilesetKey("alice", None, "P", "#D", "alice/P/#D/x.tif", False)),
        ("alice/#x.tif", FilesetKey("alice", None, None, None, "alice/#x.tif", False)),
        ("alice/#/p.tif", None),  # "#" alone names no screen (as "@" names no group)
        ("alice/#HCS/.p.tif.part", None),
        # Zarr v2 metadata is data (a plate without it is unreadable); temporaries stay hidden
        (
            "alice/P/D/img.zarr/0/.zarray",
            FilesetKey("alice", None, "P", "D", "alice/P/D/img.zarr", True),
        ),
        ("alice/#HCS/plate.zarr/..zattrs.Xy12", None),
    ],
)
def test_screen_paths(path: str, expected: FilesetKey | None) -> None:
    assert fileset_of(path) == expected


@pytest.mark.parametrize(
    "root,screen",
    [
        ("alice/#HCS/p.tif", "HCS"),
        ("alice/#HCS/plate.zarr", "HCS"),
        ("alice/@lab/#Screen 2/plate.zarr", "Screen 2"),
        ("alice/#x.tif", None),  # an orphan file whose name starts with "#"
        ("alice/@lab/x.tif", None),
        ("alice/P/#D/x.tif", None),
        ("alice/P/D/run", None),
    ],
)
def test_the_screen_is_read_from_the_root(root: str, screen: str | None) -> None:
    """The queue keeps root, user, group, project, dataset: the Screen comes from the root."""
    assert FilesetKey("alice", None, None, None, root, False).screen == screen


def test_a_screen_directory_is_no_fileset_and_a_plate_directory_is_one() -> None:
    assert fileset_at("alice/#HCS", is_dir=True) is None
    key = fileset_at("alice/#HCS/plate.zarr", is_dir=True)
    assert key is not None and key.root == "alice/#HCS/plate.zarr" and key.screen == "HCS"
    assert fileset_at("alice/#HCS/plate.zarr/A/1", is_dir=True) == key


def jobs(repo) -> list:
    queue = JobQueue(repo.config.catalog_path)
    try:
        return queue.in_state("queued", "importing")
    finally:
        queue.close()


@needs_fuse
@needs_root
def test_a_plate_written_into_a_screen_directory(populated, ingest, src, mount_view) -> None:
    """alice copies the plate into ``#HCS/`` of her ingest directory: one fileset, a
    Plate "Plate Name 0" (the name its .zattrs gives) with its 2 Images (wells A/1 and
    B/1, one field each), in a new Screen HCS of her default group (priv), shown under
    Screens/ in the view. A TIFF into ``#HCS/`` fails with its report and stays."""
    plate = copy_plate(src)
    mp = ingest("cp", settle=0.3, run_settle=0.3, linger=0)
    screen_dir = mp / "alice/#HCS"
    sh("alice", f"mkdir -p '{screen_dir}' && cp -r {plate} '{screen_dir}/'")
    staged = screen_dir / plate.name
    wait_state(staged / ".zattrs", "imported", timeout=60)
    snap = populated.catalog.snapshot()
    (fs,) = [f for f in snap.filesets.values() if f.plate_id is not None]
    assert fs.image_count == 2 and not fs.dataset_ids
    assert snap.experimenters[fs.owner_id].name == "alice"
    assert snap.groups[fs.group_id].name == "priv"  # alice's default group
    assert snap.plates[fs.plate_id].name == "Plate Name 0"
    (screen_id,) = [i for i, c in snap.screens.items() if c.name == "HCS"]
    assert snap.screens[screen_id].owner_id == fs.owner_id
    assert (screen_id, fs.plate_id) in snap.screen_plate
    assert sha1_file(staged / ".zattrs") == sha1_file(plate / ".zattrs")  # cp keeps it

    tiff = make_tiff(src / "cells.tif", seed=7)
    dropped = screen_dir / "cells.tif"
    sh("alice", f"cp {tiff} '{dropped}'")
    wait_state(dropped, "failed")
    assert "a Screen target takes plates only" in (xattr(dropped, "error") or "")
    report = screen_dir / "cells.tif.import-error.txt"
    assert "a Screen target takes plates only" in report.read_text()
    assert sha1_file(dropped) == sha1_file(tiff)  # kept, untouched
    wait_for(lambda: not jobs(populated), timeout=30, what="the queue to drain")
    assert len(populated.catalog.snapshot().filesets) == 1  # nothing imported elsewhere

    view = mount_view(populated)
    where = f"{view.mountpoint}/alice/Groups/priv/Screens/HCS/Plate Name 0"
    listed = sh("alice", f"ls '{where}' '{where}/{plate.name}'")
    assert plate.name in listed.stdout and {"A", "B"} <= set(listed.stdout.split())
