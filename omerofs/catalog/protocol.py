"""Records and the protocol every catalog backend implements.

The view and the import engine only talk to this protocol, so the embedded SQLite
backend (``local``) and the OMERO-server backend are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol

from omerofs.identity import PermissionLevel
from omerofs.policy import BinaryAccess, BinaryAccessPolicy


@dataclass(frozen=True)
class Experimenter:
    id: int
    name: str
    uid: int
    admin: bool
    default_group_id: int | None
    email: str | None = None  # where notifications go (OMERO: Experimenter.email)


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    level: PermissionLevel
    gid: int


@dataclass(frozen=True)
class Membership:
    group_id: int
    experimenter_id: int
    owner: bool


@dataclass(frozen=True)
class Container:
    """A Project or a Dataset."""

    id: int
    name: str
    owner_id: int
    group_id: int


@dataclass(frozen=True)
class WellSample:
    """Where one Image of a plate lies: its well (row, column, from 0) and field."""

    series: int
    row: int
    column: int
    field: int = 0


@dataclass(frozen=True)
class PlateInfo:
    """A plate as its file describes it (formats.is_plate): OMERO makes a Plate of it,
    with one Well per position and one WellSample (an Image) per field."""

    name: str
    rows: int
    columns: int
    fields: int
    wells: tuple[WellSample, ...] = ()


@dataclass(frozen=True, slots=True)  # slots: a view may hold millions
class FilesetEntry:
    """One OriginalFile of a fileset; on disk at ``ManagedRepository/path/name``."""

    index: int
    client_path: str
    path: str
    name: str
    size: int
    hash: str
    hasher: str
    mimetype: str

    @property
    def repo_path(self) -> str:
        return self.path + self.name


@dataclass(frozen=True, slots=True)
class Fileset:
    id: int
    owner_id: int
    group_id: int
    template_prefix: str
    transfer: str
    created: float
    entries: tuple[FilesetEntry, ...]
    dataset_ids: tuple[int, ...] = ()
    image_count: int = 0
    plate_id: int | None = None  # its images are the fields of this plate's wells


@dataclass(frozen=True)
class Event:
    """One change, like a row of OMERO's EventLog (entity type, id, action)."""

    id: int
    entity: str
    entity_id: int
    action: str


@dataclass
class Snapshot:
    """Everything the view needs, read consistently at one event id."""

    event_id: int
    max_fileset_id: int = 0  # the newest fileset this snapshot knows of
    experimenters: dict[int, Experimenter] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    memberships: list[Membership] = field(default_factory=list)
    projects: dict[int, Container] = field(default_factory=dict)
    datasets: dict[int, Container] = field(default_factory=dict)
    project_dataset: list[tuple[int, int]] = field(default_factory=list)
    filesets: dict[int, Fileset] = field(default_factory=dict)
    screens: dict[int, Container] = field(default_factory=dict)
    plates: dict[int, Container] = field(default_factory=dict)
    screen_plate: list[tuple[int, int]] = field(default_factory=list)
    # omero.policy.binary_access as it applies to each group (read with the people)
    binary_access: BinaryAccessPolicy = field(default_factory=BinaryAccessPolicy)


@dataclass
class Changes:
    """What happened since an event id: the events, the current people, groups and
    containers, and (in ``snapshot.filesets``) only the filesets those events created."""

    events: list[Event]
    snapshot: Snapshot


@dataclass(frozen=True)
class PlacedFile:
    """A file the importer placed and verified, ready to be recorded."""

    client_path: str
    path: str
    name: str
    size: int
    sha1: str
    mimetype: str


@dataclass(frozen=True)
class ImageInfo:
    series: int
    name: str
    size_x: int
    size_y: int
    size_z: int
    size_c: int
    size_t: int
    pixel_type: str
    # physical pixel sizes in micrometres, where the file gives them
    physical_x: float | None = None
    physical_y: float | None = None
    physical_z: float | None = None


@dataclass(frozen=True)
class ImportRecord:
    """Everything one verified import writes to the catalog in one transaction."""

    owner_id: int
    group_id: int
    template_prefix: str
    transfer: str
    created: float
    files: tuple[PlacedFile, ...]
    images: tuple[ImageInfo, ...]
    project_name: str | None = None
    dataset_name: str | None = None
    screen_name: str | None = None  # only with ``plate``
    plate: PlateInfo | None = None  # the fileset is a plate: its images are its fields


class Catalog(Protocol):
    """What omerofs needs from a catalog, whichever backend holds it."""

    # the view
    def snapshot_people(self) -> Snapshot: ...

    def filesets_for(
        self,
        experimenter_id: int,
        groups: set[int] | None,
        max_id: int,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Fileset]: ...

    def changes(self, since: int) -> Changes | None: ...

    def last_event_id(self) -> int: ...

    # the importer and the ingest service (writing an import is the backend's writer's)
    def experimenter_by_name(self, name: str) -> Experimenter: ...

    def experimenter_by_uid(self, uid: int) -> Experimenter | None: ...

    def group_by_name(self, name: str) -> Group: ...

    def group_by_id(self, group_id: int) -> Group: ...

    def memberships_of(self, experimenter_id: int) -> list[Membership]: ...

    def is_member(self, user: str, group: str) -> bool: ...

    def fileset_by_prefix(self, prefix: str) -> Fileset | None: ...

    # OMERO's download policy for one group's data (omerofs.policy)
    def binary_access(self, group_id: int) -> BinaryAccess: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FilesetWithWarning(Fileset):
    """An imported fileset whose import reported an error after its Images were
    committed (e.g. thumbnails failed): it is there, and the user should hear why."""

    warning: str = ""


def with_warning(fileset: Fileset, warning: str) -> FilesetWithWarning:
    values = {f.name: getattr(fileset, f.name) for f in fields(Fileset)}
    return FilesetWithWarning(**values, warning=warning)
