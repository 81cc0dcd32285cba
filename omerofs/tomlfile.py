"""Reading a TOML file with every failure as one line: unreadable, not UTF-8, malformed.

One place for it because omerofs reads several (omerofs.toml, the uid/gid map, OMERO and
SMTP credentials) and each must fail the same clear way, never with a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from omerofs.errors import UsageError


def parse_toml(raw: bytes, path: Path) -> dict[str, Any]:
    """``raw`` (the bytes of ``path``) parsed; non-UTF-8 or malformed is one line naming it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{path}: not UTF-8 text (line {line}); TOML files must be UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {' '.join(str(exc).split())}") from None


def read_toml(path: Path, what: str = "") -> dict[str, Any]:
    """The parsed file; ``what`` names it in the error ("cannot read id map /x: ...")."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        named = f"{what} {path}" if what else str(path)
        raise UsageError(f"cannot read {named}: {exc.strerror}") from None
    return parse_toml(raw, path)
