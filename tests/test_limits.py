"""Limits: more files than the open-files limit, many writers and readers at once, and a
locked catalog that must not freeze reads of files the view already knows."""

from __future__ import annotations

import hashlib
import os
import resource
import sqlite3
import subprocess
import threading

import pytest

from omerofs.imports.transfer import sha1_file
from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, wait_for

pytestmark = [needs_fuse, needs_root]


def test_more_files_than_the_open_files_limit(populated, mount_view, world_dir) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(max(soft, 1024), 20000) + 500  # more than this process (and the daemon) may open
    for d in range(10):
        run = world_dir / "many" / f"run{d}"
        run.mkdir(parents=True)
        make_tiff(run / "main.tif", shape=(1, 8, 8), dtype="uint8")
        for i in range(count // 10):
            (run / f"f{i:05d}.txt").write_bytes(b"%d\n" % i)
        populated.import_file(run, "alice", "ro", "ln")
    staged = populated.config.staging_dir / "alice/bulk"
    staged.mkdir(parents=True)
    for i in range(count):
        (staged / f"s{i:05d}.part").write_bytes(b"x")
    view = mount_view(populated, "view")
    ingest = mount_view(populated, "ingest", ("ingest", "--settle", "3600"))
    seen = sum(len(files) for _, _, files in os.walk(view.mountpoint / "bob/ManagedRepository"))
    assert seen == count // 10 * 10 + 10
    # open every file once, one after another: the daemon holds fds only while open
    total = 0
    for dirpath, _, files in os.walk(view.mountpoint / "bob/ManagedRepository"):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                total += len(f.read(1))
    assert total == seen
    assert len(os.listdir(ingest.mountpoint / "alice/bulk")) == count
    for name in os.listdir(ingest.mountpoint / "alice/bulk"):
        os.stat(ingest.mountpoint / "alice/bulk" / name)
    assert view.proc.poll() is None and ingest.proc.poll() is None


@pytest.mark.parametrize("extra", [(), ("--no-passthrough",)], ids=["passthrough", "daemon"])
def test_sixteen_writers_and_readers_at_once(populated, mount_view, world_dir, extra) -> None:
    src = world_dir / "src"
    src.mkdir()
    images = [
        make_tiff(src / f"w{i:02d}.tif", shape=(16, 128, 128), dtype="uint8", seed=i)
        for i in range(16)
    ]
    for img in images[:4]:
        populated.import_file(img, "bob", "ro", "cp")
    view = mount_view(populated, "view", ("mount", *extra))
    ingest = mount_view(
        populated, "ingest", ("ingest", "--settle", "0.5", "--transfer", "cp", *extra)
    )
    target = ingest.mountpoint / "alice/P/D"
    subprocess.run(as_user(3001, ["mkdir", "-p", str(target)]), check=True)
    writers = [
        subprocess.Popen(
            as_user(
                3001, ["/bin/sh", "-c", f"dd if={img} of={target}/{img.name} bs=64k status=none"]
            )
        )
        for img in images
    ]
    errors: list[str] = []

    def reader() -> None:
        for _ in range(5):
            for dirpath, _, files in os.walk(view.mountpoint / "carol/ManagedRepository"):
                for name in files:
                    data = open(os.path.join(dirpath, name), "rb").read()  # noqa: SIM115
                    if not any(hashlib.sha1(data).hexdigest() == sha1_file(i) for i in images[:4]):
                        errors.append(name)

    readers = [threading.Thread(target=reader) for _ in range(16)]
    for t in readers:
        t.start()
    for w in writers:
        assert w.wait(timeout=120) == 0
    for t in readers:
        t.join(timeout=120)
    assert not errors
    wait_for(
        lambda: len(populated.catalog.snapshot().filesets) == 20,
        timeout=60,
        what="all 16 written filesets to be imported",
    )
    for img in images:
        assert sha1_file(target / img.name) == sha1_file(img)


def test_locked_catalog_does_not_freeze_reads(populated, mount_view, world_dir) -> None:
    fs = populated.import_file(make_tiff(world_dir / "known.tif"), "alice", "ro", "cp")
    view = mount_view(populated, "view")
    path = view.mountpoint / "bob/ManagedRepository" / fs.entries[0].repo_path
    expected = sha1_file(path)
    blocker = sqlite3.connect(populated.config.catalog_path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the catalog
        populated_other = make_tiff(world_dir / "later.tif", seed=4)
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(sha1_file(path)))
        t.start()
        t.join(timeout=5)
        assert result == [expected], "a read of a known file waited for the catalog"
        assert sorted(os.listdir(path.parent)) == [fs.entries[0].name]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    populated.import_file(populated_other, "alice", "ro", "cp")
    wait_for(
        lambda: len(list((view.mountpoint / "bob/ManagedRepository").rglob("*.tif"))) == 2,
        timeout=30,
        what="the view to catch up once the catalog is free",
    )
