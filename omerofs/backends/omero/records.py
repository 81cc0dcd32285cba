"""OMERO query results -> omerofs catalog records.

Pure functions over what omero-py returns (projection rows of rtypes, model objects),
so the translation is tested with real omero-py objects and no server. The records are
the same the embedded backend produces; ``identity`` applies one set of visibility
rules to both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from omero.rtypes import unwrap

from omerofs.catalog.protocol import (
    Container,
    Event,
    Experimenter,
    FilesetEntry,
    Group,
    Membership,
)
from omerofs.identity import IdMap, PermissionLevel

SYSTEM_GROUP = "system"  # OMERO's administrators' group; its members are admins
HIDDEN_GROUPS = frozenset({"user", "guest"})  # every active user / the guest: never data
HIDDEN_USERS = frozenset({"guest"})
FILE_TRANSFER_NS = "openmicroscopy.org/omero/import/fileTransfer"

# what OMERO's Java importer records for each transfer mode (the annotation's text)
TRANSFER_CLASSES = {
    "ln": "ome.formats.importer.transfers.HardlinkFileTransfer",
    "ln_s": "ome.formats.importer.transfers.SymlinkFileTransfer",
    "ln_rm": "ome.formats.importer.transfers.MoveFileTransfer",
    "cp": "ome.formats.importer.transfers.CopyFileTransfer",
    "cp_rm": "ome.formats.importer.transfers.CopyMoveFileTransfer",
    "upload_rm": "ome.formats.importer.transfers.UploadRmFileTransfer",
}
_MODE_OF_CLASS = {cls: mode for mode, cls in TRANSFER_CLASSES.items()}


def rows(result: Iterable[Iterable[Any]]) -> list[list[Any]]:
    """A projection result (lists of rtypes, None for SQL NULL) as plain Python values."""
    return [[unwrap(v) for v in row] for row in result]


def scalar(result: Iterable[Iterable[Any]]) -> int:
    """The one number of an aggregate projection (``max``, ``count``), 0 when there is
    none: ``max`` over an empty table is one NULL row, which arrives as ``[[None]]`` or,
    with its NULL dropped, ``[[]]``."""
    for row in rows(result):
        return int(row[0] or 0) if row else 0
    return 0


def group_policies(result: list[list[Any]], key: str) -> dict[int, frozenset[str]]:
    """Rows ``[group id, config name, config value]`` -> each group's tokens for ``key``
    (several entries of the same name add up, as in ``BinaryAccessPolicy``)."""
    found: dict[int, set[str]] = defaultdict(set)
    for group_id, name, value in result:
        if name == key:
            found[group_id].update(t.strip() for t in str(value or "").split(",") if t.strip())
    return {g: frozenset(tokens) for g, tokens in found.items()}


def newest_linkable(objects: Iterable[Any]) -> int | None:
    """The first (newest, given ``order by id desc``) of ``objects`` the session's user may
    link to, as ``ModelImportTarget`` picks an import target; None if there is none."""
    for obj in objects:
        if obj.getDetails().getPermissions().canLink():
            return int(unwrap(obj.getId()))
    return None


def level_of(permissions: Any) -> PermissionLevel:
    """A group's level from its ``omero.model.PermissionsI`` (or a ``rwra--`` string)."""
    if isinstance(permissions, str):
        return PermissionLevel.from_perms(permissions)
    if permissions.isGroupWrite():
        return PermissionLevel.READ_WRITE
    if permissions.isGroupAnnotate():
        return PermissionLevel.READ_ANNOTATE
    if permissions.isGroupRead():
        return PermissionLevel.READ_ONLY
    return PermissionLevel.PRIVATE


def groups_of(objects: Iterable[Any], idmap: IdMap) -> dict[int, Group]:
    """``ExperimenterGroup`` objects -> groups with a local gid (others are hidden)."""
    found = {}
    for g in objects:
        name = unwrap(g.getName())
        if name in HIDDEN_GROUPS:
            continue
        gid = 0 if name == SYSTEM_GROUP and idmap.gid(name) is None else idmap.gid(name)
        if gid is None:
            continue
        group_id = unwrap(g.getId())
        found[group_id] = Group(group_id, name, level_of(g.getDetails().getPermissions()), gid)
    return found


