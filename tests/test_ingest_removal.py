"""The ``*_rm`` removal rule lives in the importer only: ``omerofs import`` removes at once,
the ingest mount defers it (``remove_sources=False``) and removes later through
``Importer.remove_sources``, with the same rule (unchanged files only, then the
directories that leaves empty)."""

from __future__ import annotations

import os
from pathlib import Path

from omerofs.imports.filesets import plan_fileset
from omerofs.imports.importer import Importer, Target
from tests.conftest import make_tiff


def test_a_deferred_removal_leaves_the_sources_until_the_caller_removes_them(
    populated, world_dir: Path
) -> None:
    src = make_tiff(world_dir / "src" / "cells.tif", seed=4)
    owner, group = populated.importer.resolve_identity("alice", None)
    before = {src: (src.stat().st_size, src.stat().st_mtime_ns)}
    fileset = populated.importer.import_fileset(
        plan_fileset(src), owner, group, "ln_rm", Target(), remove_sources=False
    )
    placed = populated.config.managed_dir / fileset.entries[0].repo_path
    assert src.exists() and placed.stat().st_ino == src.stat().st_ino  # linked, still here
    removed = Importer.remove_sources(before, src)
    assert removed.files == [src] and removed.directories == []
    assert not src.exists() and placed.exists()
    assert (world_dir / "src").is_dir()  # the directory holding a file fileset stays


def test_an_immediate_removal_is_the_same_rule(populated, world_dir: Path) -> None:
    run = world_dir / "src" / "run1"
    images = [make_tiff(run / "sub" / f"t{i}.tif", seed=i) for i in range(2)]
    owner, group = populated.importer.resolve_identity("alice", None)
    populated.importer.import_fileset(plan_fileset(run), owner, group, "cp_rm", Target())
    assert not any(p.exists() for p in images)
    assert not run.exists() and (world_dir / "src").is_dir()  # emptied run gone, parent kept


def test_changed_sources_are_kept_and_emptied_part_directories_go(world_dir: Path) -> None:
    d = world_dir / "D"
    main = make_tiff(d / "X.oif", seed=1)  # the name is what matters here, not the format
    part = make_tiff(d / "X.oif.files" / "s_C001.tif", seed=2)
    grown = make_tiff(world_dir / "E" / "Y.oif", seed=3)
    sizes = {p: (p.stat().st_size, None) for p in (main, part)}
    removed = Importer.remove_sources(sizes, main)
    assert sorted(removed.files) == sorted([main, part])
    assert removed.directories == [d / "X.oif.files"] and d.is_dir()
    size = grown.stat().st_size
    with open(grown, "ab") as f:  # written again after it was hashed
        f.write(b"more")
    removed = Importer.remove_sources({grown: (size, None)}, grown)
    assert removed.files == [] and grown.exists()  # kept, never lost
    # a time that moved counts as a change when the caller's times are trustworthy
    st = grown.stat()
    os.utime(grown, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    removed = Importer.remove_sources({grown: (st.st_size, st.st_mtime_ns)}, grown)
    assert removed.files == [] and grown.exists()
    gone = world_dir / "gone.tif"
    assert Importer.remove_sources({gone: (1, None)}, gone).files == [gone]  # counts as removed
