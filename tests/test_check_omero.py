"""``omerofs check`` on an OMERO repository (init through the CLI) whose server refuses
connections: a real omero.client is refused underneath; the server's rows come from
backends/omero/check.py, the config and daemons rows from omerofs/check.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port as refused_port
from tests.conftest import run_cli

pytest.importorskip("omero")


def test_an_unreachable_server_fails_with_its_fix(world_dir: Path) -> None:
    cred = world_dir / "cred.toml"
    cred.write_text('username = "svc"\npassword = "x"\n')
    cred.chmod(0o600)
    managed = world_dir / "managed"
    managed.mkdir()
    root = world_dir / "orepo"
    run_cli(
        "-r", str(root), "init", "--omero-host", "127.0.0.1",
        "--omero-port", str(refused_port()), "--omero-credentials", str(cred),
        "--omero-managed-dir", str(managed), check=True,
    )  # fmt: skip
    res = run_cli("-r", str(root), "check", "--json")
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    rows = {c["name"]: c for c in report["checks"]}
    assert report["backend"] == "omero" and report["ok"] is False
    names = list(rows)
    assert names[0] == "config" and names[1] == "server reachable" and names[-1] == "daemons"
    assert rows["config"]["result"] == "PASS"
    assert rows["server reachable"]["result"] == "FAIL"
    assert "host/port (127.0.0.1:" in rows["server reachable"]["fix"]
    assert rows["staging"]["result"] == "PASS"  # staging beside the repository, same disk
    text = run_cli("-r", str(root), "check").stdout
    assert "FAIL    server reachable" in text and "fix: check that OMERO runs" in text
