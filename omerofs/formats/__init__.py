"""Image formats: which reader knows a file, its Images (one per series, as OMERO's
Bio-Formats would give them), which files form one fileset, and whether a file is
complete. Readers read headers and metadata only, never pixel arrays; each imports its
library lazily so that a CLI call that reads no image stays fast."""

from __future__ import annotations

from pathlib import Path

from omerofs.catalog.protocol import ImageInfo, PlateInfo
from omerofs.errors import DamagedFile, OmerofsError, UnknownFormat
from omerofs.formats import (
    companion,
    czi,
    dv,
    ims,
    lif,
    metamorph,
    micromanager,
    nd2,
    olympus,
    tiff,
    zarr,
)
from omerofs.formats.base import Format, Parts, one_line, suffix_claim
from omerofs.formats.grouping import FileGroup, group_files

__all__ = [
    "FORMATS",
    "FileGroup",
    "completeness",
    "format_for",
    "group_files",
    "is_plate",
    "looks_like_image",
    "mimetype",
    "read_images",
]

# first claim wins: the specific names before the generic TIFF suffixes
FORMATS: tuple[Format, ...] = (
    Format("OME-TIFF companion", companion.claims, companion.read, companion.parts),
    Format("Micro-Manager", micromanager.claims, micromanager.read, micromanager.parts),
    Format("MetaMorph ND", metamorph.claims, metamorph.read, metamorph.parts),
    Format("OME-Zarr", zarr.claims, zarr.read),
    Format("Zeiss CZI", suffix_claim(*czi.SUFFIXES), czi.read),
    Format("Nikon ND2", suffix_claim(*nd2.SUFFIXES), nd2.read),
    Format("Leica LIF", suffix_claim(*lif.SUFFIXES), lif.read),
    Format("Olympus OIB/OIF", suffix_claim(*olympus.SUFFIXES), olympus.read, olympus.parts),
    Format("DeltaVision", suffix_claim(*dv.SUFFIXES), dv.read, dv.parts),
    Format("Imaris IMS", suffix_claim(*ims.SUFFIXES), ims.read),
    Format("TIFF", tiff.claims, tiff.read, tiff.parts, mimetype="image/tiff"),
)


def format_for(path: Path) -> Format | None:
    """The reader that claims ``path`` by its name (cheap: nothing is opened)."""
    path = Path(path)
    return next((f for f in FORMATS if f.claims(path)), None)


def looks_like_image(path: Path) -> bool:
    """Whether some reader claims the file by its name (the main-file candidates)."""
    return format_for(Path(path)) is not None


def mimetype(path: Path) -> str:
    fmt = format_for(Path(path))
    return fmt.mimetype if fmt is not None else "application/octet-stream"


def read_images(path: Path) -> list[ImageInfo]:
    """One ImageInfo per Image of the fileset whose main file is ``path``.

    Raises UnknownFormat when no reader knows the file, DamagedFile when one does but
    the file is truncated or inconsistent with its own metadata."""
    path = Path(path)
    if path.is_dir():
        root = zarr.root_of(path)
        main = zarr.main_file(root) if root == path else None
        if main is None:
            raise UnknownFormat(f"{path.name}: a directory, not an image file")
        path = main
    fmt = format_for(path)
    if fmt is None:
        raise UnknownFormat(f"{path.name}: unknown or unreadable image format (no reader)")
    try:
        return fmt.read(path)
    except FileNotFoundError:
        raise DamagedFile(f"{path.name}: a file of it vanished while it was read") from None
    except OSError as exc:
        raise DamagedFile(f"{path.name}: unreadable ({exc.strerror or exc})") from None
    except OmerofsError:
        raise
    except Exception as exc:  # a reader library's surprise: still one line, never a traceback
        raise DamagedFile(f"{path.name}: unreadable ({one_line(exc)})") from None


def is_plate(path: Path) -> PlateInfo | None:
    """The plate (name, rows, columns, fields, and where each Image lies) when the
    fileset whose main file is ``path`` is one, as OMERO would import it into a Plate;
    None otherwise. Known: OME-Zarr HCS plates. MetaXpress/ImageXpress HTD sets and
    multi-well CZI are not read yet (docs/formats.md): their Images import as a
    plain fileset."""
    path = Path(path)
    root = zarr.root_of(path)
    if root is None:
        return None
    try:
        return zarr.plate(root)
    except OmerofsError:
        raise
    except Exception as exc:
        raise DamagedFile(f"{root.name}: unreadable ({one_line(exc)})") from None


def completeness(path: Path) -> str | None:
    """None when ``path`` is complete as its own metadata describes it (or no reader
    claims it); else a one-line reason ("3 of 5 files present", "plane 3 lies beyond
    the end of the file ..."). For a file still being written or waiting for parts."""
    path = Path(path)
    fmt = format_for(path)
    if fmt is None:
        return None
    try:
        fmt.read(path)
    except (DamagedFile, UnknownFormat) as exc:
        return getattr(exc, "reason", None) or str(exc)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except OmerofsError as exc:
        return str(exc)
    except Exception as exc:
        return f"unreadable ({one_line(exc)})"
    if fmt.parts is not None:
        found: Parts = fmt.parts(path)
        if found.missing:
            total = len(found.present) + len(found.missing) + 1
            return f"{total - len(found.missing)} of {total} files present"
    return None