def memberships_of(result: list[list[Any]], groups: dict[int, Group]) -> list[Membership]:
    """Rows ``[group id, experimenter id, owner]`` of visible groups."""
    return [Membership(g, e, bool(owner)) for g, e, owner in result if g in groups]


def experimenters_of(
    result: list[list[Any]],
    memberships: list[Membership],
    groups: dict[int, Group],
    default_groups: dict[int, int],
    idmap: IdMap,
) -> dict[int, Experimenter]:
    """Rows ``[id, omeName]`` -> experimenters with a local uid. Admins are the members of
    ``system``; the default group is OMERO's, else the first visible non-system group."""
    system = {g.id for g in groups.values() if g.name == SYSTEM_GROUP}
    member_of: dict[int, list[int]] = defaultdict(list)
    for m in memberships:
        member_of[m.experimenter_id].append(m.group_id)
    found = {}
    for exp_id, name in result:
        if name in HIDDEN_USERS:
            continue
        uid = 0 if name == "root" and idmap.uid(name) is None else idmap.uid(name)
        if uid is None:
            continue
        default = default_groups.get(exp_id)
        if default not in groups:
            others = [g for g in member_of[exp_id] if g not in system]
            default = min(others) if others else (min(member_of[exp_id], default=None))
        admin = any(g in system for g in member_of[exp_id])
        found[exp_id] = Experimenter(exp_id, name, uid, admin, default)
    return found


def containers_of(result: list[list[Any]]) -> dict[int, Container]:
    """Rows ``[id, name, owner id, group id]`` of Projects or Datasets."""
    return {row[0]: Container(row[0], row[1] or "", row[2], row[3]) for row in result}


def entries_of(result: list[list[Any]]) -> dict[int, list[FilesetEntry]]:
    """Rows ``[fileset id, index, clientPath, path, name, size, hash, hasher, mimetype]``
    -> each fileset's entries in fileset order (the main file first)."""
    entries: dict[int, list[FilesetEntry]] = defaultdict(list)
    for fs_id, index, client_path, path, name, size, sha, hasher, mimetype in sorted(
        result, key=lambda r: (r[0], r[1])
    ):
        path = path or ""
        entries[fs_id].append(
            FilesetEntry(
                index=index,
                client_path=client_path or "",
                path=path if path.endswith("/") else path + "/",
                name=name,
                size=size or 0,
                hash=sha or "",
                hasher=hasher or "",
                mimetype=mimetype or "application/octet-stream",
            )
        )
    return entries


def transfer_of(text: str | None) -> str:
    """The transfer mode recorded by a fileTransfer annotation (none: uploaded)."""
    if not text:
        return "upload"
    return _MODE_OF_CLASS.get(text, text if text in TRANSFER_CLASSES else "upload")


# the EventLog entity types ``view_events`` and ``OmeroCatalog.changes`` act on (OMERO
# writes the Java class names); everything else (PlaneInfo, Thumbnail, Session, ...) is
# never read
EVENT_TYPES = tuple(
    f"ome.model.{name}"
    for name in (
        "core.Image",
        "fs.Fileset",
        "containers.DatasetImageLink",
        "containers.Project",
        "containers.Dataset",
        "containers.ProjectDatasetLink",
        "screen.Screen",
        "screen.Plate",
        "screen.ScreenPlateLink",
        "meta.Experimenter",
        "meta.ExperimenterGroup",
        "meta.GroupExperimenterMap",
    )
)


