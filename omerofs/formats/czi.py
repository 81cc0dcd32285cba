"""Zeiss CZI through czifile (BSD, pure Python): the subblock directory and the XML
metadata, never the subblocks' pixels. One Image per scene (S), as Bio-Formats gives
them; mosaic tiles (M) of a scene are one stitched Image; pyramid levels are no Images."""

from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.errors import DamagedFile
from omerofs.formats.base import Series, damaged, images, micrometres, one_line, require_extent

SUFFIXES = (".czi",)
_PIXEL = {
    "Gray8": ("uint8", 1),
    "Gray16": ("uint16", 1),
    "Gray32": ("int32", 1),  # Bio-Formats reads Gray32 as int32 (rare; ZEN writes Float)
    "Gray32Float": ("float", 1),
    "Gray64Float": ("double", 1),
    "Bgr24": ("uint8", 3),
    "Bgr48": ("uint16", 3),
    "Bgr96Float": ("float", 3),
    "Bgra32": ("uint8", 4),
    "Gray64ComplexFloat": ("complex", 1),
    "Bgr192ComplexFloat": ("complex", 3),
}


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def read(path: Path) -> list[ImageInfo]:
    size = os.path.getsize(path)
    directory_at, metadata_at = _header(path)
    require_extent(path, directory_at + 32 + 128, "the subblock directory", size)
    import czifile  # lazily: see formats/__init__.py

    try:
        with czifile.CziFile(str(path)) as czi:
            entries = list(czi.filtered_subblock_directory)
            _check_last_subblock(path, czi, entries, size)
            xml = czi.metadata() if metadata_at else None
    except DamagedFile:
        raise
    except Exception as exc:  # czifile raises many types for a damaged directory
        raise damaged(path, f"unreadable subblock directory: {one_line(exc)}") from None
    if not entries:
        raise damaged(path, "no subblocks")
    physical = _physical(xml)
    return images(path.name, _scenes(entries, physical))


def _header(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"ZISRAWFILE"):
        raise damaged(path, "no CZI file header")
    directory_at, metadata_at = struct.unpack_from("<qq", head, 84)
    if directory_at <= 0:
        raise damaged(path, "no subblock directory (file still being written?)")
    return directory_at, metadata_at


def _check_last_subblock(path: Path, czi: Any, entries: list[Any], size: int) -> None:
    """Subblocks follow one another: the last one ending inside the file means all do."""
    last = max(e.file_position for e in entries)
    require_extent(path, last + 32, "the last subblock", size)
    czi._fh.seek(last)
    head = czi._fh.read(32)
    if not head.startswith(b"ZISRAWSUBBLOCK"):
        raise damaged(path, "the last subblock has no subblock header")
    _allocated, used = struct.unpack_from("<qq", head, 16)
    require_extent(path, last + 32 + used, "the last subblock", size)


def _scenes(entries: list[Any], physical: tuple[float | None, ...]) -> list[Series]:
    by_scene: dict[int, list[Any]] = defaultdict(list)
    for e in entries:
        dims = {d.dimension: d for d in e.dimension_entries}
        x = dims.get("X")
        if x is not None and x.stored_size != x.size:
            continue  # a pyramid level, not full resolution
        by_scene[dims["S"].start if "S" in dims else 0].append(dims)
    result = []
    for scene in sorted(by_scene):
        blocks = by_scene[scene]
        sizes = {
            "X": _extent(blocks, "X"),
            "Y": _extent(blocks, "Y"),
            "Z": _count(blocks, "Z"),
            "C": _count(blocks, "C"),
            "T": _count(blocks, "T"),
        }
        ptype, samples = _PIXEL.get(_pixel_type_of(entries), ("uint8", 1))
        sizes["C"] *= samples
        result.append(Series(sizes, ptype, None, physical))  # type: ignore[arg-type]
    if len(result) > 1:  # Bio-Formats' ZeissCZIReader: "scene position #N" (from 0)
        width = len(str(len(result) - 1)) if len(result) > 1 else 1
        result = [
            Series(s.sizes, s.pixel_type, f"scene position #{i:0{width}d}", s.physical)
            for i, s in enumerate(result)
        ]
    return result


def _pixel_type_of(entries: list[Any]) -> str:
    value = entries[0].pixel_type
    return value if isinstance(value, str) else str(value)


def _extent(blocks: list[dict[str, Any]], axis: str) -> int:
    starts = [b[axis].start for b in blocks if axis in b]
    ends = [b[axis].start + b[axis].size for b in blocks if axis in b]
    return (max(ends) - min(starts)) if starts else 1


def _count(blocks: list[dict[str, Any]], axis: str) -> int:
    values = set()
    for b in blocks:
        if axis in b:
            d = b[axis]
            values.update(range(d.start, d.start + max(1, d.size)))
    return len(values) or 1


def _physical(xml: str | None) -> tuple[float | None, float | None, float | None]:
    """Scaling/Items/Distance[@Id] in metres per pixel."""
    found: dict[str, float | None] = {}
    if xml:
        try:
            root = ET.fromstring(xml)
            for d in root.iter("Distance"):
                axis = d.get("Id")
                value = d.findtext("Value")
                if axis in ("X", "Y", "Z") and value:
                    found[axis] = micrometres(value, "m")
        except ET.ParseError:
            pass
    return (found.get("X"), found.get("Y"), found.get("Z"))
