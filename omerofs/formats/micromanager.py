"""Micro-Manager acquisitions saved as "separate image files": ``Pos*/metadata.txt``
(JSON: a Summary and one entry per plane naming its TIFF) beside one TIFF per plane.
One Image per position directory, as Bio-Formats' MicromanagerReader gives them.
(MMStack files are OME-TIFF and go through tiff.py; NDTiff through tifffile too.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import Parts, Series, damaged, images, micrometres, one_line

_PIXEL = {"GRAY8": "uint8", "GRAY16": "uint16", "GRAY32": "float", "RGB32": "uint8"}
_POS = re.compile(r"^Pos\d+$")


def claims(path: Path) -> bool:
    return path.name == "metadata.txt"


def positions(path: Path) -> list[Path]:
    """The metadata.txt of every position of the acquisition ``path`` belongs to."""
    if _POS.match(path.parent.name):
        found = sorted(
            (p / "metadata.txt" for p in path.parent.parent.iterdir() if _POS.match(p.name)),
            key=lambda p: int(p.parent.name[3:]),
        )
        return [p for p in found if p.is_file()] or [path]
    return [path]


def load(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        return json.loads(text)
    except ValueError:
        # Micro-Manager leaves the outer object open while acquiring (and some sets ship so)
        return json.loads(text.rstrip(",") + "\n}")


def plane_files(meta: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for key, value in meta.items():
        if key.startswith("Coords-"):
            names.append(key[len("Coords-") :])
        elif key.startswith("FrameKey-") and isinstance(value, dict) and value.get("FileName"):
            names.append(str(value["FileName"]))
    return list(dict.fromkeys(names))


def read(path: Path) -> list[ImageInfo]:
    series = []
    for meta_path in positions(path):
        try:
            meta = load(meta_path)
        except (OSError, ValueError) as exc:
            raise damaged(meta_path, f"unreadable metadata.txt: {one_line(exc)}") from None
        series.append(_series(meta_path, meta))
    acquisition = path.parent.parent if _POS.match(path.parent.name) else path.parent
    return images(acquisition.name if len(series) > 1 else path.name, series)


def _series(path: Path, meta: dict[str, Any]) -> Series:
    summary = meta.get("Summary", {})
    names = plane_files(meta)
    if not names:
        raise damaged(path, "metadata.txt names no image files")
    missing = [n for n in names if not (path.parent / n).is_file()]
    if missing:
        raise damaged(
            path,
            f"{len(names) - len(missing)} of {len(names)} planes present; missing {missing[0]}",
        )
    coords = _coords(meta)
    sizes = {"X": 1, "Y": 1, "Z": 1, "C": 1, "T": 1}
    axes = (("Z", "Slices", "z"), ("C", "Channels", "channel"), ("T", "Frames", "time"))
    for axis, key, coord in axes:
        declared = _int(summary.get(key))
        counted = max((c.get(coord, 0) for c in coords), default=0) + 1
        sizes[axis] = declared if declared > 0 else counted
    width, height = _int(summary.get("Width")), _int(summary.get("Height"))
    ptype = _PIXEL.get(str(summary.get("PixelType", "")).upper())
    if width <= 0 or height <= 0 or ptype is None:
        from omerofs.formats import tiff

        first = tiff.read(path.parent / names[0])[0]
        width, height, ptype = first.size_x, first.size_y, first.pixel_type
    if str(summary.get("PixelType", "")).upper() == "RGB32":
        sizes["C"] *= 3
    sizes["X"], sizes["Y"] = width, height
    pixel = micrometres(summary.get("PixelSize_um"))
    z = micrometres(summary.get("z-step_um")) if sizes["Z"] > 1 else None
    return Series(sizes, ptype, path.parent.name, (pixel, pixel, z))


def _coords(meta: dict[str, Any]) -> list[dict[str, int]]:
    found = []
    for key, value in meta.items():
        if key.startswith("Coords-") and isinstance(value, dict):
            found.append({k: _int(v) for k, v in value.items()})
        elif key.startswith("FrameKey-"):
            parts = key.split("-")[1:4]
            if len(parts) == 3:
                t, c, z = (_int(p) for p in parts)
                found.append({"time": t, "channel": c, "z": z})
    return found


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def parts(path: Path) -> Parts:
    present: list[Path] = []
    missing: list[str] = []
    for meta_path in positions(path):
        if meta_path != path:
            present.append(meta_path)
        try:
            names = plane_files(load(meta_path))
        except (OSError, ValueError):
            continue
        for n in names:
            p = meta_path.parent / n
            rel = (
                str(p.relative_to(path.parent))
                if p.is_relative_to(path.parent)
                else str(Path("..") / meta_path.parent.name / n)
            )
            (present.append(p) if p.is_file() else missing.append(rel))
    return Parts(tuple(present), tuple(missing))
