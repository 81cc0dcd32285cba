"""Image metadata, read the way OMERO reads it at import: one Image per series.

tifffile reads OME-TIFF, ImageJ, LSM, STK, NDPI, SVS and the other TIFF flavours; a
file it cannot parse is "unknown format" as the main file of a fileset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.errors import UnknownFormat

_PIXEL_TYPES = {
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
IMAGE_SUFFIXES = (
    ".tif",
    ".tiff",
    ".btf",
    ".tf2",
    ".tf8",
    ".lsm",
    ".stk",
    ".ndpi",
    ".svs",
    ".scn",
    ".qptiff",
    ".gel",
    ".flex",
)


def looks_like_image(path: Path) -> bool:
    """A cheap guess used to pick a fileset's main file before parsing it."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def read_images(path: Path) -> list[ImageInfo]:
    """One ImageInfo per series in ``path``; raise UnknownFormat if no reader knows it."""
    import tifffile  # imported here: numpy + tifffile cost every CLI call ~0.3 s otherwise

    try:
        with tifffile.TiffFile(path) as tif:
            series = list(tif.series)
            if not series:
                raise UnknownFormat(
                    f"{path.name}: unknown or unreadable image format (no image series)"
                )
            return [_image(path.name, i, s, len(series)) for i, s in enumerate(series)]
    except UnknownFormat:
        raise
    except Exception as exc:  # tifffile raises many types for damaged or foreign files
        raise UnknownFormat(f"{path.name}: unknown or unreadable image format ({exc})") from None


def _image(filename: str, index: int, series: Any, count: int) -> ImageInfo:
    sizes = {"X": 1, "Y": 1, "Z": 1, "C": 1, "T": 1}
    for axis, length in zip(series.axes, series.shape, strict=True):
        if axis in ("X", "Y", "Z", "T"):
            sizes[axis] *= length
        elif axis in ("C", "S"):
            sizes["C"] *= length
        else:  # unnamed stacking axes (I, Q, R, ...) count as time points, as Bio-Formats does
            sizes["T"] *= length
    label = series.name or f"#{index}"
    name = filename if count == 1 else f"{filename} [{label}]"
    pixel_type = _PIXEL_TYPES.get(str(series.dtype), str(series.dtype))
    return ImageInfo(
        index, name, sizes["X"], sizes["Y"], sizes["Z"], sizes["C"], sizes["T"], pixel_type
    )
