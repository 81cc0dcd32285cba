"""The TIFF family through tifffile: OME-TIFF (single and multi-file), ImageJ
hyperstacks, LSM, MetaMorph STK, Micro-Manager MMStack and NDTiff, plain TIFF.

Only IFDs and tags are read. Damage is found from them: every plane's strips or tiles
must lie inside the file, and the file must hold as many planes as its own metadata
(OME-XML TiffData, ImageJ ``images=``, Micro-Manager's index map) says."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omerofs.catalog.protocol import ImageInfo
from omerofs.errors import DamagedFile, UnknownFormat
from omerofs.formats import ome_xml
from omerofs.formats.base import (
    Parts,
    Series,
    damaged,
    images,
    micrometres,
    one_line,
    pixel_type,
    require_extent,
    resolve_parts,
    unknown,
)

SUFFIXES = (
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
OME_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf")


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Any]:
    import tifffile  # lazily: numpy + tifffile cost every CLI call ~0.3 s otherwise

    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its warnings about bad IFDs become our one-line errors
    try:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types for damaged or foreign files
            raise unknown(path, one_line(exc)) from None
        with tif:
            yield tif
    finally:
        quiet.setLevel(level)


def read(path: Path, _seen: frozenset[Path] = frozenset()) -> list[ImageInfo]:
    with _open(path) as tif:
        pages = _pages(tif, path)
        ome = _ome(tif)
        if ome is not None and ome.binary_only is not None:
            return _read_master(path, ome.binary_only, _seen)
        if ome is not None and ome.images:
            check_ome_planes(path, ome, {path.name: len(pages)})
            check_ome_files(path, ome, [n for n in ome.file_names() if n != path.name])
            return images(path.name, [i.series for i in ome.images])
        _check_imagej(path, tif, pages)
        _check_micromanager(path, tif)
        series = _series(tif)
        if not series:
            raise unknown(path, "no image series")
        return images(path.name, series)


def master_of(path: Path) -> str | None:
    """The MetadataFile a BinaryOnly OME-TIFF part names (None for any other TIFF)."""
    if not is_ome_tiff(path):
        return None
    try:
        with _open(path) as tif:
            ome = _ome(tif)
    except (UnknownFormat, DamagedFile):
        return None
    return ome.binary_only if ome is not None else None


def parts(path: Path) -> Parts:
    """Files an OME-TIFF master names in its TiffData; an MMStack file its
    ``*_metadata.txt``. A BinaryOnly part names nothing here (see master_of)."""
    if not (is_ome_tiff(path) or "_mmstack" in path.name.lower()):
        return Parts()  # a plain TIFF names no other file: not even opened
    try:
        with _open(path) as tif:
            ome = _ome(tif)
            mm = bool(tif.is_micromanager)
    except (UnknownFormat, DamagedFile):
        return Parts()
    names: list[str] = []
    if ome is not None and ome.binary_only is None:
        names = ome.file_names()
    found = resolve_parts(path.parent, [n for n in names if n != path.name])
    if mm:
        stem = path.name.split("_MMStack")[0]
        extra = [p for p in (path.parent / f"{stem}_metadata.txt",) if p.is_file()]
        found = Parts(found.present + tuple(extra), found.missing)
    return found


def _ome(tif: Any) -> ome_xml.OmeXml | None:
    if not tif.is_ome:
        return None
    try:
        return ome_xml.parse(tif.pages.first.description)
    except ValueError:
        return None


def _pages(tif: Any, path: Path) -> list[Any]:
    """Every IFD, each checked to lie inside the file with its strips or tiles."""
    size = os.path.getsize(path)
    tif.pages.useframes = True  # light TiffFrames after the first page: tags only
    tif.pages.cache = False
    try:
        pages = list(tif.pages)
    except Exception:  # frames need pages shaped like the first (not so in LSM, pyramids)
        tif.pages.useframes = False
        try:
            pages = [tif.pages[i] for i in range(len(tif.pages))]
        except Exception as exc:
            raise damaged(path, f"unreadable IFD: {one_line(exc)}") from None
    if not pages:
        raise unknown(path, "no readable IFD")  # nothing says it is a TIFF beyond 4 bytes
    for number, page in enumerate(pages, 1):
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if count:
                require_extent(path, offset + count, f"plane {number}", size)
    return pages


def check_ome_planes(path: Path, ome: ome_xml.OmeXml, ifds: dict[str, int]) -> None:
    """Each file of ``ifds`` (name -> IFD count) holds the planes OME-XML puts there."""
    for image in ome.images:
        tds = image.tiff_data or (ome_xml.TiffData(None, 0, None),)
        for td in tds:
            name = td.file_name or path.name
            if name not in ifds:
                continue
            count = td.plane_count
            if count is None:
                count = image.planes if len(tds) == 1 else 1
            needed = td.ifd + count
            if ifds[name] < needed:
                raise damaged(
                    path if name == path.name else path.parent / name,
                    f"{ifds[name]} of {needed} planes present",
                )


def check_ome_files(path: Path, ome: ome_xml.OmeXml, names: list[str]) -> None:
    """The files ``names`` (besides ``path``, which names them: an OME-TIFF master or a
    companion) must all be there, each with the planes ``ome`` puts in it inside it."""
    found = resolve_parts(path.parent, names)
    if found.missing:
        total = len(found.present) + len(found.missing) + 1
        raise damaged(
            path,
            f"{total - len(found.missing)} of {total} files present; missing "
            + ", ".join(found.missing[:3]),
        )
    counts = {}
    for part in found.present:
        with _open(part) as tif:
            counts[part.name] = len(_pages(tif, part))
    check_ome_planes(path, ome, counts)


def _read_master(path: Path, master: str, seen: frozenset[Path]) -> list[ImageInfo]:
    target = path.parent / master if master else None
    if target is None or not target.is_file():
        raise damaged(path, f"BinaryOnly part; its metadata file {master!r} is missing")
    if target in seen or target == path:
        raise damaged(path, "BinaryOnly parts name each other")
    if target.name.lower().endswith(".companion.ome"):
        from omerofs.formats import companion

        return companion.read(target)
    return read(target, seen | {path})


def _check_imagej(path: Path, tif: Any, pages: list[Any]) -> None:
    meta = tif.imagej_metadata or {}
    expected = int(meta.get("images", 0) or 0)
    if expected <= len(pages):
        return
    first = pages[0]
    offsets = list(first.dataoffsets)
    if not offsets:
        raise damaged(path, f"{len(pages)} of {expected} planes present")
    # ImageJ writes planes beyond the last IFD contiguously (files > 4 GiB)
    end = offsets[0] + expected * first.nbytes
    size = os.path.getsize(path)
    if end > size:
        present = max(len(pages), (size - offsets[0]) // max(1, first.nbytes))
        raise damaged(path, f"{min(present, expected - 1)} of {expected} planes present")


def _check_micromanager(path: Path, tif: Any) -> None:
    meta = tif.micromanager_metadata or {}
    index = meta.get("IndexMap")
    if index is None:
        return
    size = os.path.getsize(path)
    try:
        offsets = [int(row[-1]) for row in index]
    except (TypeError, ValueError, IndexError):
        return
    beyond = [o for o in offsets if o >= size]
    if beyond:
        raise damaged(
            path, f"{len(offsets) - len(beyond)} of {len(offsets)} planes present (index map)"
        )


def _series(tif: Any) -> list[Series]:
    all_series = list(tif.series)
    full = [s for s in all_series if not s.keyframe.is_reduced]
    chosen = full or all_series  # LSM thumbnails and reduced IFDs are no Images (Bio-Formats)
    physical = _physical(tif)
    result: list[Series] = []
    for s in chosen:
        result.extend(_split_positions(s, physical))
    return result


def _split_positions(s: Any, physical: tuple[float | None, ...]) -> list[Series]:
    """One Series per position ('R' axis: Micro-Manager, NDTiff), as Bio-Formats gives."""
    sizes = {"X": 1, "Y": 1, "Z": 1, "C": 1, "T": 1}
    positions = 1
    for axis, length in zip(s.axes, s.shape, strict=True):
        if axis in ("X", "Y", "Z", "T"):
            sizes[axis] *= length
        elif axis in ("C", "S"):
            sizes["C"] *= length
        elif axis == "R":
            positions *= length
        else:  # unnamed stacking axes (I, Q, ...) count as time points, as Bio-Formats does
            sizes["T"] *= length
    ptype = pixel_type(s.dtype)
    name = s.name or None
    if positions == 1:
        return [Series(sizes, ptype, name, physical)]  # type: ignore[arg-type]
    return [
        Series(dict(sizes), ptype, f"Pos{p}", physical)  # type: ignore[arg-type]
        for p in range(positions)
    ]


def _physical(tif: Any) -> tuple[float | None, float | None, float | None]:
    try:
        if tif.is_lsm:
            lsm = tif.lsm_metadata or {}
            x, y, z = (micrometres(lsm.get(f"VoxelSize{a}"), "m") for a in "XYZ")
            return (x, y, z if z is not None and z > 1e-6 else None)  # 2-D files store ~0
        page = tif.pages.first
        ij = tif.imagej_metadata or {}
        unit = ij.get("unit") or None
        if unit is None or "XResolution" not in page.tags:
            return (None, None, None)
        unit = str(unit).replace("\\u00B5", "µ")
        xs = page.tags["XResolution"].value
        ys = page.tags["YResolution"].value
        x = micrometres(xs[1] / xs[0], unit) if xs[0] else None
        y = micrometres(ys[1] / ys[0], unit) if ys[0] else None
        z = micrometres(ij.get("spacing"), unit) if ij.get("spacing") else None
        return (x, y, z)
    except Exception:  # physical sizes are optional; never fail an import for them
        return (None, None, None)


def is_ome_tiff(path: Path) -> bool:
    return path.name.lower().endswith(OME_SUFFIXES)
