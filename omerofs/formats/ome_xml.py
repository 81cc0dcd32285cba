"""OME-XML as OME-TIFF, companion files and bioformats2raw Zarr carry it: the Images with
their sizes, and which planes each TIFF file holds (TiffData with UUID FileName).

ElementTree rather than ome-types: only a handful of attributes are needed and ome-types
(pydantic + xsdata) would add seconds of import time to a CLI call."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from omerofs.formats.base import OME_PIXEL_TYPES, Series, micrometres


@dataclass(frozen=True)
class TiffData:
    file_name: str | None  # None: the file holding this OME-XML
    ifd: int
    plane_count: int | None  # None: as many as the Image has (or all the file has)


@dataclass(frozen=True)
class OmeImage:
    series: Series
    planes: int  # Z * C * T / samples per pixel
    tiff_data: tuple[TiffData, ...]


@dataclass(frozen=True)
class OmeXml:
    images: tuple[OmeImage, ...]
    binary_only: str | None  # MetadataFile of a BinaryOnly OME-TIFF part
    plate_count: int = 0

    def file_names(self) -> list[str]:
        """Every file the Images' TiffData name, in the order they are named."""
        names: list[str] = []
        for image in self.images:
            for td in image.tiff_data:
                if td.file_name and td.file_name not in names:
                    names.append(td.file_name)
        return names


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse(text: str) -> OmeXml:
    """Parse OME-XML; raises ValueError when it is not OME-XML at all."""
    try:
        root = ET.fromstring(text.strip().encode("utf-8") if isinstance(text, str) else text)
    except ET.ParseError as exc:
        raise ValueError(f"OME-XML does not parse: {exc}") from None
    if _local(root.tag) != "OME":
        raise ValueError("not OME-XML")
    binary_only = None
    images = []
    plates = 0
    for child in root:
        tag = _local(child.tag)
        if tag == "BinaryOnly":
            binary_only = child.get("MetadataFile") or ""
        elif tag == "Image":
            image = _image(child)
            if image is not None:
                images.append(image)
        elif tag == "Plate":
            plates += 1
    return OmeXml(tuple(images), binary_only, plates)


def _image(element: ET.Element) -> OmeImage | None:
    pixels = next((c for c in element if _local(c.tag) == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {axis: _int(pixels.get(f"Size{axis}"), 1) for axis in "XYZCT"}
    ptype = (pixels.get("Type") or "").lower()
    if ptype not in OME_PIXEL_TYPES:
        ptype = {"float32": "float", "float64": "double"}.get(ptype, ptype or "uint8")
    samples = 1
    tiff_data = []
    for c in pixels:
        tag = _local(c.tag)
        if tag == "Channel":
            samples = max(samples, _int(c.get("SamplesPerPixel"), 1))
        elif tag == "TiffData":
            uuid = next((u for u in c if _local(u.tag) == "UUID"), None)
            count = c.get("PlaneCount")
            tiff_data.append(
                TiffData(
                    uuid.get("FileName") if uuid is not None else None,
                    _int(c.get("IFD"), 0),
                    _int(count, 1) if count is not None else None,
                )
            )
    physical = tuple(
        micrometres(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit") or "µm")
        for a in "XYZ"
    )
    series = Series(sizes, ptype, element.get("Name"), physical)  # type: ignore[arg-type]
    planes = sizes["Z"] * sizes["T"] * max(1, sizes["C"] // samples)
    return OmeImage(series, planes, tuple(tiff_data))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
