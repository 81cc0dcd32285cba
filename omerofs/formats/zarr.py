"""OME-Zarr (NGFF 0.4 / 0.5, zarr v2 and v3) from its JSON alone: ``.zattrs`` /
``zarr.json`` multiscales, the level-0 array's shape and dtype, bioformats2raw series and
HCS plates (each well field read as an Image for now). No zarr library: these are a few
small JSON files, and zarr-python would pull in numcodecs and an async stack."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo, PlateInfo, WellSample
from omerofs.formats.base import Series, damaged, images, micrometres, one_line

_DTYPES = {
    "b1": "bit",
    "u1": "uint8",
    "i1": "int8",
    "u2": "uint16",
    "i2": "int16",
    "u4": "uint32",
    "i4": "int32",
    "f4": "float",
    "f8": "double",
    "c8": "complex",
    "c16": "double-complex",
}
_V3_DTYPES = {
    "bool": "bit",
    "float32": "float",
    "float64": "double",
    "complex64": "complex",
    "complex128": "double-complex",
}


def root_of(path: Path) -> Path | None:
    """The outermost ``*.zarr`` directory holding ``path`` (or ``path`` itself)."""
    found = None
    for p in (path, *path.parents):
        if p.name.lower().endswith(".zarr"):
            found = p
    return found


def claims(path: Path) -> bool:
    root = root_of(path)
    return (
        root is not None
        and (path == root or path.parent == root)
        and (path == root or path.name in (".zattrs", "zarr.json"))
    )


def main_file(root: Path) -> Path | None:
    for name in ("zarr.json", ".zattrs"):
        if (root / name).is_file():
            return root / name
    return None


def read(path: Path) -> list[ImageInfo]:
    root = root_of(path) or path
    try:
        attrs = _attrs(root)
        series = _read_root(root, attrs)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise damaged(root, one_line(exc)) from None
    if not series:
        raise damaged(root, "no multiscales image in the Zarr hierarchy")
    return images(root.name, series)


def plate(path: Path) -> PlateInfo | None:
    """The HCS plate an OME-Zarr holds (NGFF ``plate`` metadata), or None. Its wells'
    fields are the Images ``read`` gives, in the same order (wells as listed, then each
    well's ``images``), so WellSample ``series`` numbers match them."""
    root = root_of(path) or path
    try:
        attrs = _attrs(root)
        if "plate" not in attrs or "multiscales" in attrs:
            return None
        meta = attrs["plate"]
        rows = [r["name"] for r in meta.get("rows", [])]
        columns = [c["name"] for c in meta.get("columns", [])]
        samples = []
        for well in meta.get("wells", []):
            row, column = _well_position(well, rows, columns)
            fields = _attrs(root / well["path"]).get("well", {}).get("images", [])
            for index in range(len(fields)):
                samples.append(WellSample(len(samples), row, column, index))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise damaged(root, one_line(exc)) from None
    fields = max((s.field + 1 for s in samples), default=0)
    name = meta.get("name") or root.name
    return PlateInfo(str(name), len(rows), len(columns), int(meta.get("field_count", fields)),
                     tuple(samples))  # fmt: skip


def _well_position(well: dict[str, Any], rows: list[str], columns: list[str]) -> tuple[int, int]:
    """NGFF 0.4 gives ``rowIndex``/``columnIndex``; 0.3 only the path ``A/1``."""
    if "rowIndex" in well and "columnIndex" in well:
        return int(well["rowIndex"]), int(well["columnIndex"])
    row, column = str(well["path"]).split("/")[:2]
    return rows.index(row), columns.index(column)


def _attrs(group: Path) -> dict[str, Any]:
    v3 = group / "zarr.json"
    if v3.is_file():
        meta = json.loads(v3.read_text())
        attrs = meta.get("attributes", {})
        return attrs.get("ome", attrs)
    v2 = group / ".zattrs"
    if v2.is_file():
        return json.loads(v2.read_text())
    raise ValueError(f"{group.name}: no .zattrs or zarr.json")


def _read_root(root: Path, attrs: dict[str, Any]) -> list[Series]:
    names = _ome_names(root)
    if "multiscales" in attrs:
        paths = [root]
    elif "plate" in attrs:
        paths = []
        for well in attrs["plate"].get("wells", []):
            well_dir = root / well["path"]
            for field in _attrs(well_dir).get("well", {}).get("images", []):
                paths.append(well_dir / field["path"])
    elif "bioformats2raw.layout" in attrs:
        paths = []
        index = 0
        while (root / str(index)).is_dir():
            paths.append(root / str(index))
            index += 1
    else:
        return []
    result = []
    for i, group in enumerate(paths):
        name = names[i] if len(names) == len(paths) else str(group.relative_to(root))
        result.append(_image(group, _attrs(group), name))
    return result


def _image(group: Path, attrs: dict[str, Any], name: str | None) -> Series:
    ms = attrs["multiscales"][0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", "tczyx")]
    units = {a["name"]: a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict)}
    level0 = ms["datasets"][0]
    shape, dtype = _array(group / level0["path"])
    if len(shape) != len(axes):
        raise ValueError(f"{group.name}: {len(axes)} axes but a {len(shape)}-d array")
    sizes = {"X": 1, "Y": 1, "Z": 1, "C": 1, "T": 1}
    for axis, length in zip(axes, shape, strict=True):
        sizes[axis.upper() if axis.upper() in sizes else "T"] *= int(length)
    scale = next(
        (t["scale"] for t in level0.get("coordinateTransformations", []) if t["type"] == "scale"),
        None,
    )
    physical: list[float | None] = [None, None, None]
    if scale:
        for axis, value in zip(axes, scale, strict=False):
            if axis in ("x", "y", "z") and units.get(axis):
                physical["xyz".index(axis)] = micrometres(value, _unit(units[axis]))
    return Series(sizes, dtype, name, tuple(physical))  # type: ignore[arg-type]


def _unit(name: str) -> str:
    return {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}.get(name, name)


def _array(array: Path) -> tuple[list[int], str]:
    v3 = array / "zarr.json"
    if v3.is_file():
        meta = json.loads(v3.read_text())
        dtype = str(meta["data_type"])
        return list(meta["shape"]), _V3_DTYPES.get(dtype, dtype)
    meta = json.loads((array / ".zarray").read_text())
    dtype = str(meta["dtype"]).lstrip("<>|=")
    return list(meta["shape"]), _DTYPES.get(dtype, dtype)


def _ome_names(root: Path) -> list[str]:
    """Image names from bioformats2raw's OME/METADATA.ome.xml, in series order."""
    xml = root / "OME" / "METADATA.ome.xml"
    if not xml.is_file():
        return []
    try:
        tree = ET.parse(xml)
    except ET.ParseError:
        return []
    return [e.get("Name") or "" for e in tree.getroot() if e.tag.rsplit("}", 1)[-1] == "Image"]
