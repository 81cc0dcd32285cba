"""DeltaVision DV through mrc (BSD, pure Python): the 1024-byte header and the extended
header, never the sections. A ``.dv.log`` (or ``.log``) beside it is part of its fileset."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import (
    Parts,
    Series,
    damaged,
    images,
    one_line,
    pixel_type,
    require_extent,
)

SUFFIXES = (".dv", ".r3d", ".r3d_d3d", ".dv_d3d")
_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 7: 4}  # MRC mode -> bytes per pixel


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def read(path: Path) -> list[ImageInfo]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(1024)
    if len(head) < 1024:
        raise damaged(path, "header shorter than 1024 bytes")
    order = _byte_order(path, head)
    nx, ny, nsections, mode = struct.unpack_from(order + "4i", head, 0)
    (ext_len,) = struct.unpack_from(order + "i", head, 92)
    per_pixel = _BYTES.get(mode)
    if per_pixel is None or min(nx, ny, nsections) <= 0 or ext_len < 0:
        raise damaged(path, f"unreadable header (mode {mode}, {nx}x{ny}x{nsections})")
    require_extent(path, 1024 + ext_len + nx * ny * nsections * per_pixel, "pixel data", size)
    import mrc  # lazily: see formats/__init__.py

    try:
        with mrc.DVFile(str(path)) as dv:
            sizes = dict(dv.sizes)
            dtype = dv.dtype
            voxel = dv.voxel_size
    except Exception as exc:
        raise damaged(path, one_line(exc)) from None
    physical = tuple(float(v) if v and v > 0 else None for v in (voxel.x, voxel.y, voxel.z))
    series = Series(sizes, pixel_type(dtype), None, physical)  # type: ignore[arg-type]
    return images(path.name, [series])


def _byte_order(path: Path, head: bytes) -> str:
    for order in ("<", ">"):
        (magic,) = struct.unpack_from(order + "h", head, 96)
        if magic == -16224:  # 0xC0A0, DeltaVision's nDVID
            return order
    raise damaged(path, "no DeltaVision magic in the header")


def parts(path: Path) -> Parts:
    """Bio-Formats' DeltavisionReader uses ``<name>.log`` or ``<stem>.log`` beside it."""
    candidates = [path.parent / f"{path.name}.log", path.with_suffix(".log")]
    present = tuple(dict.fromkeys(p for p in candidates if p.is_file()))
    return Parts(present, ())
