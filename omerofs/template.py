"""OMERO's ManagedRepository path template (``omero.fs.repo.path``) and name rules.

``expand`` is pure: given who imports, into which group and when, it returns the
template prefix of the new fileset directory, e.g. ``alice_2/2026-11/25/10-33-12.123/``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime

from omerofs.errors import UsageError

DEFAULT_TEMPLATE = "%user%_%userId%//%year%-%month%/%day%/%time%"
SUPPORTED_TOKENS = frozenset(
    [
        "user",
        "userId",
        "group",
        "groupId",
        "perms",
        "institution",
        "year",
        "month",
        "monthname",
        "day",
        "time",
        "session",
        "sessionId",
        "thread",
        "increment",
    ]
)
UNSUPPORTED_TOKENS = frozenset({"hash", "subdirs"})
_TOKEN = re.compile(r"%([A-Za-z]+)%")
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')


@dataclass(frozen=True)
class TemplateContext:
    user: str
    user_id: int
    group: str
    group_id: int
    perms: str
    when: datetime
    session: str = ""
    session_id: int = 0
    institution: str = ""


def validate_template(template: str) -> None:
    """Reject templates that cannot give every fileset its own safe directory."""
    if not template.strip("/"):
        raise UsageError("template is empty")
    if template.startswith("/"):
        raise UsageError(f"template {template!r} must be relative (no leading /)")
    if template.count("//") > 1:
        raise UsageError(f"template {template!r} may contain '//' at most once")
    for token in _TOKEN.findall(template):
        if token in UNSUPPORTED_TOKENS:
            raise UsageError(f"template token %{token}% is not supported by omerofs")
        if token not in SUPPORTED_TOKENS:
            raise UsageError(f"unknown template token %{token}% in {template!r}")
    for part in template.replace("//", "/").split("/"):
        if part in ("", ".", ".."):
            raise UsageError(f"template {template!r} has an empty, '.' or '..' component")


def expand(template: str, ctx: TemplateContext) -> str:
    """Expand ``template`` into a fileset's template prefix (ending in ``/``).

    ``%increment%`` is left in place: only the repository knows which numbers are free
    (see ``resolve_increment``).
    """
    when = ctx.when
    values = {
        "user": ctx.user,
        "userId": str(ctx.user_id),
        "group": ctx.group,
        "groupId": str(ctx.group_id),
        "perms": ctx.perms,
        "institution": ctx.institution or "unknown",
        "year": f"{when.year:04d}",
        "month": f"{when.month:02d}",
        "monthname": when.strftime("%B"),
        "day": f"{when.day:02d}",
        "time": f"{when:%H-%M-%S}.{when.microsecond // 1000:03d}",
        "session": ctx.session or "session",
        "sessionId": str(ctx.session_id),
        "thread": threading.current_thread().name,
    }

    def substitute(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "increment":
            return match.group(0)
        return values[token]

    parts = [sanitize_name(_TOKEN.sub(substitute, p)) for p in template.split("/") if p]
    return "/".join(parts) + "/"


def resolve_increment(component: str, taken: set[str]) -> str:
    """Replace ``%increment%`` by the smallest positive number giving an unused name."""
    n = 1
    while True:
        name = component.replace("%increment%", str(n))
        if name not in taken:
            return name
        n += 1


def sanitize_name(name: str) -> str:
    """Apply OMERO's default path rules ("Windows required, UNIX required") to one name."""
    cleaned = _BAD_CHARS.sub("_", name)
    if cleaned.rstrip(" .") != cleaned:
        cleaned = cleaned.rstrip(" .") + "_"
    stem = cleaned.split(".", 1)[0].upper()
    if stem in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    if cleaned in ("", ".", ".."):
        cleaned = cleaned.replace(".", "_") or "_"
    return cleaned


def expand_root_depth(template: str) -> int:
    """How many leading directories of a prefix belong to root (those before ``//``)."""
    if "//" not in template:
        return 0
    return len([p for p in template.split("//", 1)[0].split("/") if p])
