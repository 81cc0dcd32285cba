"""Progress of ``omerofs import``: a live line on a terminal (a real pty as stderr),
plain lines per fileset with --progress elsewhere, nothing by default off a terminal;
stdout keeps the results either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from omerofs.progress import Progress
from tests.conftest import make_tiff, run_cli, run_cli_on_a_terminal


@pytest.fixture
def repo_and_sources(world_dir: Path) -> tuple[Path, Path]:
    root = world_dir / "repo"
    r = ("-r", str(root))
    run_cli(*r, "init", check=True)
    run_cli(*r, "group", "add", "lab", "--perms", "read-only", check=True)
    run_cli(*r, "user", "add", "alice", "--uid", "3001", "--default-group", "lab", check=True)
    src = world_dir / "src"
    for i in range(3):
        make_tiff(src / "run" / f"t{i}.tif", seed=i)
    return root, src / "run"


def size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def test_plain_lines_with_progress_off_a_terminal(repo_and_sources) -> None:
    root, run = repo_and_sources
    res = run_cli("-r", str(root), "import", "--user", "alice", "--progress", str(run))
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert "\r" not in res.stderr
    assert [line.split(":")[0] for line in lines[:3]] == [
        "importing 1",
        "importing 2",
        "importing 3",
    ]
    assert lines[0] == f"importing 1: t0.tif (1 file(s), {size_of(run) // 3 / 1024:.1f} KiB)"
    assert lines[3].startswith("importing: done, 3 item(s), 3 file(s), ")
    assert res.stdout.count("fileset") == 3  # the results, as without --progress


def test_nothing_extra_by_default_off_a_terminal(repo_and_sources) -> None:
    root, run = repo_and_sources
    res = run_cli("-r", str(root), "import", "--user", "alice", str(run))
    assert res.returncode == 0 and res.stderr == ""


def test_a_live_line_on_a_terminal(repo_and_sources) -> None:
    root, run = repo_and_sources
    code, out, text = run_cli_on_a_terminal(
        "-r", str(root), "import", "--user", "alice", str(run)
    )
    assert code == 0, text
    for i in range(3):
        assert f"\rimporting {i + 1}: t{i}.tif | " in text
    assert "of 3 files" in text and "/s" in text
    assert text.endswith("\r")  # the line is cleared at the end, nothing left behind
    assert out.count("fileset") == 3 and "\r" not in out


def test_files_done_follow_the_bytes() -> None:
    """Files of the current fileset count as done once their bytes went through."""

    class Sink:
        def write(self, text: str) -> None:
            self.text = getattr(self, "text", "") + text

        def flush(self) -> None:
            pass

    now = [0.0]
    p = Progress(Sink(), "importing", 5, 600, live=False, lines=True, clock=lambda: now[0])
    p.start_item("a/", [100, 200])
    assert p.files_done() == 0
    p.add_bytes(100)
    assert p.files_done() == 1
    p.add_bytes(200)
    p.start_item("b.tif", [300])
    assert p.files_done() == 2
    now[0] = 2.0
    p.add_bytes(150)
    assert p.line() == ("importing 2: b.tif | 2 of 5 files, 450 B of 600 B (75%), 225 B/s")
    p.finish()
    assert p.stream.text.splitlines()[-1] == (
        "importing: done, 2 item(s), 3 file(s), 450 B in 2 s (225 B/s)"
    )
