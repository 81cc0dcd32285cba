"""The command line: happy paths, and one-line errors that change nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omerofs.catalog.local import LocalCatalog
from tests.conftest import make_tiff, run_cli


@pytest.fixture
def cli_repo(world_dir):
    root = str(world_dir / "r")
    run_cli("-r", root, "init", check=True)
    for args in (
        ["group", "add", "lab", "--perms", "read-annotate", "--gid", "75001"],
        ["user", "add", "ann", "--uid", "5001", "--default-group", "lab"],
        ["user", "add", "ben", "--uid", "5002"],
        ["group", "add-member", "lab", "ben", "--owner"],
    ):
        run_cli("-r", root, *args, check=True)
    return root


def _state(root: str):
    catalog = LocalCatalog(Path(root) / "catalog.sqlite")
    try:
        return catalog.snapshot()
    finally:
        catalog.close()


@pytest.mark.parametrize(
    "args,message",
    [
        (["user", "add", "ann", "--uid", "7"], "already exists"),
        (["user", "add", "zed", "--uid", "5001"], "uid 5001 is already mapped"),
        (["user", "add", "zed", "--uid", "7", "--default-group", "nope"], "no such group"),
        (["group", "add", "lab", "--perms", "private"], "already exists"),
        (["group", "add", "g2", "--perms", "public"], "unknown permission level"),
        (["group", "add-member", "lab", "nobody"], "no such user"),
        (["group", "add-member", "nope", "ann"], "no such group"),
        (["import", "/nonexistent.tif", "--user", "ann"], "no such file"),
        (["import", "/etc/hostname", "--user", "ann", "-T", "Dataset:x"], "bad target"),
        (["import", "/etc/hostname", "--user", "ghost"], "no such user"),
        (["import", "/etc/hostname", "--user", "ann", "--group", "system"], "not a member"),
        (["import", "/etc/hostname", "--user", "ann"], "unknown or unreadable image format"),
        (["info", "99"], "no such fileset"),
    ],
)
def test_errors_are_one_line_and_change_nothing(cli_repo, args, message) -> None:
    before = _state(cli_repo)
    res = run_cli("-r", cli_repo, *args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omerofs: ") and message in lines[0], lines
    assert _state(cli_repo) == before


def test_missing_repository(world_dir) -> None:
    res = run_cli("-r", str(world_dir / "none"), "ls")
    assert res.returncode != 0 and "not an omerofs repository" in res.stderr
    res = run_cli("ls")
    assert res.returncode != 0 and "no repository given" in res.stderr


def test_init_twice(cli_repo) -> None:
    res = run_cli("-r", cli_repo, "init")
    assert res.returncode != 0 and "already an omerofs repository" in res.stderr


def test_repo_from_environment(cli_repo, monkeypatch) -> None:
    monkeypatch.setenv("OMEROFS_REPO", cli_repo)
    assert "ann" in run_cli("ls", "users", check=True).stdout


def test_import_ls_info(cli_repo, world_dir) -> None:
    src = make_tiff(world_dir / "x.tif", shape=(2, 10, 12))
    res = run_cli(
        "-r",
        cli_repo,
        "import",
        str(src),
        "--user",
        "ann",
        "-T",
        "Project:name:P/Dataset:name:D",
        "--transfer",
        "cp",
        check=True,
    )
    assert "fileset 1, 1 image(s), 1 file(s) -> ann_2/" in res.stdout
    rows = json.loads(run_cli("-r", cli_repo, "ls", "--json", check=True).stdout)
    assert rows[0]["owner"] == "ann" and rows[0]["group"] == "lab" and rows[0]["datasets"] == "D"
    info = json.loads(run_cli("-r", cli_repo, "info", "1", "--json", check=True).stdout)
    assert info["images"][0]["size"] == [12, 10, 2, 1, 1]
    summary = run_cli("-r", cli_repo, "info", check=True).stdout
    assert "filesets: 1" in summary
    assert "ln_s" in run_cli("-r", cli_repo, "import", "--help").stdout


def test_partial_failure_exits_non_zero_but_imports_the_rest(cli_repo, world_dir) -> None:
    good = make_tiff(world_dir / "good.tif")
    bad = world_dir / "bad.tif"
    bad.write_text("nope")
    res = run_cli("-r", cli_repo, "import", str(good), str(bad), "--user", "ann")
    assert res.returncode == 1
    assert "fileset 1" in res.stdout and "bad.tif: import failed" in res.stderr
    assert len(json.loads(run_cli("-r", cli_repo, "ls", "--json", check=True).stdout)) == 1


def test_group_gid_defaults(cli_repo) -> None:
    res = run_cli("-r", cli_repo, "group", "add", "auto", "--perms", "rwr---", check=True)
    assert "gid 70000" in res.stdout
    res = run_cli("-r", cli_repo, "group", "add", "root", "--perms", "private", check=True)
    assert "gid 0" in res.stdout or "gid 70001" in res.stdout  # same-named local group wins


def test_unwritable_catalog_is_a_one_line_error(cli_repo, world_dir) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch uid")
    src = make_tiff(world_dir / "mine.tif")
    res = run_cli("-r", cli_repo, "import", str(src), "--user", "ann", uid=5001)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "catalog" in lines[0], lines