class EventWindow:
    """EventLog ids come from a sequence when a row is written, not when its transaction
    commits, so a long transaction (a big import's step 0) can commit after events with
    higher ids were read. Each poll therefore re-reads the last ``overlap`` ids below the
    position it reached and delivers only what it has not delivered before."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self._delivered: set[int] = set()
        self._primed = False

    def lower_bound(self, since: int) -> int:
        """Read events with ids above this."""
        return max(0, since - self.overlap)

    def fresh(self, since: int, events: list[Event]) -> list[Event]:
        """Of the events read above ``lower_bound(since)``, those not delivered yet. On the
        first poll the ones up to ``since`` count as delivered (the caller's snapshot was
        read after them)."""
        if not self._primed:
            self._primed = True
            self._delivered.update(e.id for e in events if e.id <= since)
        return [e for e in events if e.id not in self._delivered]

    def delivered(self, position: int, events: list[Event]) -> None:
        """``events`` were handed to the caller, who is now at ``position``: never again.
        Ids that fall out of the next window are forgotten."""
        self._delivered.update(e.id for e in events)
        floor = self.lower_bound(position)
        self._delivered = {i for i in self._delivered if i > floor}


def event_of(row: list[Any]) -> Event:
    """Row ``[id, entityType, entityId, action]``; ``ome.model.fs.Fileset`` -> ``Fileset``."""
    event_id, entity_type, entity_id, action = row
    return Event(event_id, str(entity_type).rsplit(".", 1)[-1], entity_id, str(action))


@dataclass
class EventRefs:
    """What the server says the entities of a batch of events refer to (by entity id)."""

    fileset_of_image: dict[int, int | None] = field(default_factory=dict)
    fileset_of_link: dict[int, int | None] = field(default_factory=dict)  # DatasetImageLink
    member_of_map: dict[int, int] = field(default_factory=dict)  # GroupExperimenterMap
    dataset_of_link: dict[int, int] = field(default_factory=dict)  # ProjectDatasetLink
    plate_of_link: dict[int, int] = field(default_factory=dict)  # ScreenPlateLink


_VIEWED = {
    "Experimenter",
    "ExperimenterGroup",
    "GroupExperimenterMap",
    "Project",
    "Dataset",
    "Screen",
    "Plate",
}


def view_events(raw: list[Event], refs: EventRefs) -> list[Event]:
    """OMERO EventLog entries -> the events the view understands (``fs.view``).

    OMERO writes the Fileset row when an upload *starts*; a fileset is new for the view
    when its images appear (the import finished). Linking images of a shown fileset to a
    dataset moves it (an update: trees are rebuilt); links made by the import itself are
    part of its arrival. A new dataset linked to its project arrives with the project
    data, and a new plate linked to its screen with the screen data. Membership events
    name the member, as the view expects. Everything else
    (annotations, pixels, thumbnails, ...) does not change what the view shows."""
    new_filesets = {f for f in refs.fileset_of_image.values() if f is not None}
    new_datasets = {e.entity_id for e in raw if (e.entity, e.action) == ("Dataset", "INSERT")}
    new_plates = {e.entity_id for e in raw if (e.entity, e.action) == ("Plate", "INSERT")}
    events: list[Event] = []
    seen: set[tuple[str, int, str]] = set()
    for e in raw:
        out: Event | None = None
        if e.entity == "Image":
            fs_id = refs.fileset_of_image.get(e.entity_id)
            if e.action == "INSERT" and fs_id is not None:
                out = Event(e.id, "Fileset", fs_id, "INSERT")
        elif e.entity == "DatasetImageLink":
            fs_id = refs.fileset_of_link.get(e.entity_id)
            if fs_id is None:  # gone again, or an image without fileset: rebuild to be sure
                out = Event(e.id, "Fileset", -1, "UPDATE")
            elif fs_id not in new_filesets:
                out = Event(e.id, "Fileset", fs_id, "UPDATE")
        elif e.entity == "Fileset":
            if e.action != "INSERT":
                out = Event(e.id, "Fileset", e.entity_id, e.action)
        elif e.entity == "GroupExperimenterMap":
            member = refs.member_of_map.get(e.entity_id)
            if e.action == "DELETE" or member is None:
                out = Event(e.id, e.entity, -1, "DELETE")
            else:
                out = Event(e.id, e.entity, member, e.action)
        elif e.entity == "ProjectDatasetLink":
            if e.action != "INSERT" or refs.dataset_of_link.get(e.entity_id) not in new_datasets:
                out = Event(e.id, e.entity, e.entity_id, e.action)
        elif e.entity == "ScreenPlateLink":  # a plate's import links it to its screen
            if e.action != "INSERT" or refs.plate_of_link.get(e.entity_id) not in new_plates:
                out = Event(e.id, e.entity, e.entity_id, e.action)
        elif e.entity in _VIEWED:
            out = Event(e.id, e.entity, e.entity_id, e.action)
        if out is not None and (out.entity, out.entity_id, out.action) not in seen:
            seen.add((out.entity, out.entity_id, out.action))
            events.append(out)
    return events
