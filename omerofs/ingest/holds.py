"""Is a closed fileset all there? Which files form one fileset in a directory?

A writer that crashed or was cut off leaves a file that closes like any other (the kernel
or Samba closes its handle), so "closed and quiet" is not enough: the format's own
metadata says how much is coming (OME-XML planes and files, ImageJ ``images=``, TIFF
strips inside the file), and a main file names the parts that belong to it. Both
answers come from ``omerofs.formats`` (``completeness``, ``group_files``); until that
package provides them, a header-only TIFF check and one-file groups stand in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8", ".lsm", ".stk")


@dataclass(frozen=True)
class Group:
    """One fileset among the files of a directory (as ``omerofs.formats.FileGroup``)."""

    main: Path
    files: tuple[Path, ...]  # main first, present files only
    missing: tuple[str, ...] = ()  # named by the main file, not there (relative to it)


def group_files(paths: Iterable[Path]) -> list[Group]:
    """Partition files into filesets the way Bio-Formats would."""
    paths = list(paths)
    try:
        from omerofs.formats import group_files as formats_group_files
    except ImportError:
        return [Group(p, (p,)) for p in sorted(paths)]
    try:
        return [Group(g.main, tuple(g.files), tuple(g.missing)) for g in formats_group_files(paths)]
    except Exception:  # a reader bug must not stop the mount: each file on its own
        log.exception("grouping %d files failed; each is its own fileset", len(paths))
        return [Group(p, (p,)) for p in sorted(paths)]


def completeness(path: Path) -> str | None:
    """None when ``path`` is complete as its own metadata describes, else why not.
    The TIFF check also runs after the formats' one: a multi-page TIFF cut short loses
    its later IFDs, and only its description (tifffile's shape) says more was coming."""
    reason = None
    try:
        from omerofs.formats import completeness as formats_completeness
    except ImportError:
        formats_completeness = None
    if formats_completeness is not None:
        try:
            reason = formats_completeness(path)
        except Exception as exc:  # unreadable: the import itself will say what is wrong
            log.debug("completeness of %s: %s", path, exc)
        if reason is not None and reason.startswith("unreadable"):
            return None  # no reader makes sense of it: a failed import says so, not a hold
    if reason is None and path.name.lower().endswith(TIFF_SUFFIXES):
        reason = _tiff_completeness(path)
    return reason


def _tiff_completeness(path: Path) -> str | None:
    """Every strip or tile inside the file, and as many planes as the description
    announced (ImageJ ``images=``, tifffile's ``shape``)."""
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            for index, page in enumerate(pages, start=1):
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                    if offset + count > size:
                        return f"plane {index} lies beyond the end of the file"
            first = pages[0] if pages else None
            announced = _announced_planes(tif, first)
            if first is not None and announced > 1 and len(pages) < announced:
                plane = sum(first.databytecounts)
                end = first.dataoffsets[0] + announced * plane if first.dataoffsets else 0
                if end > size:  # ImageJ may write one IFD and the planes back to back
                    present = max(0, (size - first.dataoffsets[0]) // plane) if plane else 0
                    return f"{present} of {announced} planes present"
    except Exception:
        return None  # not a TIFF we can read: the import says so
    return None


def _announced_planes(tif, first) -> int:
    imagej = tif.imagej_metadata or {}
    if "images" in imagej:
        return int(imagej["images"])
    shaped = tif.shaped_metadata or ()
    if len(shaped) == 1 and first is not None and "shape" in shaped[0]:
        total = 1
        for n in shaped[0]["shape"]:
            total *= int(n)
        per_page = 1
        for n in first.shape:
            per_page *= int(n)
        return total // per_page if per_page else 1
    return 1
