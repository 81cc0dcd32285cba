"""Nikon ND2 through nd2 (BSD, pure Python; its dask and ome-types are never imported
for metadata): sizes, pixel type and voxel size from the chunk map and attributes. One
Image per XY position (P), as Bio-Formats' NativeND2Reader gives them."""

from __future__ import annotations

from pathlib import Path

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import Series, damaged, images, one_line, pixel_type, require_extent

SUFFIXES = (".nd2",)


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def read(path: Path) -> list[ImageInfo]:
    import nd2  # lazily: see formats/__init__.py

    try:
        with nd2.ND2File(path) as f:
            sizes = dict(f.sizes)
            dtype = f.dtype
            voxel = f.voxel_size()
            frames = f.attributes.sequenceCount
            chunks = _frame_chunks(f)
    except Exception as exc:
        reason = one_line(exc)
        if "chunkmap" in reason.lower():
            reason = "no chunk map at the end of the file"
        raise damaged(path, reason) from None
    size = path.stat().st_size
    for number, end in enumerate(chunks, 1):
        require_extent(path, end, f"frame {number}", size)
    if frames and len(chunks) and len(chunks) < frames:
        raise damaged(path, f"{len(chunks)} of {frames} frames present")
    base = {"X": sizes.get("X", 1), "Y": sizes.get("Y", 1), "Z": sizes.get("Z", 1)}
    base["C"] = sizes.get("C", 1) * sizes.get("S", 1)
    base["T"] = sizes.get("T", 1)
    physical = tuple(float(v) if v and v > 0 else None for v in (voxel.x, voxel.y, voxel.z))
    positions = sizes.get("P", 1)
    ptype = pixel_type(dtype)
    series = [Series(dict(base), ptype, None, physical) for _ in range(positions)]  # type: ignore[arg-type]
    return images(path.name, series)


def _frame_chunks(f: object) -> list[int]:
    """End offsets of the image data chunks (ImageDataSeq|n!), from the chunk map."""
    try:
        chunkmap = f._rdr.chunkmap  # type: ignore[attr-defined]
    except Exception:
        return []
    ends = []
    for key, value in chunkmap.items():
        name = key.decode("latin-1", "replace") if isinstance(key, bytes) else str(key)
        if name.startswith("ImageDataSeq|"):
            offset, length = value[0], value[1]
            ends.append(int(offset) + int(length))
    return ends
