"""OMERO identities mapped to POSIX ids, and OMERO's read-visibility rules.

This is the one implementation of "who may see which fileset"; every backend feeds it
records and every view asks it. The rules follow OMERO's group permission levels:
own data is always visible; in a private group only group owners (and admins) see other
members' data; in read-only, read-annotate and read-write groups every member does.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from omerofs.errors import UsageError


class PermissionLevel(enum.Enum):
    """A group's permission level, with OMERO's name and permissions string."""

    PRIVATE = ("private", "rw----")
    READ_ONLY = ("read-only", "rwr---")
    READ_ANNOTATE = ("read-annotate", "rwra--")
    READ_WRITE = ("read-write", "rwrw--")

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def perms(self) -> str:
        return self.value[1]

    @property
    def members_see_others(self) -> bool:
        return self is not PermissionLevel.PRIVATE

    @classmethod
    def parse(cls, text: str) -> PermissionLevel:
        """Accept OMERO's level names (any case, ``_`` or ``-``) or a perms string."""
        key = text.strip().lower().replace("_", "-")
        for level in cls:
            if key in (level.label, level.perms, level.label.replace("-", "")):
                return level
        names = ", ".join(level.label for level in cls)
        raise UsageError(f"unknown permission level {text!r} (expected one of: {names})")

    @classmethod
    def from_perms(cls, perms: str) -> PermissionLevel:
        """Decode an OMERO permissions string such as ``rwra--`` (world bits ignored)."""
        if len(perms) < 4:
            raise UsageError(f"malformed permissions string {perms!r}")
        group = perms[2:4]
        if group == "rw":
            return cls.READ_WRITE
        if group == "ra":
            return cls.READ_ANNOTATE
        if group.startswith("r"):
            return cls.READ_ONLY
        return cls.PRIVATE


@dataclass(frozen=True)
class Viewer:
    """What the visibility rules need to know about the person looking."""

    experimenter_id: int
    admin: bool
    member_of: frozenset[int]
    owner_of: frozenset[int]


def can_see(viewer: Viewer, owner_id: int, group_id: int, level: PermissionLevel) -> bool:
    """May ``viewer`` read a fileset owned by ``owner_id`` in group ``group_id``?"""
    if viewer.admin or owner_id == viewer.experimenter_id:
        return True
    if group_id not in viewer.member_of:
        return False
    return group_id in viewer.owner_of or level.members_see_others


SOMEONE_ELSE = -1  # an owner id that is never the viewer


def fully_visible_groups(viewer: Viewer, levels: dict[int, PermissionLevel]) -> set[int]:
    """Groups in which ``viewer`` sees everybody's data (by ``can_see``, not a second
    rule); elsewhere they see only their own. Lets a backend fetch just what a viewer
    may see."""
    return {g for g, level in levels.items() if can_see(viewer, SOMEONE_ELSE, g, level)}


def make_viewer(
    experimenter_id: int, admin: bool, memberships: Iterable[tuple[int, bool]]
) -> Viewer:
    """Build a Viewer from ``(group_id, is_owner)`` pairs."""
    pairs = list(memberships)
    return Viewer(
        experimenter_id=experimenter_id,
        admin=admin,
        member_of=frozenset(g for g, _ in pairs),
        owner_of=frozenset(g for g, owner in pairs if owner),
    )
