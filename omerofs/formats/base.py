"""What every format reader shares: OMERO's pixel type names, OMERO's Image names, and
the cheap checks that tell a damaged file from a good one without reading its pixels."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from omerofs.catalog.protocol import ImageInfo
from omerofs.errors import DamagedFile, UnknownFormat

# numpy dtype names -> OMERO PixelsType values
PIXEL_TYPES = {
    "bool": "bit",
    "uint8": "uint8",
    "int8": "int8",
    "uint16": "uint16",
    "int16": "int16",
    "uint32": "uint32",
    "int32": "int32",
    "float32": "float",
    "float64": "double",
    "complex64": "complex",
    "complex128": "double-complex",
}
# OME-XML Pixels@Type is already in OMERO's vocabulary
OME_PIXEL_TYPES = frozenset(PIXEL_TYPES.values())


def pixel_type(dtype: object) -> str:
    name = str(dtype)
    return PIXEL_TYPES.get(name, name)


@dataclass(frozen=True)
class Series:
    """One Image as a reader sees it, before OMERO names it."""

    sizes: dict[str, int]  # X Y Z C T (missing axes are 1)
    pixel_type: str
    name: str | None = None  # the series name the format gives (Bio-Formats' Image name)
    physical: tuple[float | None, float | None, float | None] = (None, None, None)  # µm


def images(filename: str, series: list[Series]) -> list[ImageInfo]:
    """OMERO's Image names (ome.formats.model.PixelsProcessor): the file name alone for a
    single series, else ``file [series name]`` with the series index when it has none."""
    result = []
    for i, s in enumerate(series):
        if len(series) == 1:
            name = filename
        else:
            name = f"{filename} [{s.name.strip() if s.name and s.name.strip() else i}]"
        if len(name) > 255:
            name = "…" + name[-254:]
        size = {axis: max(1, int(s.sizes.get(axis, 1))) for axis in "XYZCT"}
        result.append(
            ImageInfo(
                i,
                name,
                size["X"],
                size["Y"],
                size["Z"],
                size["C"],
                size["T"],
                s.pixel_type,
                physical_x=s.physical[0],
                physical_y=s.physical[1],
                physical_z=s.physical[2],
            )
        )
    return result


def damaged(path: Path, reason: str) -> DamagedFile:
    exc = DamagedFile(f"{path.name}: damaged or incomplete file ({reason})")
    exc.reason = reason  # type: ignore[attr-defined]  # completeness() reports it alone
    return exc


def unknown(path: Path, reason: str) -> UnknownFormat:
    exc = UnknownFormat(f"{path.name}: unknown or unreadable image format ({reason})")
    exc.reason = f"unreadable: {reason}"  # type: ignore[attr-defined]
    return exc


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def require_extent(path: Path, end: int, what: str, size: int | None = None) -> None:
    """Raise DamagedFile when ``what`` (ending at byte ``end``) lies beyond the file."""
    size = os.path.getsize(path) if size is None else size
    if end > size:
        raise damaged(path, f"{what} lies beyond the end of the file ({end} > {size} bytes)")


def micrometres(value: object, unit: str | None = "µm") -> float | None:
    """A length in µm from a value and a unit name as OME-XML and vendors spell them."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if v <= 0 or v != v:
        return None
    factor = _UNITS.get((unit or "µm").strip().lower())
    return None if factor is None else v * factor


_UNITS = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "å": 1e-4,
    "angstrom": 1e-4,
}


@dataclass(frozen=True)
class Parts:
    """The files a main file names: those present and those not (relative names)."""

    present: tuple[Path, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Format:
    """One format family: which names it claims, how to read a main file's Images, and
    (for a main file that names others) which files it names."""

    name: str
    claims: Callable[[Path], bool]
    read: Callable[[Path], list[ImageInfo]]
    parts: Callable[[Path], Parts] | None = None
    mimetype: str = "application/octet-stream"
    suffixes: tuple[str, ...] = field(default=())


def suffix_claim(*suffixes: str) -> Callable[[Path], bool]:
    lowered = tuple(s.lower() for s in suffixes)
    return lambda path: path.name.lower().endswith(lowered)


def resolve_parts(base: Path, names: Iterable[str]) -> Parts:
    """Files named relative to ``base`` (a main file's directory): present or missing."""
    present: list[Path] = []
    missing: list[str] = []
    seen: set[str] = set()
    for name in names:
        rel = name.replace("\\", "/").lstrip("/")
        if not rel or rel in seen:
            continue
        seen.add(rel)
        p = base / rel
        if p.is_file():
            present.append(p)
        else:
            missing.append(rel)
    return Parts(tuple(present), tuple(missing))
