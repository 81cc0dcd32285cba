"""kill -9 the ingest daemon while users write and while it imports, then restart it:
no flushed byte lost, every fileset imported exactly once, nothing unverified deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from omerofs.imports.transfer import sha1_file
from omerofs.ingest.queue import JobQueue
from tests.conftest import MountedView, as_user, make_tiff, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import set_ingest
from tests.test_passthrough import passthrough_state

pytestmark = [needs_fuse, needs_root]


def _kill(mounted: MountedView) -> None:
    mounted.proc.send_signal(signal.SIGKILL)
    mounted.proc.wait(timeout=10)
    subprocess.run(["fusermount3", "-u", "-z", str(mounted.mountpoint)], capture_output=True)
    wait_for(lambda: not os.path.ismount(mounted.mountpoint), what="lazy unmount")


def _start(repo, mountpoint, transfer: str, settle: float) -> MountedView:
    set_ingest(repo, run_settle=settle, linger=0)
    return MountedView(
        repo.config.root, mountpoint, ("ingest", "--transfer", transfer, "--settle", str(settle))
    )


def _imports_by_client_path(repo) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for fs in repo.catalog.snapshot().filesets.values():
        for e in fs.entries:
            found.setdefault(e.client_path, []).append(fs.id)
    return found


def _managed_is_clean(repo) -> None:
    """Only committed filesets (and their logs) in ManagedRepository."""
    known = {e.repo_path for fs in repo.catalog.snapshot().filesets.values() for e in fs.entries}
    root = repo.config.managed_dir
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        assert ".omerofs-import-" not in rel, f"leftover temporary directory {rel}"
        if path.is_file() or path.is_symlink():
            assert rel in known or rel.endswith(".log"), f"unrecorded file {rel}"


@pytest.mark.parametrize("transfer", ["ln_rm", "cp"])
def test_kill_during_writes(populated, world_dir, transfer) -> None:
    sources = world_dir / "src"
    images = [
        make_tiff(sources / f"img{i:02d}.tif", shape=(4, 128, 128), seed=i) for i in range(40)
    ]
    manifest = world_dir / "manifest.txt"
    manifest.write_text("")
    manifest.chmod(0o666)
    mp = world_dir / "ingest"
    mp.mkdir()
    mounted = _start(populated, mp, transfer, settle=3600)  # nothing imports while writing
    writer = None
    try:
        target = mp / "alice/P/D"
        script = (
            f"mkdir -p {target} || exit 1; for f in {' '.join(map(str, images))}; do "
            f"n=$(basename $f); dd if=$f of={target}/$n bs=64k conv=fsync status=none "
            f"&& echo $n >> {manifest} || exit 1; done"
        )
        writer = subprocess.Popen(
            as_user(3001, ["/bin/sh", "-c", script]), stderr=subprocess.DEVNULL
        )
        wait_for(
            lambda: len(manifest.read_text().split()) >= 15,
            timeout=60,
            what="the writer to finish some files",
        )
        _kill(mounted)
        writer.wait(timeout=30)
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        mounted.close()
    done = manifest.read_text().split()
    assert len(done) >= 15, "the manifest is empty: the test proved nothing"
    staged = populated.config.staging_dir / "alice/P/D"
    for name in done:  # every fsynced byte is in staging
        assert sha1_file(staged / name) == sha1_file(sources / name), name
    restarted = _start(populated, mp, transfer, settle=0.2)
    try:

        def all_imported() -> bool:
            found = _imports_by_client_path(populated)
            return all(any(k.endswith(f"P/D/{n}") for k in found) for n in done)

        wait_for(all_imported, timeout=90, what="every written file to be imported")
        wait_for(lambda: not JobQueue_active(populated), timeout=60, what="the queue to drain")
    finally:
        restarted.close()
    found = _imports_by_client_path(populated)
    for name in done:
        (ids,) = [v for k, v in found.items() if k.endswith(f"P/D/{name}")]
        assert len(ids) == 1, f"{name} imported {len(ids)} times"
        (fs,) = [f for f in populated.catalog.snapshot().filesets.values() if f.id == ids[0]]
        assert fs.entries[0].hash == sha1_file(sources / name)
    for path in staged.iterdir():  # whatever is still staged was not imported, or is kept
        if path.name in done and transfer.endswith("_rm"):
            pytest.fail(f"{path.name} was imported with {transfer} but is still staged")
    _managed_is_clean(populated)


def JobQueue_active(repo) -> list:  # noqa: N802 - reads like the question it asks
    queue = JobQueue(repo.config.catalog_path)
    try:
        return queue.in_state("queued", "importing")
    finally:
        queue.close()


@pytest.mark.parametrize("transfer", ["cp_rm", "cp"])
def test_kill_during_import(populated, world_dir, transfer) -> None:
    big = make_tiff(world_dir / "big.tif", shape=(384, 1024, 1024), dtype="uint8")
    digest = sha1_file(big)
    staged = populated.config.staging_dir / "alice/big.tif"
    staged.parent.mkdir(parents=True, exist_ok=True)
    os.chown(staged.parent, 3001, 3001)
    os.link(big, staged)  # written while the daemon was down: found at start-up
    mp = world_dir / "ingest"
    mp.mkdir()
    mounted = _start(populated, mp, transfer, settle=0)
    try:
        queue = JobQueue(populated.config.catalog_path)
        try:
            wait_for(
                lambda: any(j.prefix for j in queue.in_state("importing")),
                timeout=60,
                interval=0.002,
                what="the import to be under way",
            )
        finally:
            queue.close()
        _kill(mounted)
    finally:
        mounted.close()
    assert staged.exists() and sha1_file(staged) == digest  # nothing unverified deleted
    assert not populated.catalog.snapshot().filesets
    restarted = _start(populated, mp, transfer, settle=0)
    try:
        wait_for(
            lambda: populated.catalog.snapshot().filesets,
            timeout=120,
            what="the interrupted import to be redone",
        )
        wait_for(lambda: not JobQueue_active(populated), timeout=60, what="the queue to drain")
        if transfer.endswith("_rm"):
            wait_for(lambda: not staged.exists(), timeout=30, what="the staged copy to go")
    finally:
        restarted.close()
    (fs,) = populated.catalog.snapshot().filesets.values()
    assert fs.entries[0].hash == digest
    assert sha1_file(populated.config.managed_dir / fs.entries[0].repo_path) == digest
    assert staged.exists() == (not transfer.endswith("_rm"))
    _managed_is_clean(populated)
    time.sleep(0)  # (no fixed sleeps: every wait above is on a condition)


WRITER = """
import os, sys, time
data, target, step = open(sys.argv[1], "rb").read(), sys.argv[2], sys.argv[3]
f = open(target, "wb", buffering=0)
f.write(data[: len(data) // 2])
open(step + ".half", "w").close()
while not os.path.exists(step + ".go"):
    time.sleep(0.02)
f.write(data[len(data) // 2 :])  # the kernel writes it into staging itself
try:
    f.close()
except OSError as exc:  # its FLUSH finds no daemon: ENOTCONN, but the data is written
    print(exc.errno)
open(step + ".done", "w").close()
"""


def test_a_writer_that_outlives_the_daemon(populated, world_dir) -> None:
    """With kernel passthrough a handle opened before kill -9 keeps writing into staging.
    The restarted daemon never saw it opened, yet must not import (and with ln_rm
    unlink) the file until that writer closes it."""
    img = make_tiff(world_dir / "src" / "long.tif", shape=(8, 256, 256), seed=7)
    steps = world_dir / "steps"  # the writer (alice) and the test talk through files
    steps.mkdir()
    steps.chmod(0o777)
    step = steps / "step"
    script = world_dir / "writer.py"
    script.write_text(WRITER)
    mp = world_dir / "ingest"
    mp.mkdir()
    mounted = _start(populated, mp, "ln_rm", settle=0.3)
    target = mp / "alice/P/D/long.tif"
    writer = None
    try:
        assert passthrough_state(mounted) == "on"  # (skips where the kernel lacks it)
        subprocess.run(as_user(3001, ["mkdir", "-p", str(target.parent)]), check=True)
        writer = subprocess.Popen(
            as_user(3001, [sys.executable, str(script), str(img), str(target), str(step)])
        )
        wait_for(lambda: os.path.exists(f"{step}.half"), what="the first half written")
        _kill(mounted)
        mounted = _start(populated, mp, "ln_rm", settle=0.3)
        wait_for(
            lambda: (
                "still open for writing by a process the mount does not know"
                in mounted.log.read_text()
            ),
            timeout=30,
            what="the restarted daemon to notice the unknown writer",
        )
        assert not _imports_by_client_path(populated)  # not imported half written
        open(f"{step}.go", "w").close()
        assert writer.wait(timeout=30) == 0
        wait_for(
            lambda: _imports_by_client_path(populated), timeout=30, what="the import after close"
        )
        (fs,) = populated.catalog.snapshot().filesets.values()
        managed = populated.config.managed_dir / fs.entries[0].repo_path
        assert sha1_file(managed) == sha1_file(img) == fs.entries[0].hash
        wait_for(lambda: not (populated.config.staging_dir / "alice/P/D/long.tif").exists())
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        mounted.close()
