"""Imaris IMS (HDF5) through h5py: the DataSetInfo attributes and the shape of resolution
level 0, never the datasets' data. One Image (resolution levels are a pyramid)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import Series, damaged, images, one_line, pixel_type

SUFFIXES = (".ims",)


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def read(path: Path) -> list[ImageInfo]:
    import h5py  # lazily: see formats/__init__.py

    try:
        with h5py.File(path, "r") as f:
            series = _series(path, f)
    except Exception as exc:
        from omerofs.errors import DamagedFile

        if isinstance(exc, DamagedFile):
            raise
        raise damaged(path, one_line(exc)) from None
    return images(path.name, [series])


def _text(attrs: Any, key: str) -> str | None:
    if key not in attrs:
        return None
    value = attrs[key]
    try:
        return b"".join(value).decode("latin-1").strip("\x00 ")
    except TypeError:
        return str(value)


def _series(path: Path, f: Any) -> Series:
    level = f.get("DataSet/ResolutionLevel 0")
    if level is None:
        raise damaged(path, "no DataSet/ResolutionLevel 0")
    times = sorted(k for k in level if k.startswith("TimePoint "))
    if not times:
        raise damaged(path, "no time point")
    channels = sorted(k for k in level[times[0]] if k.startswith("Channel "))
    if not channels:
        raise damaged(path, "no channel")
    data = level[times[0]][channels[0]].get("Data")
    if data is None:
        raise damaged(path, "no Data in resolution level 0")
    z, y, x = data.shape
    info = f.get("DataSetInfo/Image")
    attrs = info.attrs if info is not None else {}
    # Imaris pads the datasets to chunk multiples; X/Y/Z attributes hold the real size
    sizes = {
        "X": int(_text(attrs, "X") or x),
        "Y": int(_text(attrs, "Y") or y),
        "Z": int(_text(attrs, "Z") or z),
        "C": len(channels),
        "T": len(times),
    }
    physical = []
    for i, axis in enumerate("XYZ"):
        lo, hi = _text(attrs, f"ExtMin{i}"), _text(attrs, f"ExtMax{i}")
        try:
            extent = float(hi) - float(lo)  # type: ignore[arg-type]
            physical.append(extent / sizes[axis] if extent > 0 else None)
        except (TypeError, ValueError):
            physical.append(None)
    return Series(sizes, pixel_type(data.dtype), None, tuple(physical))  # type: ignore[arg-type]
