"""Read-only commands for everybody (issue 12, item 4): ``ls``, ``info``, ``status`` open
the catalog read-only and work for any uid the file modes let read it, with or without a
daemon holding the WAL open; otherwise they say plainly what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tiff, needs_root, run_cli

pytestmark = needs_root
READ_ONLY_COMMANDS = (["ls", "users"], ["ls"], ["info"], ["info", "1"], ["status"])


def cli_as(uid: int | None, repo, *args: str):
    return run_cli("-r", str(repo.config.root), *args, uid=uid)


@pytest.fixture
def imported(populated, world_dir):
    populated.import_file(make_tiff(world_dir / "src" / "a.tif"), "alice", "ro")
    return populated


def _wal(repo) -> Path:
    return Path(str(repo.config.catalog_path) + "-wal")


@pytest.mark.parametrize("writer_open", [True, False], ids=["daemon-running", "no-writer"])
def test_any_user_may_look(imported, writer_open) -> None:
    if not writer_open:
        imported.catalog.close()  # the last connection checkpoints and removes -wal/-shm
        assert not _wal(imported).exists()
    else:
        assert _wal(imported).exists()
    mode = oct(imported.config.catalog_path.stat().st_mode & 0o777)
    assert mode == "0o644", mode  # as SQLite creates it under umask 022
    for args in READ_ONLY_COMMANDS:
        res = cli_as(3003, imported, *args)  # carol: no special rights
        assert res.returncode == 0, (args, res.stderr)
    users = json.loads(cli_as(3003, imported, "ls", "users", "--json").stdout)
    assert {"alice", "bob", "carol"} <= {u["name"] for u in users}
    assert not _wal(imported).exists() or writer_open  # looking wrote nothing


def test_unreadable_catalog_says_so(imported) -> None:
    imported.config.catalog_path.chmod(0o600)
    res = cli_as(3003, imported, "ls", "users")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "permission denied for uid 3003" in lines[0] and "run as root" in lines[0]


def test_group_readable_catalog(imported) -> None:
    """The documented set-up: catalog 0640 root:<admins>; members of that group may look."""
    imported.catalog.close()
    for path in imported.config.root.glob("catalog.sqlite*"):
        os.chown(path, 0, 71002)
        path.chmod(0o640)
    cmd = ["setpriv", "--reuid=3003", "--regid=3003", "--groups=71002", *_cli(imported)]
    res = subprocess.run([*cmd, "ls", "users"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = cli_as(3001, imported, "ls", "users")  # alice is not in that group
    assert res.returncode == 1 and "permission denied" in res.stderr


def _cli(repo) -> list[str]:
    return [sys.executable, "-m", "omerofs.cli", "-r", str(repo.config.root)]


def test_writes_as_a_user_say_run_as_root(imported) -> None:
    before = imported.catalog.snapshot()
    res = cli_as(3003, imported, "group", "add", "g", "--perms", "private")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "not writable by uid 3003: run as root" in lines[0]
    assert imported.catalog.snapshot() == before


@pytest.fixture
def read_only_copy(imported, world_dir):
    """The repository seen through a read-only bind mount (a read-only repository)."""
    imported.catalog.close()
    target = world_dir / "ro-repo"
    target.mkdir()
    root = str(imported.config.root)
    subprocess.run(["mount", "--bind", root, str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_read_only_repository(read_only_copy) -> None:
    res = run_cli("-r", str(read_only_copy), "ls", "users")
    assert res.returncode == 0 and "alice" in res.stdout, res.stderr
    res = run_cli("-r", str(read_only_copy), "user", "add", "x", "--uid", "9000")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and "read-only repository" in lines[0], lines
