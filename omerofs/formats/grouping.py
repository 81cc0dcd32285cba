"""Which files form one fileset, main file first, the way Bio-Formats' "used files" do:
a main file that names its parts (multi-file OME-TIFF, companion.ome, OIF + .oif.files/,
DV + .dv.log, Micro-Manager metadata.txt, MetaMorph .nd) takes them; an OME-Zarr, an
NDTiff directory is one fileset; every other file is its own."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileGroup:
    main: Path
    files: tuple[Path, ...]  # main first; present files only
    missing: tuple[str, ...] = ()  # named by the main file, not there (relative to its dir)


def group_files(paths: Iterable[Path]) -> list[FileGroup]:
    """Partition ``paths`` (absolute or not) into filesets, sorted by main file.

    A part the main file names that exists on disk but is not among ``paths`` counts as
    missing: the caller has not got it yet (e.g. still being written)."""
    from omerofs.formats import FORMATS, format_for, tiff, zarr

    files = sorted({Path(os.path.abspath(p)) for p in paths})
    remaining: dict[Path, None] = dict.fromkeys(files)
    groups: list[FileGroup] = []

    def take(main: Path, members: Iterable[Path], missing: Iterable[str] = ()) -> None:
        own = [m for m in dict.fromkeys(members) if m in remaining and m != main]
        for m in (main, *own):
            remaining.pop(m, None)
        groups.append(FileGroup(main, (main, *own), tuple(dict.fromkeys(missing))))

    # directory filesets: an OME-Zarr hierarchy, an NDTiff dataset
    by_root: dict[Path, list[Path]] = {}
    for f in files:
        root = zarr.root_of(f)
        if root is not None:
            by_root.setdefault(root, []).append(f)
    for root, members in by_root.items():
        main = zarr.main_file(root)
        take(main if main in remaining else members[0], members)
    for f in files:
        if f.name == "NDTiff.index" and f in remaining:
            members = [g for g in files if g.parent == f.parent and g in remaining]
            stacks = [g for g in members if tiff.claims(g)]
            take(stacks[0] if stacks else f, members)

    # main files that name their parts
    binary_parts: dict[Path, list[Path]] = {}
    candidates = [(f, format_for(f)) for f in files if f in remaining]
    rank = {fmt.name: i for i, fmt in enumerate(FORMATS)}
    candidates = sorted(
        ((f, fmt) for f, fmt in candidates if fmt is not None and fmt.parts is not None),
        key=lambda c: (rank[c[1].name], c[0]),  # companion and metadata.txt before TIFFs
    )
    for f, fmt in candidates:
        if f not in remaining:
            continue
        master = tiff.master_of(f) if fmt.name == "TIFF" else None
        if master is not None:
            binary_parts.setdefault(f.parent / master, []).append(f)
            continue
        found = fmt.parts(f)
        if not found.present and not found.missing:
            continue
        absent = [
            os.path.relpath(p, f.parent)
            for p in found.present
            if p not in remaining and not any(p in g.files for g in groups)
        ]
        take(f, found.present, (*found.missing, *absent))
    # BinaryOnly parts whose master is not here (yet): one waiting fileset per master
    for master, members in binary_parts.items():
        members = [m for m in members if m in remaining]
        if members:
            take(members[0], members, (os.path.relpath(master, members[0].parent),))

    for f in list(remaining):
        take(f, ())
    return sorted(groups, key=lambda g: g.main)
