"""A full staging area: the writer gets ENOSPC, nothing already staged or imported is
harmed, and the daemon keeps serving."""

from __future__ import annotations

import os

import pytest

from omerofs.imports.transfer import sha1_file
from tests.conftest import MountedView, Repo, make_tiff, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import sh

pytestmark = [needs_fuse, needs_root]


@pytest.mark.parametrize("extra", [(), ("--no-passthrough",)], ids=["passthrough", "daemon"])
def test_enospc_reaches_the_writer_and_harms_nothing(world_dir, tmpfs, extra) -> None:
    small = tmpfs("small", size="48m")
    repo = Repo(small / "repo").populate()
    src = world_dir / "src"
    src.mkdir()
    keep = make_tiff(src / "keep.tif", shape=(4, 256, 256), dtype="uint8")
    staged = make_tiff(src / "staged.tif", shape=(2, 128, 128), dtype="uint8", seed=3)
    mp = world_dir / "ingest"
    mp.mkdir()
    mounted = MountedView(
        repo.config.root, mp, ("ingest", "--transfer", "cp", "--settle", "0.3", *extra)
    )
    try:
        sh("alice", f"cp {keep} {mp}/alice/keep.tif")
        wait_for(lambda: repo.catalog.snapshot().filesets, timeout=30, what="the first import")
        sh("alice", f"mkdir -p {mp}/alice/.hold && cp {staged} {mp}/alice/.hold/staged.tif")
        res = sh(
            "alice",
            f"dd if=/dev/zero of={mp}/alice/huge.part bs=1M count=80 conv=fsync status=none",
            check=False,
        )
        assert res.returncode != 0 and "No space left on device" in res.stderr
        assert sha1_file(mp / "alice/keep.tif") == sha1_file(keep)  # imported, kept (cp)
        assert sha1_file(mp / "alice/.hold/staged.tif") == sha1_file(staged)
        (fs,) = repo.catalog.snapshot().filesets.values()
        assert sha1_file(repo.config.managed_dir / fs.entries[0].repo_path) == sha1_file(keep)
        sh("alice", f"rm {mp}/alice/huge.part && echo still-serving > {mp}/alice/ok.part")
        assert (mp / "alice/ok.part").read_text() == "still-serving\n"
        assert os.path.ismount(mp) and mounted.proc.poll() is None
    finally:
        mounted.close()
        repo.catalog.close()


def test_a_file_whose_last_write_failed_is_held_not_imported(world_dir, tmpfs) -> None:
    """Without kernel passthrough the daemon sees the failed write (ENOSPC): the file's
    fileset is held as incomplete with that reason, never imported as it is."""
    staging = tmpfs("small", size="24m") / "staging"  # full: only staging, not the queue
    repo = Repo(world_dir / "repo").populate()
    mp = world_dir / "ingest"
    mp.mkdir()
    toml = repo.config.root / "omerofs.toml"
    keys = f'[ingest]\nstaging = "{staging}"\n'
    toml.write_text(toml.read_text().replace("[ingest]\n", keys, 1))
    mounted = MountedView(
        repo.config.root,
        mp,
        ("ingest", "--transfer", "cp", "--settle", "0.2", "--no-passthrough", "--xattrs"),
    )
    try:
        res = sh(
            "alice",
            f"dd if=/dev/zero of={mp}/alice/cut.tif bs=1M count=40 status=none",
            check=False,
        )
        assert res.returncode != 0 and "No space left on device" in res.stderr
        wait_for(
            lambda: _state(mp / "alice/cut.tif") == "incomplete",
            timeout=30,
            what="the cut-off file to be held",
        )
        error = os.getxattr(mp / "alice/cut.tif", "user.omerofs.error").decode()
        assert "its last write failed (No space left on device)" in error
        assert not repo.catalog.snapshot().filesets
        assert (mp / "alice/cut.tif").exists()  # not deleted either
    finally:
        mounted.close()
        repo.catalog.close()


def _state(path) -> str | None:
    try:
        return os.getxattr(path, "user.omerofs.state").decode()
    except OSError:
        return None
