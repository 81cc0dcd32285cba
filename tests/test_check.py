"""``omerofs check`` on real repositories built through the CLI: a fresh one passes; each
kind of damage (a deleted, extra, truncated or changed original, a corrupted catalog
page, a bad config, a repository users can enter, a dead mount) fails its own row and
the exit code, and nothing else."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from omerofs.config import load_config
from omerofs.daemon_lock import DaemonLock
from omerofs.ingest.paths import FilesetKey
from omerofs.ingest.queue import JobQueue
from tests.conftest import make_tiff, needs_fuse, needs_root, run_cli, run_cli_on_a_terminal

ROWS = [
    "config",
    "catalog",
    "missing files",
    "extra files",
    "file sizes",
    "sealed originals",
    "checksums",
    "staging",
    "private directories",
    "uid/gid coverage",
    "ingest queue",
    "daemons",
]


@pytest.fixture
def built(world_dir: Path) -> Path:
    """init, a group, a user, and two imports (a file; a directory of two filesets)."""
    root = world_dir / "repo"
    r = ("-r", str(root))
    run_cli(*r, "init", check=True)
    # ids no other test gives a local account (the Samba tests create users 3001...)
    run_cli(*r, "group", "add", "lab", "--perms", "read-only", "--gid", "43001", check=True)
    run_cli(*r, "user", "add", "alice", "--uid", "43001", "--default-group", "lab", check=True)
    src = world_dir / "src"
    make_tiff(src / "a.tif")
    make_tiff(src / "run" / "b.tif", seed=1)
    make_tiff(src / "run" / "c.tif", seed=2)
    run_cli(*r, "import", "--user", "alice", str(src / "a.tif"), str(src / "run"), check=True)
    return root


def check(root: Path, *args: str):
    res = run_cli("-r", str(root), "check", "--json", *args)
    report = json.loads(res.stdout)
    return res, {c["name"]: c for c in report["checks"]}, report


def originals(root: Path) -> list[Path]:
    return sorted((root / "ManagedRepository").rglob("*.tif"))


def failed_rows(rows: dict) -> set[str]:
    return {name for name, c in rows.items() if c["result"] == "FAIL"}


def test_a_fresh_repository_passes(built: Path) -> None:
    res, rows, report = check(built, "--deep")
    assert res.returncode == 0, res.stdout
    assert list(rows) == ROWS and report["ok"] is True and report["backend"] == "local"
    assert set(report) == {"version", "repository", "backend", "ok", "checks"}
    assert failed_rows(rows) == set()
    assert rows["missing files"]["detail"] == "all 3 originals of 3 filesets are there"
    assert rows["checksums"]["detail"] == "3 originals match their SHA-1"
    # uid and gid 43001 have no local account here: a warning, not a failure
    coverage = rows["uid/gid coverage"]
    assert coverage["result"] == "WARN"
    assert (
        coverage["detail"] == "no local account for user alice (uid 43001), group lab (gid 43001)"
    )
    text = run_cli("-r", str(built), "check")
    assert text.returncode == 0 and "all checks passed, 1 warning(s)" in text.stdout
    assert "SKIP    checksums" in text.stdout  # without --deep nothing is read


def test_a_deleted_original_fails_missing_files(built: Path) -> None:
    gone = originals(built)[0]
    os.unlink(gone)
    res, rows, report = check(built)
    assert res.returncode == 1 and report["ok"] is False
    assert failed_rows(rows) == {"missing files"}
    rel = str(gone.relative_to(built / "ManagedRepository"))
    assert rel in rows["missing files"]["detail"] and rows["missing files"]["fix"]
    text = run_cli("-r", str(built), "check").stdout
    assert "FAIL    missing files" in text and "fix: restore them" in text
    assert "1 check(s) failed" in text


def test_an_extra_file_fails_extra_files(built: Path) -> None:
    stray = originals(built)[0].parent / "notes.txt"
    stray.write_text("not imported\n")
    res, rows, _ = check(built)
    assert res.returncode == 1 and failed_rows(rows) == {"extra files"}
    assert "notes.txt" in rows["extra files"]["detail"]


def test_a_truncated_original_fails_file_sizes(built: Path) -> None:
    victim = originals(built)[1]
    size = victim.stat().st_size
    os.truncate(victim, size - 100)
    res, rows, _ = check(built)
    assert res.returncode == 1 and failed_rows(rows) == {"file sizes"}
    assert f"({size - 100} bytes, catalog {size})" in rows["file sizes"]["detail"]


def test_a_flipped_byte_fails_checksums_only_with_deep(built: Path) -> None:
    victim = originals(built)[2]
    with open(victim, "r+b") as f:
        f.seek(-10, os.SEEK_END)  # inside the pixel data; the size stays
        byte = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    res, rows, _ = check(built)
    assert res.returncode == 0 and rows["checksums"]["result"] == "SKIP"
    res, rows, _ = check(built, "--deep")
    assert res.returncode == 1 and failed_rows(rows) == {"checksums"}
    assert victim.name in rows["checksums"]["detail"]


def test_a_corrupted_catalog_page_fails_the_catalog(built: Path) -> None:
    path = built / "catalog.sqlite"
    db = sqlite3.connect(path)
    (root_page,) = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name='fileset_entries'"
    ).fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0
    with open(path, "r+b") as f:  # a b-tree page whose header and cells are garbage
        f.seek((root_page - 1) * page_size)
        f.write(b"\x0d\x00\x07\xff" + b"\xa5" * 200)
    res, rows, _ = check(built)
    assert res.returncode == 1, res.stdout
    assert rows["catalog"]["result"] == "FAIL" and "malformed" in rows["catalog"]["detail"]
    assert "restore" in rows["catalog"]["fix"]
    assert rows["missing files"]["result"] == "SKIP"  # nothing to compare against
    assert res.stderr == ""


def test_a_bad_config_is_the_first_row(built: Path) -> None:
    toml = built / "omerofs.toml"
    toml.write_text(toml.read_text().replace("[view]", "[view]\ncache_timout = 5"))
    res, rows, _ = check(built)
    assert res.returncode == 1 and list(rows) == ["config"]
    assert "cache_timout" in rows["config"]["detail"]


def test_a_repository_users_can_enter_fails(built: Path) -> None:
    os.chmod(built / "ManagedRepository", 0o755)
    res, rows, _ = check(built)
    assert res.returncode == 1 and failed_rows(rows) == {"private directories"}
    assert "0755" in rows["private directories"]["detail"]


def test_staging_on_another_filesystem_fails_for_ln(built: Path, tmpfs) -> None:
    elsewhere = tmpfs("staging")
    os.chmod(elsewhere, 0o700)  # private, as the ingest daemon makes it
    toml = built / "omerofs.toml"
    toml.write_text(toml.read_text().replace("[ingest]", f'[ingest]\nstaging = "{elsewhere}"'))
    res, rows, _ = check(built)
    assert res.returncode == 1 and failed_rows(rows) == {"staging"}
    assert "cannot link" in rows["staging"]["detail"]


def test_a_daemon_whose_mount_is_gone_fails(built: Path, world_dir: Path) -> None:
    mountpoint = world_dir / "view"
    mountpoint.mkdir()
    with DaemonLock.acquire(load_config(built), "view", mountpoint):
        res, rows, _ = check(built)
    assert res.returncode == 1 and failed_rows(rows) == {"daemons"}
    assert "is not mounted" in rows["daemons"]["detail"]


def test_not_a_repository_is_one_line(world_dir: Path) -> None:
    res = run_cli("-r", str(world_dir / "nothing"), "check")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("omerofs: ") and "omerofs init" in res.stderr


def test_deep_shows_progress_on_a_terminal(built: Path) -> None:
    """stderr a pty: a live line redrawn with carriage returns; stdout still the table."""
    code, out, seen = run_cli_on_a_terminal("-r", str(built), "check", "--deep")
    assert code == 0, out
    assert "\rhashing 1: " in seen and "of 3 files" in seen
    assert "PASS    checksums" in out and "\r" not in out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
def test_a_user_is_told_to_run_it_as_root(built: Path) -> None:
    res = run_cli("-r", str(built), "check", "--json", uid=3003)
    assert res.returncode == 1, res.stderr
    rows = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert rows["repository access"]["result"] == "FAIL"
    assert rows["repository access"]["fix"] == "run omerofs check as root"
    assert rows["missing files"]["result"] == "SKIP"


@needs_fuse
@needs_root
def test_running_daemons_pass(built: Path, mount_view) -> None:
    """Both mounts up: the daemons row names them; the ingest mount made staging private."""
    repo = SimpleNamespace(config=load_config(built))
    view = mount_view(repo, "view")
    ingest = mount_view(repo, "ingest", ("ingest",))
    res, rows, _ = check(built)
    assert res.returncode == 0, res.stdout
    detail = rows["daemons"]["detail"]
    assert f"view pid {view.proc.pid} at {view.mountpoint}" in detail
    assert f"ingest pid {ingest.proc.pid} at {ingest.mountpoint}" in detail
    assert rows["staging"]["detail"].endswith("is on the ManagedRepository's filesystem")
    assert rows["private directories"]["result"] == "PASS"


def test_no_managed_repository_is_one_row(built: Path) -> None:
    os.rename(built / "ManagedRepository", built / "elsewhere")
    res, rows, _ = check(built)
    assert res.returncode == 1
    assert rows["repository access"]["result"] == "FAIL"
    assert rows["missing files"]["result"] == "SKIP"


def test_an_unhandled_ingest_failure_is_a_warning(built: Path) -> None:
    config = load_config(built)
    (config.staging_dir / "alice").mkdir(parents=True)
    (config.staging_dir / "alice" / "x.tif").write_bytes(b"not a tiff")
    queue = JobQueue(config.catalog_path)
    try:
        key = FilesetKey("alice", None, None, None, "alice/x.tif", False)
        job = queue.enqueue(key, "cp", {"alice/x.tif": (10, 1)})
        queue.fail(job.id, "unknown format")
    finally:
        queue.close()
    os.chmod(config.staging_dir, 0o700)  # as the ingest mount leaves it
    res, rows, _ = check(built)
    assert res.returncode == 0, res.stdout
    assert rows["ingest queue"]["result"] == "WARN"
    assert rows["ingest queue"]["detail"] == "1 failed import(s)"
    assert "omerofs status --ack JOB" in rows["ingest queue"]["fix"]
