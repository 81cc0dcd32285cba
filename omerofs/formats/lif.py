"""Leica LIF through liffile (BSD, pure Python): the XML header and the memory block
table, never the blocks. One Image per LIF image, named by its path in the file, as
Bio-Formats' LIFReader does; tiles (M) of a tile scan are one Image per tile there too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import (
    Series,
    damaged,
    images,
    micrometres,
    one_line,
    pixel_type,
    require_extent,
)

SUFFIXES = (".lif",)
_CHANNEL_AXES = ("C", "S", "λ", "Λ")  # channels, samples and wavelength sweeps


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def read(path: Path) -> list[ImageInfo]:
    import liffile  # lazily: see formats/__init__.py

    size = os.path.getsize(path)
    try:
        with liffile.LifFile(path) as lif:
            for block in lif.memory_blocks.values():
                require_extent(path, block.offset + block.size, f"memory block {block.id}", size)
            series = [s for image in lif.images for s in _series(image)]
    except Exception as exc:
        from omerofs.errors import DamagedFile

        if isinstance(exc, DamagedFile):
            raise
        raise damaged(path, one_line(exc)) from None
    if not series:
        raise damaged(path, "no image in the LIF header")
    return images(path.name, series)


def _series(image: Any) -> list[Series]:
    sizes = {"X": 1, "Y": 1, "Z": 1, "C": 1, "T": 1}
    tiles = 1
    for axis, length in image.sizes.items():
        if axis in ("X", "Y", "Z", "T"):
            sizes[axis] *= length
        elif axis in _CHANNEL_AXES:
            sizes["C"] *= length
        elif axis == "M":
            tiles *= length
        else:
            sizes["T"] *= length
    physical = _physical(image)
    ptype = pixel_type(image.dtype)
    name = image.path or image.name
    if tiles == 1:
        return [Series(sizes, ptype, name, physical)]
    return [Series(dict(sizes), ptype, name, physical) for _ in range(tiles)]


def _physical(image: Any) -> tuple[float | None, float | None, float | None]:
    """DimensionDescription Length (m) over NumberOfElements - 1, per axis."""
    found: dict[str, float | None] = {}
    try:
        for dim in image.xml_element.iter("DimensionDescription"):
            axis = {"1": "X", "2": "Y", "3": "Z"}.get(dim.get("DimID", ""))
            n = int(dim.get("NumberOfElements", "0"))
            if axis and n > 1:
                unit = dim.get("Unit") or "m"
                found[axis] = micrometres(float(dim.get("Length", "0")) / (n - 1), unit)
    except Exception:  # optional metadata
        return (None, None, None)
    return (found.get("X"), found.get("Y"), found.get("Z"))
