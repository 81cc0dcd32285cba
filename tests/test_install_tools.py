"""The install scripts' helpers (tools/lib.sh, issue 12 item 7), run by real bash: one
build at a time per wheel cache, progress lines during long builds, a failed build's
log kept, pip's notes about the machine's local indexes filtered."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "tools" / "lib.sh"


def bash(script: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {LIB}; {script}"],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_second_build_waits_for_the_first(world_dir) -> None:
    """The first holds the cache lock until told to finish; the second says it waits
    and only gets the lock after the first is done."""
    cache, go = world_dir / "cache", world_dir / "go"
    order = world_dir / "order"
    first = subprocess.Popen(
        [
            "bash",
            "-c",
            f". {LIB}; cache_lock {cache} thing; echo first-has-it >> {order}; "
            f"while [ ! -e {go} ]; do sleep 0.05; done; echo first-done >> {order}",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not order.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.Popen(
            ["bash", "-c", f". {LIB}; cache_lock {cache} thing; echo second-has-it >> {order}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        line = second.stderr.readline()
        assert "another install is building thing" in line and "waiting" in line
        assert order.read_text() == "first-has-it\n"  # still waiting
        go.touch()
        assert second.wait(timeout=30) == 0 and first.wait(timeout=30) == 0
    finally:
        go.touch()
        first.wait(timeout=30)
    assert order.read_text().splitlines() == ["first-has-it", "first-done", "second-has-it"]


def test_progress_lines_and_the_exit_status(world_dir) -> None:
    log = world_dir / "build.log"
    res = bash(
        f"with_progress {log} demo bash -c 'for i in 1 2 3; do echo step $i; sleep 1; done'",
        env={"OMEROFS_PROGRESS_EVERY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("omerofs: still building")]
    assert progress and "demo" in progress[0] and "step" in progress[-1]
    assert log.read_text().split() == ["step", "1", "step", "2", "step", "3"]
    failed = bash(f"with_progress {log} demo bash -c 'exit 7' || echo status=$?")
    assert "status=7" in failed.stdout


def test_a_failed_build_keeps_its_log(world_dir) -> None:
    log = world_dir / "cache" / "x.build.log"
    log.parent.mkdir()
    res = bash(
        f"with_progress {log} x bash -c 'echo compiler says no; exit 1' || build_failed {log} x"
    )
    assert res.returncode == 1
    assert "compiler says no" in res.stderr and f"the whole log is kept at {log}" in res.stderr
    assert "compiler says no" in log.read_text()


def test_pip_location_notes_are_filtered() -> None:
    res = bash(
        "quiet bash -c 'echo \"WARNING: Location /opt/x is ignored\" >&2; echo real problem >&2'"
    )
    assert res.returncode == 0
    assert "Location" not in res.stderr and "real problem" in res.stderr
