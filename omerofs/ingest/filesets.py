"""Which source files form one fileset, which is the main file, and where each goes.

A fileset is one file, or one directory with everything below it. The main file (the
one OMERO's reader is pointed at) goes first: the shallowest image-like file, OME-TIFF
preferred, then by name.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omerofs.errors import NotFound, UsageError
from omerofs.ingest.metadata import looks_like_image
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
    source = Path(os.path.abspath(source))
    try:
        st = source.stat()
    except FileNotFoundError:
        raise NotFound(f"{source}: no such file or directory") from None
    if stat.S_ISREG(st.st_mode):
        return SourceFileset(source, (_source_file(source, sanitize_name(source.name)),))
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{source}: not a regular file or directory")
    found = sorted(p for p in _walk_files(source) if include is None or include(p))
    if not found:
        raise UsageError(f"{source}: directory holds no files to import")
    found.sort(key=lambda p: _main_file_rank(source, p))
    top = sanitize_name(source.name)
    files = tuple(
        _source_file(p, "/".join([top, *(sanitize_name(c) for c in p.relative_to(source).parts)]))
        for p in found
    )
    return SourceFileset(source, files)


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


def _main_file_rank(root: Path, path: Path) -> tuple[int, int, int, str]:
    rel = path.relative_to(root)
    is_image = looks_like_image(path)
    is_ome = ".ome." in path.name.lower()
    return (0 if is_image else 1, len(rel.parts), 0 if is_ome else 1, str(rel))
