"""Leica LIF through liffile (BSD, pure Python): the XML header and the memory block
table, never the blocks. One Image per LIF image, named by its path in the file, as
Bio-Formats' LIFReader does, with its sizes (the XML's Dimension and Channel
descriptions read by its rules); the tiles of a tile scan are one Image each there too."""

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
    """Sizes as Bio-Formats' LIFReader.translateImageNodes gives them: C is the number of
    ChannelDescriptions; DimID 1-4 are X Y Z T, 10 is tiles (one Image each); any other
    dimension (5, 9: emission/excitation wavelength sweeps, ...) multiplies Z when there
    is no Z, else T."""
    element = image.xml_element
    channels = list(element.iter("ChannelDescription"))
    sizes = {"X": 1, "Y": 0, "Z": 1, "C": max(1, len(channels)), "T": 0}
    physical: list[float | None] = [None, None, None]
    extras = tiles = 1
    for dim in element.iter("DimensionDescription"):
        dim_id = int(dim.get("DimID", "0"))
        n = int(dim.get("NumberOfElements", "1"))
        length = _metres(dim)
        if dim_id == 1:
            sizes["X"] = n
            physical[0] = length / n if length else None
        elif dim_id == 2 and sizes["Y"] == 0:
            sizes["Y"] = n
            physical[1] = length / n if length else None
        elif dim_id in (2, 3) and sizes["Y"] != 0 and sizes["Z"] == 1:
            sizes["Z"] = n
            physical[2] = length / (n - 1) if length and n > 1 else None
        elif dim_id in (2, 4) and sizes["Y"] != 0:
            sizes["T"] = n
        elif dim_id in (3, 4):  # an XZ or XT scan: its second axis is Y
            sizes["Y"] = n
            physical[1] = length / n if length else None
        elif dim_id == 10:
            tiles *= n
        else:
            extras *= n
    if extras > 1:
        if sizes["Z"] == 1:
            sizes["Z"] = extras
        else:
            sizes["T"] = extras if sizes["T"] == 0 else sizes["T"] * extras
    sizes = {k: max(1, v) for k, v in sizes.items()}
    ptype = pixel_type(image.dtype)
    name = image.path or image.name
    phys = tuple(physical)
    return [Series(dict(sizes), ptype, name, phys) for _ in range(tiles)]  # type: ignore[arg-type]


def _metres(dim: Any) -> float | None:
    """A DimensionDescription's Length in µm (it is in m for space; None otherwise)."""
    try:
        value = float(dim.get("Length", "0"))
    except ValueError:
        return None
    return micrometres(value, dim.get("Unit") or "m") if value > 0 else None
