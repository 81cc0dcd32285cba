"""``omerofs info PATH``: from a path in the view, an ingest mount or the
ManagedRepository back to its fileset, by names (issue 12, item 9)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, run_cli, wait_for

pytestmark = [needs_fuse, needs_root]


def info(repo, path, uid: int | None = None) -> dict:
    res = run_cli("-r", str(repo.config.root), "info", str(path), "--json", uid=uid)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_info_path_in_every_tree(populated, mount_view, world_dir) -> None:
    a = populated.import_file(
        make_tiff(world_dir / "src" / "scan.tif"),
        "alice",
        "ro",
        target="Project:name:P/Dataset:name:D",
    )
    b = populated.import_file(  # same name, same dataset: shown as scan~fs2.tif
        make_tiff(world_dir / "src2" / "scan.tif", seed=1),
        "alice",
        "ro",
        target="Project:name:P/Dataset:name:D",
    )
    c = populated.import_file(make_tiff(world_dir / "src" / "lone.tif"), "bob", "ro")
    view = mount_view(populated)
    mp = view.mountpoint
    cases = [
        (mp / "alice/ManagedRepository" / a.entries[0].repo_path, a, "view"),
        (mp / "bob/Groups/ro/Projects/P/D/scan.tif", a, "view"),  # the oldest keeps the name
        (mp / f"bob/Groups/ro/Projects/P/D/scan~fs{b.id}.tif", b, "view"),
        (mp / "alice/Groups/ro/Orphans/lone.tif", c, "view"),
        (populated.config.managed_dir / c.entries[0].repo_path, c, "managed"),
    ]
    for path, fileset, kind in cases:
        assert path.exists(), path  # the names are the view's own
        found = info(populated, path)
        assert (found["fileset"], found["found_in"]) == (fileset.id, kind), path
        assert found["owner"] in ("alice", "bob") and found["group"] == "ro"
    # a user asks about a file in their own home
    found = info(populated, mp / "bob/Groups/ro/Orphans/lone.tif", uid=3002)
    assert found["fileset"] == c.id and found["files"][0]["sha1"] == c.entries[0].hash
    for bad, words in [
        (mp / "alice/Groups/ro/Orphans/nothing.tif", "no such fileset"),
        (world_dir / "src" / "scan.tif", "not in an omerofs mount"),
    ]:
        res = run_cli("-r", str(populated.config.root), "info", str(bad))
        assert res.returncode != 0 and words in res.stderr and res.stderr.count("\n") == 1
    assert view.proc.poll() is None


def test_info_path_in_the_ingest_mount(populated, mount_view, world_dir) -> None:
    ingest = mount_view(populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.2"))
    target = ingest.mountpoint / "alice" / "P" / "D" / "x.tif"
    src = make_tiff(world_dir / "src" / "x.tif")
    script = f"mkdir -p {target.parent} && cp {src} {target}"
    subprocess.run(as_user(3001, ["/bin/sh", "-c", script]), check=True)
    wait_for(
        lambda: info(populated, target).get("state") == "imported",
        timeout=60,
        what="the ingest job to be imported",
    )
    found = info(populated, target)
    assert found["found_in"] == "ingest" and found["fileset"] is not None
    assert found["staged"] == "alice/P/D/x.tif"
