"""Log files (issue 12, item 6): timestamps on every line of a detached daemon's log,
rotation shared by several processes writing one file, journal priorities."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

from omerofs import logs
from tests.conftest import needs_fuse, needs_root, run_cli, wait_for

STAMP = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ (INFO|WARNING|ERROR) omerofs[\w.]*: "
)

WRITER = """
import logging, sys
from pathlib import Path
from omerofs import logs
handler = logs.SharedRotatingFileHandler(Path(sys.argv[1]), max_bytes=4000, backups=400)
handler.setFormatter(logs.log_format())
log = logging.getLogger("omerofs.test")
log.addHandler(handler)
log.setLevel(logging.INFO)
for i in range(int(sys.argv[3])):
    log.info("%s line %05d %s", sys.argv[2], i, "x" * 40)
"""


@needs_fuse
@needs_root
def test_detached_daemon_log_has_timestamps(populated, world_dir) -> None:
    mp = world_dir / "view"
    mp.mkdir()
    root = str(populated.config.root)
    assert run_cli("-r", root, "mount", str(mp), check=True).returncode == 0
    try:
        log = populated.config.log_dir / "mount.log"
        wait_for(lambda: "kernel passthrough" in log.read_text(), what="the daemon's log lines")
    finally:
        run_cli("-r", root, "umount", str(mp), check=True)
    lines = log.read_text().splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines
    assert any(f"view mounted at {mp}" in line for line in lines)


def test_rotation_shared_by_processes_loses_no_line(world_dir) -> None:
    """Two processes append to one file that rotates every 4000 bytes: every line is in
    exactly one of the files afterwards, each file stays near the limit."""
    path = world_dir / "shared.log"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "600"])
        for name in ("A", "B")
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    files = [path, *sorted(path.parent.glob("shared.log.*[0-9]"))]
    assert len(files) > 10  # it rotated
    lines = [line for f in files for line in f.read_text().splitlines()]
    for name in ("A", "B"):
        mine = sorted(line.split(" line ")[1][:5] for line in lines if f" {name} line " in line)
        assert mine == [f"{i:05d}" for i in range(600)]  # none lost, none twice
    assert all(STAMP.match(line) for line in lines)
    # a file is rotated once it has reached the limit: at most one line beyond it
    assert all(f.stat().st_size < 4000 + 200 for f in files)


def test_backups_are_bounded(world_dir) -> None:
    path = world_dir / "small.log"
    handler = logs.SharedRotatingFileHandler(path, max_bytes=200, backups=3)
    log = logging.getLogger("omerofs.test.bounded")
    log.addHandler(handler)
    try:
        for i in range(100):
            log.warning("message %d %s", i, "y" * 50)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert sorted(p.name for p in world_dir.glob("small.log*") if not p.name.endswith("lock")) == [
        "small.log",
        "small.log.1",
        "small.log.2",
        "small.log.3",
    ]


def test_journal_formatter_priorities() -> None:
    formatter = logs.JournalFormatter()

    def line(level: int, message: str) -> str:
        return formatter.format(logging.LogRecord("omerofs", level, "", 0, message, (), None))

    assert line(logging.ERROR, "bad") == "<3>omerofs: bad"
    assert line(logging.WARNING, "hm") == "<4>omerofs: hm"
    assert line(logging.INFO, "two\nlines") == "<6>omerofs: two\n<6>lines"
