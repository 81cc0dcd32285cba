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
