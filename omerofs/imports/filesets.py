"""Which source files form one fileset, which is the main file, and where each goes.

``plan_filesets`` groups what a source holds the way Bio-Formats groups "used files"
(omerofs.formats.group_files): one directory may hold several filesets, and a main file
given alone brings the parts it names. ``plan_fileset`` keeps a whole directory as one
fileset (the ingest mount's depth-4 directories). The main file (the one OMERO's reader
is pointed at) goes first.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omerofs.errors import NotFound, UsageError
from omerofs.formats import FileGroup, group_files, looks_like_image
from omerofs.template import sanitize_name


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute path of the source
    rel_name: str  # where it goes inside the fileset directory, sanitised
    client_path: str  # OMERO's clientPath: absolute source path without leading '/'


@dataclass(frozen=True)
class SourceFileset:
    root: Path
    files: tuple[SourceFile, ...]  # main file first

    @property
    def main(self) -> SourceFile:
        return self.files[0]


def plan_fileset(source: Path, include: Callable[[Path], bool] | None = None) -> SourceFileset:
    """Group ``source`` (a file or a directory) into one fileset, main file first.

    ``include`` filters the files of a directory (the ingest mount leaves out temporary
    names and its own error reports)."""
    source, is_file = _file_or_directory(source)
    if is_file:
        return SourceFileset(source, (_source_file(source, sanitize_name(source.name)),))
    found = sorted(p for p in _walk_files(source) if include is None or include(p))
    if not found:
        raise UsageError(f"{source}: directory holds no files to import")
    mains = {g.main for g in group_files(found) if len(g.files) > 1}
    found.sort(key=lambda p: _main_file_rank(source, p, mains))
    top = sanitize_name(source.name)
    files = tuple(
        _source_file(p, "/".join([top, *(sanitize_name(c) for c in p.relative_to(source).parts)]))
        for p in found
    )
    return SourceFileset(source, files)


def _file_or_directory(source: Path) -> tuple[Path, bool]:
    """``source`` made absolute, and whether it is a regular file (else a directory);
    anything else (missing, a FIFO, a device) is refused before planning starts."""
    source = Path(os.path.abspath(source))
    try:
        st = source.stat()
    except FileNotFoundError:
        raise NotFound(f"{source}: no such file or directory") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"{source}: not a regular file or directory")
    return source, stat.S_ISREG(st.st_mode)


def _source_file(path: Path, rel_name: str) -> SourceFile:
    return SourceFile(path, rel_name, str(path).lstrip("/"))


def _walk_files(root: Path) -> list[Path]:
    result: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file():
                result.append(path)
    return result


def plan_filesets(
    source: Path, include: Callable[[Path], bool] | None = None
) -> list[SourceFileset]:
    """Every fileset ``source`` holds, each main file first, sorted by main file.

    A directory is partitioned as Bio-Formats would (a multi-file OME-TIFF and a CZI
    beside it are two filesets); a file alone brings the parts it names (an OME-TIFF
    master its other files, an ``.oif`` its ``.oif.files/``)."""
    source, is_file = _file_or_directory(source)
    if is_file:
        groups = group_files(_with_parts(source))
        group = next((g for g in groups if source in g.files), None)
        return [_plan_group(group)] if group is not None else [plan_fileset(source)]
    found = [p for p in _walk_files(source) if include is None or include(p)]
    if not found:
        raise UsageError(f"{source}: directory holds no files to import")
    return [_plan_group(g) for g in group_files(found)]


def _with_parts(main: Path) -> list[Path]:
    from omerofs.formats import format_for
    from omerofs.formats.tiff import master_of

    fmt = format_for(main)
    if fmt is None or fmt.parts is None:
        return [main]
    found = [main]
    master = master_of(main) if fmt.name == "TIFF" else None
    if master is not None and (main.parent / master).is_file():  # a BinaryOnly part
        found.append(main.parent / master)
        main = main.parent / master
        fmt = format_for(main)
        if fmt is None or fmt.parts is None:
            return found
    return [*found, *fmt.parts(main).present]


def _plan_group(group: FileGroup) -> SourceFileset:
    """Names inside the fileset directory: relative to the files' common directory; a
    directory that is itself the dataset (``x.zarr``, NDTiff, Micro-Manager) keeps its name."""
    if len(group.files) == 1:
        f = group.main
        return SourceFileset(f, (_source_file(f, sanitize_name(f.name)),))
    base = Path(os.path.commonpath([str(f.parent) for f in group.files]))
    root = base
    if _is_dataset_directory(base):
        base = base.parent
    files = tuple(
        _source_file(f, "/".join(sanitize_name(c) for c in f.relative_to(base).parts))
        for f in group.files
    )
    return SourceFileset(root, files)


def _is_dataset_directory(directory: Path) -> bool:
    return (
        directory.name.lower().endswith(".zarr")
        or (directory / "NDTiff.index").is_file()
        or (directory / "metadata.txt").is_file()
    )


def _main_file_rank(root: Path, path: Path, mains: set[Path]) -> tuple[int, int, int, int, str]:
    rel = path.relative_to(root)
    is_image = looks_like_image(path)
    is_ome = ".ome." in path.name.lower()
    return (
        0 if path in mains else 1,  # a main file naming parts is what Bio-Formats opens
        0 if is_image else 1,
        len(rel.parts),
        0 if is_ome else 1,
        str(rel),
    )
