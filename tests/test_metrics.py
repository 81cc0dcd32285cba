"""Prometheus metrics (issue 12, item 8): real daemons, scraped over HTTP with urllib and
read with prometheus-client's own text parser."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from omerofs.daemon_lock import lock_path
from omerofs.fs.mount import fileset_loader
from omerofs.fs.view import RepositoryView
from omerofs.metrics import ViewCollector
from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, run_cli, wait_for

pytestmark = [needs_fuse, needs_root]
ALICE = 3001


def metrics_address(config, role: str = "ingest", mountpoint=None) -> str:
    """The daemon writes where it listens (port 0 made concrete) into its lock file."""

    def read():
        try:
            return json.loads(lock_path(config, role, mountpoint).read_text()).get("metrics")
        except (OSError, ValueError):
            return None

    return wait_for(read, timeout=30, what="the metrics address in the lock file")


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_ingest_daemon_metrics(populated, mount_view, world_dir) -> None:
    mp = mount_view(
        populated,
        "ingest",
        ("ingest", "--transfer", "cp", "--settle", "0.3", "--metrics", "127.0.0.1:0"),
    ).mountpoint
    address = metrics_address(populated.config)
    assert address.startswith("127.0.0.1:")  # loopback
    before = scrape(address)
    assert value(before, "omerofs_daemon_info", role="ingest", mountpoint=str(mp), version="0.1.0")
    assert value(before, "omerofs_ingest_queue_readable") == 1
    assert value(before, "omerofs_ingest_jobs", state="imported") == 0

    good = make_tiff(world_dir / "src" / "good.tif", seed=11)
    bad = world_dir / "src" / "bad.tif"
    bad.write_bytes(b"this is no image at all\n" * 10)
    os.chmod(world_dir / "src", 0o755)
    script = (
        f"mkdir -p {mp}/alice/D && cp {good} {mp}/alice/D/good.tif && cp {bad} {mp}/alice/D/bad.tif"
    )
    subprocess.run(as_user(ALICE, ["/bin/sh", "-c", script]), check=True, timeout=60)

    def settled():
        s = scrape(address)
        done = value(s, "omerofs_ingest_jobs", state="imported")
        broken = value(s, "omerofs_ingest_jobs", state="failed") + value(
            s, "omerofs_ingest_jobs", state="incomplete"
        )
        return s if done == 1 and broken == 1 else None

    after = wait_for(settled, timeout=60, what="one import and one failure in the metrics")
    assert value(after, "omerofs_ingest_imports_total", transfer="cp") == 1
    assert value(after, "omerofs_ingest_imported_bytes_total", transfer="cp") == good.stat().st_size
    failures = sum(
        value(after, "omerofs_ingest_failures_total", kind=k) for k in ("permanent", "incomplete")
    )
    assert failures == 1
    assert value(after, "omerofs_ingest_import_latency_seconds_count") == 1
    assert value(after, "omerofs_ingest_import_latency_seconds_bucket", le="+Inf") == 1
    assert value(after, "omerofs_ingest_import_latency_seconds_sum") >= 0
    assert value(after, "omerofs_ingest_jobs", state="queued") == 0
    assert value(after, "omerofs_daemon_uptime_seconds") > 0
    assert value(after, "process_resident_memory_bytes") > 0


def test_view_daemon_metrics(populated, mount_view) -> None:
    view = mount_view(populated, "view", ("mount", "--metrics", "0"))
    address = metrics_address(populated.config, "view", view.mountpoint)
    people = populated.catalog.snapshot_people()
    samples = scrape(address)
    assert value(samples, "omerofs_view_users") == len(people.experimenters)
    assert value(samples, "omerofs_view_groups") == len(people.groups)
    trees = value(samples, "omerofs_view_user_trees")
    inodes = value(samples, "omerofs_view_inodes")
    subprocess.run(as_user(ALICE, ["ls", "-R", str(view.mountpoint / "alice")]), check=True)
    samples = scrape(address)
    assert value(samples, "omerofs_view_user_trees") == trees + 1  # alice's, built on access
    assert value(samples, "omerofs_view_inodes") > inodes
    assert "omerofs_ingest_jobs" not in {name for name, _ in samples}


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "host:"])
def test_bad_metrics_addresses_are_refused(populated, world_dir, address) -> None:
    mp = world_dir / "m"
    mp.mkdir()
    res = run_cli("-r", str(populated.config.root), "ingest", str(mp), "--metrics", address)
    assert res.returncode != 0 and "--metrics" in res.stderr
    assert not os.path.ismount(mp)


def test_taken_port_fails_before_mounting(populated, world_dir) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mp = world_dir / "m"
        mp.mkdir()
        res = run_cli(
            "-r", str(populated.config.root), "ingest", str(mp), "--metrics", f"127.0.0.1:{port}"
        )
        assert res.returncode != 0 and "cannot listen" in res.stderr, res.stderr
        assert not os.path.ismount(mp)


def test_user_trees_are_the_views_public_count(populated) -> None:
    """``omerofs_view_user_trees`` is RepositoryView.user_trees (no private attribute
    read): 0 before anyone looked, 1 once alice's home was opened."""
    view = RepositoryView(populated.catalog.snapshot_people(), 1, fileset_loader(populated.catalog))

    def gauge() -> float:
        (family,) = [m for m in ViewCollector(view).collect() if m.name.endswith("user_trees")]
        return family.samples[0].value

    assert view.user_trees == gauge() == 0
    view.materialize(view.table.child(view.table.root, "alice"))
    assert view.user_trees == gauge() == 1
