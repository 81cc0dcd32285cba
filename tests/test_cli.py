"""The command line: happy paths, and one-line errors that change nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omerofs.backends.local.catalog import LocalCatalog
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


@pytest.mark.parametrize(
    "args,message",
    [
        (["import", "/etc/hostname", "--user", "ann", "-T", ""], "empty target"),
        (["import", "/etc/hostname", "--user", "ann", "-T", "Dataset:-name:D"], "'-' qualifier"),
        (["import", "/etc/hostname", "--user", "ann", "-T", "Dataset:@name:D"], "'@' qualifier"),
        (["import", "/etc/hostname", "--user", "ann", "-T", "Dataset:%name:D"], "'%' qualifier"),
        (["import", "/etc/hostname", "--user", "ann", "-T", "Dataset:id:5"], "not given by id"),
        (["import", "/etc/hostname"], "running as root: say whom to import as with --user"),
        (["ls", "--user", "nobody"], "no such user 'nobody'"),
        (["ls", "users", "--group", "nogroup"], "no such group 'nogroup'"),
        (["user", "add", "x"], "user add: the following arguments are required: --uid"),
        (["user", "add", "x", "--uid", "abc"], "uid 'abc' is not a number"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["status", "--limit", "0"], "--limit: must be >= 1, not 0"),
        (["status", "--limit", "-1"], "--limit: must be >= 1, not -1"),
        (["ingest", "/tmp", "--settle", "nan"], "--settle: must be a finite number >= 0"),
        (["ingest", "/tmp", "--settle", "inf"], "--settle: must be a finite number >= 0"),
        (["ingest", "/tmp", "--settle", "five"], "--settle: 'five' is not a number"),
        (["ingest", "/tmp", "--concurrency", "0"], "--concurrency: 0 is outside 1 ... 64"),
        (["ingest", "/tmp", "--concurrency", "two"], "'two' is not a whole number"),
        (["init", "--omero-host", "h"], "also needs --omero-credentials, --omero-managed-dir"),
    ],
)
def test_issue_cases_are_one_line(cli_repo, args, message) -> None:
    if args[0] == "import" and args[-1] == "/etc/hostname" and os.geteuid() != 0:
        pytest.skip("the root rule needs root")
    before = _state(cli_repo)
    res = run_cli("-r", cli_repo, *args)
    assert res.returncode == 2 or (args[0] == "ls" and res.returncode == 1), res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omerofs: ") and message in lines[0], lines
    assert _state(cli_repo) == before


def test_init_refuses_missing_parents(world_dir) -> None:
    target = world_dir / "nonexistent" / "deeper" / "r3"
    res = run_cli("-r", str(target), "init")
    assert res.returncode == 2 and "does not exist: create it first" in res.stderr
    assert not (world_dir / "nonexistent").exists()


def test_plus_qualifier_and_root_import(cli_repo, world_dir) -> None:
    src = make_tiff(world_dir / "q.tif")
    for target in ("Dataset:+name:D", "Project:+name:P/Dataset:+name:D"):
        res = run_cli(
            "-r", cli_repo, "import", str(src), "-u", "ann", "-T", target, "--transfer", "cp"
        )
        assert res.returncode == 0, res.stderr
    rows = json.loads(run_cli("-r", cli_repo, "ls", "datasets", "--json", check=True).stdout)
    assert sorted(r["name"] for r in rows) == ["D", "D"]  # one alone, one inside P
    if os.geteuid() == 0:
        res = run_cli("-r", cli_repo, "import", str(src), "--user", "root", "--transfer", "cp")
        assert res.returncode == 0 and "warning: importing as root" in res.stderr


def test_dry_run_plans_and_changes_nothing(cli_repo, world_dir) -> None:
    one = make_tiff(world_dir / "dry" / "one.tif")
    make_tiff(world_dir / "dry" / "set" / "a.ome.tif")
    make_tiff(world_dir / "dry" / "set" / "b.ome.tif", seed=1)
    before = _state(cli_repo)
    res = run_cli(
        "-r",
        cli_repo,
        "import",
        str(one),
        str(world_dir / "dry" / "set"),
        "-u",
        "ann",
        "-T",
        "Dataset:name:D",
        "--dry-run",
    )
    assert res.returncode == 0, res.stderr
    assert "would import as ann into lab (upload), dataset 'D'" in res.stdout
    assert f"{one}: 1 fileset, 1 file(s)" in res.stdout
    assert f"{world_dir / 'dry' / 'set'}: 1 fileset, 2 file(s)" in res.stdout
    assert _state(cli_repo) == before


def test_version_and_help() -> None:
    from omerofs import __version__
    from omerofs.cli import build_parser

    assert run_cli("--version", check=True).stdout.strip() == f"omerofs {__version__}"
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    checked = 0
    stack = list(commands.items())
    while stack:
        name, sub = stack.pop()
        nested = [
            a for a in sub._actions if isinstance(a, type(parser._subparsers._group_actions[0]))
        ]  # noqa: SLF001
        if nested:
            stack.extend((f"{name} {n}", p) for n, p in nested[0].choices.items())
            continue
        assert "examples:" in (sub.epilog or ""), f"{name}: no examples"
        for action in sub._actions:  # noqa: SLF001
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        checked += 1
    assert checked >= 17
