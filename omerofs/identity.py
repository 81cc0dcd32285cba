"""OMERO identities mapped to POSIX ids, and OMERO's read-visibility rules.

This is the one implementation of "who may see which fileset"; every backend feeds it
records and every view asks it. The rules follow OMERO's group permission levels:
own data is always visible; in a private group only group owners (and admins) see other
members' data; in read-only, read-annotate and read-write groups every member does.
"""

from __future__ import annotations

import enum
import grp
import logging
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from omerofs.errors import UsageError
from omerofs.tomlfile import read_toml

log = logging.getLogger(__name__)

# uid_t and gid_t are 32 bits; 2**32-1 is (uid_t)-1, "leave unchanged" to chown(2) and
# "no such id" to the kernel, so it can never own a file.
MAX_POSIX_ID = 2**32 - 2


def posix_id_problem(kind: str, value: object) -> str | None:
    """Why ``value`` cannot be a uid/gid, or None when it can (0 ... 2**32-2)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{kind} {value!r} is not a number"
    if not 0 <= value <= MAX_POSIX_ID:
        return f"{kind} {value} is outside 0 ... {MAX_POSIX_ID}"
    return None


def check_posix_id(kind: str, value: object) -> int:
    """``value`` as a uid/gid, or UsageError naming what is wrong with it."""
    problem = posix_id_problem(kind, value)
    if problem:
        raise UsageError(problem)
    assert isinstance(value, int)
    return value


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


class IdMap:
    """OMERO user and group names -> local uids and gids, for a backend whose identities
    live elsewhere (an OMERO server). By default a name maps to the local account or group
    of the same name; a TOML file overrides that, like sshfs's idmap files::

        [users]            # OMERO name = local name or uid
        alice = "asmith"
        bob = 3002
        [groups]
        lab = 71001

    Names that map to nothing are hidden from the view and reported once each."""

    def __init__(self, users: dict[str, int | str], groups: dict[str, int | str]) -> None:
        self._users = dict(users)
        self._groups = dict(groups)
        self.unmapped: set[tuple[str, str]] = set()

    @classmethod
    def load(cls, path: Path | None) -> IdMap:
        if path is None:
            return cls({}, {})
        data = read_toml(path, "id map")
        users, groups = data.get("users", {}), data.get("groups", {})
        for section, table in (("users", users), ("groups", groups)):
            if not isinstance(table, dict):
                raise UsageError(f"{path}: [{section}] must be a table")
            kind = "uid" if section == "users" else "gid"
            for key, value in table.items():
                if isinstance(value, str) and value:
                    continue
                if problem := posix_id_problem(kind, value):
                    raise UsageError(
                        f"{path}: [{section}] {key}: expected a local name or id ({problem})"
                    )
        return cls(users, groups)

    def uid(self, name: str) -> int | None:
        return self._resolve("user", name, self._users.get(name, name), _uid_of)

    def gid(self, name: str) -> int | None:
        return self._resolve("group", name, self._groups.get(name, name), _gid_of)

    def _resolve(
        self, kind: str, name: str, local: int | str, lookup: Callable[[str], int]
    ) -> int | None:
        if isinstance(local, int):
            return local
        try:
            return lookup(local)
        except KeyError:
            if (kind, name) not in self.unmapped:
                self.unmapped.add((kind, name))
                log.warning(
                    "OMERO %s %r has no local %s account and no idmap entry: hidden",
                    kind,
                    name,
                    "user" if kind == "user" else "group",
                )
            return None


def _uid_of(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid_of(name: str) -> int:
    return grp.getgrnam(name).gr_gid
