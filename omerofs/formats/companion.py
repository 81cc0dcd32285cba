"""OME-TIFF companion files (``*.companion.ome``): OME-XML that names the TIFFs holding
the planes (TiffData UUID FileName); the TIFFs are BinaryOnly parts pointing back."""

from __future__ import annotations

from pathlib import Path

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats import ome_xml
from omerofs.formats.base import Parts, damaged, images, one_line, resolve_parts

SUFFIXES = (".companion.ome",)


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _parse(path: Path) -> ome_xml.OmeXml:
    try:
        return ome_xml.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        raise damaged(path, f"unreadable OME-XML: {one_line(exc)}") from None


def read(path: Path) -> list[ImageInfo]:
    from omerofs.formats import tiff

    ome = _parse(path)
    if not ome.images:
        raise damaged(path, "no Image in the companion OME-XML")
    tiff.check_ome_files(path, ome, ome.file_names())
    return images(path.name, [i.series for i in ome.images])


def parts(path: Path) -> Parts:
    try:
        return resolve_parts(path.parent, _parse(path).file_names())
    except Exception:
        return Parts()
