"""Olympus FluoView OIB (one OLE file) and OIF (``.oif`` + ``.oif.files/``) through
oiffile (BSD, pure Python): the main file's INI settings and the plane file list."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import Parts, Series, damaged, images, micrometres, one_line, pixel_type

SUFFIXES = (".oib", ".oif")


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def files_dir(path: Path) -> Path:
    return path.parent / f"{path.name}.files"


def read(path: Path) -> list[ImageInfo]:
    import oiffile  # lazily: see formats/__init__.py

    if path.name.lower().endswith(".oif") and not files_dir(path).is_dir():
        raise damaged(path, f"its folder {files_dir(path).name}/ is missing")
    try:
        with oiffile.OifFile(path) as oif:
            series = _series(oif)
            planes = len(oif.series[0]) if oif.series else 0
    except Exception as exc:  # oiffile's OLE and INI parsing raise many types
        raise damaged(path, f"unreadable FluoView structure: {one_line(exc)}") from None
    s = series.sizes
    expected = s["Z"] * s["C"] * s["T"]
    if planes < expected:
        raise damaged(path, f"{planes} of {expected} planes present")
    return images(path.name, [series])


def _series(oif: Any) -> Series:
    sizes = {"X": 1, "Y": 1, "Z": 1, "C": 1, "T": 1}
    for axis, length in zip(oif.axes, oif.shape, strict=True):
        key = axis if axis in sizes else ("C" if axis in ("S", "L") else "T")
        sizes[key] *= length
    ref = oif.mainfile.get("Reference Image Parameter", {})
    x = micrometres(ref.get("WidthConvertValue"), ref.get("WidthUnit"))
    y = micrometres(ref.get("HeightConvertValue"), ref.get("HeightUnit"))
    return Series(sizes, pixel_type(oif.dtype), None, (x, y, None))


def parts(path: Path) -> Parts:
    """An OIF names everything in its ``.oif.files/`` folder (Bio-Formats' used files)."""
    if not path.name.lower().endswith(".oif"):
        return Parts()
    folder = files_dir(path)
    present = []
    if folder.is_dir():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            present.extend(Path(dirpath, n) for n in sorted(filenames))
    missing = () if folder.is_dir() else (f"{folder.name}/",)
    return Parts(tuple(present), missing)
