"""OMERO's download policy (``omero.policy.binary_access``), one implementation for every
backend and for the view.

OMERO may forbid reading original files on top of the permissions: server-wide (the
server's config) and per group (the group's config, a ``NamedValue`` of the same name).
The rule is ``ome.security.policy.BinaryAccessPolicy.isRestricted`` (ome/omero-server),
for an OriginalFile of a fileset that has images:

1. ``-write`` (or ``+write`` missing): nobody may download, not even owners and admins;
2. ``-read`` (or ``+read`` missing): only those who may edit the data (its owner,
   admins, the group's owners, every member of a read-write group);
3. files named ``*.txt`` are always readable from here on;
4. ``-image`` (or ``+image`` missing): no original of a fileset with images;
5. ``-plate`` (or ``+plate`` missing): no original of a fileset whose images are in a
   plate (they have WellSamples).

A token is looked up server-wide and in the group: a ``-`` in either wins, then a ``+``
in either allows, and a token named nowhere restricts ("configuration is pessimistic").
OMERO's default is ``+read,+write,+image``: plates' originals are not downloadable
unless the server says ``+plate``.

``BinaryAccessPolicy`` is the whole of it (server-wide and per group) as a catalog reads
it: an OMERO server's IConfig and group config, or the embedded backend's ``[view]
binary_access`` and ``binary_access_groups`` in omerofs.toml. The view applies it to
each user's tree (docs/view.md: listed, not readable).
"""

from __future__ import annotations

from dataclasses import dataclass

from omerofs.identity import PermissionLevel, Viewer

KEY = "omero.policy.binary_access"
OMERO_DEFAULT = "+read,+write,+image"  # the server's default (omero-server properties)


def parse(text: str | None) -> frozenset[str]:
    """``"+read, -plate"`` -> ``{"+read", "-plate"}`` (blanks and empty items dropped)."""
    return frozenset(t.strip() for t in (text or "").split(",") if t.strip())


@dataclass(frozen=True)
class BinaryAccess:
    """The policy that applies to one group's data: the server's and the group's."""

    server: frozenset[str] = parse(OMERO_DEFAULT)
    group: frozenset[str] = frozenset()

    def denies(self, what: str) -> bool:
        """BinaryAccessPolicy.notAorB: is ``what`` (read, write, image, plate) off?"""
        if f"-{what}" in self.server or f"-{what}" in self.group:
            return True
        return not (f"+{what}" in self.server or f"+{what}" in self.group)


def can_edit(viewer: Viewer, owner_id: int, group_id: int, level: PermissionLevel) -> bool:
    """OMERO's ``allowUpdate`` for a fileset, as far as the view knows it."""
    if viewer.admin or owner_id == viewer.experimenter_id or group_id in viewer.owner_of:
        return True
    return group_id in viewer.member_of and level is PermissionLevel.READ_WRITE


def download_allowed(access: BinaryAccess, *, name: str, can_edit: bool, in_plate: bool) -> bool:
    """May an original file named ``name`` of a fileset with images be read?"""
    if access.denies("write"):
        return False
    if access.denies("read") and not can_edit:
        return False
    if name.endswith(".txt"):
        return True
    if access.denies("image"):
        return False
    return not (in_plate and access.denies("plate"))


@dataclass(frozen=True)
class BinaryAccessPolicy:
    """The server-wide tokens and each group's own (what a catalog reads, and what the
    view holds with its snapshot): ``for_group`` gives the ``BinaryAccess`` of one group."""

    server: frozenset[str] = parse(OMERO_DEFAULT)
    groups: tuple[tuple[int, frozenset[str]], ...] = ()  # (group id, tokens), sorted

    @classmethod
    def of(cls, server: frozenset[str], groups: dict[int, frozenset[str]]) -> BinaryAccessPolicy:
        return cls(server, tuple(sorted((g, t) for g, t in groups.items() if t)))

    def for_group(self, group_id: int) -> BinaryAccess:
        return BinaryAccess(self.server, dict(self.groups).get(group_id, frozenset()))


def check_tokens(text: str) -> None:
    """``+read,-plate``: each item a ``+`` or ``-`` and one of OMERO's tokens."""
    from omerofs.errors import UsageError

    for token in parse(text):
        if token[:1] not in "+-" or len(token) < 2 or token[1:] not in TOKENS:
            raise UsageError(
                f"{token!r} is not a policy token (+ or - and one of {', '.join(TOKENS)})"
            )


TOKENS = ("read", "write", "image", "plate")


def parse_groups(text: str | None) -> dict[str, frozenset[str]]:
    """``"screening: -read, +plate; public: +plate"`` -> tokens by group name. The last
    ``:`` of an item ends the name (tokens never hold one)."""
    from omerofs.errors import UsageError

    found: dict[str, frozenset[str]] = {}
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        name, colon, tokens = item.rpartition(":")
        if not colon or not name.strip():
            raise UsageError(f"{item.strip()!r} is not GROUP: TOKENS")
        check_tokens(tokens)
        found[name.strip()] = found.get(name.strip(), frozenset()) | parse(tokens)
    return found
