"""``omerofs status`` on an OMERO repository whose server refuses connections: the
outage the catalog recorded (backends/omero/cache.py describe_outage) is shown."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("omero")
from tests.test_omero_outage import down_repo  # noqa: E402, F401  (the fixture)


def test_an_omero_outage_is_shown(down_repo) -> None:  # noqa: F811
    """A daemon (here: the catalog, as a daemon opens it) found the server down."""
    from omerofs.backend import open_backend

    config = down_repo
    res = run_cli("-r", str(config.root), "status", "--json")
    assert json.loads(res.stdout)["omero_outage"] is None  # nobody has tried yet
    backend = open_backend(config)
    try:
        backend.catalog.snapshot_people()  # refused: served from the saved state
    finally:
        backend.close()
    report = json.loads(run_cli("-r", str(config.root), "status", "--json").stdout)
    assert report["omero_outage"].startswith("OMERO server unreachable since ")
    assert "serving users, groups and filesets as of" in report["omero_outage"]
    text = run_cli("-r", str(config.root), "status").stdout
    assert text.startswith("WARNING: OMERO server unreachable since ")
