"""The catalog read from an OMERO server through omero-py.

Read with HQL projections across all groups (``omero.group = -1``) by a service account
that may read everything (an admin, or a restricted admin with no privileges: OMERO's
"data viewer"), in keyset-paged queries rather than one object per call. Only filesets
whose import finished (they have images) are shown: OMERO creates the Fileset row
before the bytes arrive. Changes come from the server's EventLog, translated into the
events the view understands; the view polls ``changes`` and, when the server is away,
keeps serving what it has (``CatalogUnavailable``). People and fetched filesets are
persisted in the repository (``cache``), so a daemon started during an outage serves
the last known state, flagged stale.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from itertools import islice
from typing import Any

import omero
from omero.rtypes import rlist, rlong, rstring

from omerofs.backends.omero import records
from omerofs.backends.omero.cache import CatalogCache
from omerofs.backends.omero.session import ALL_GROUPS, ServerConnection
from omerofs.backends.omero.settings import OmeroSettings
from omerofs.catalog.protocol import (
    Changes,
    Container,
    Event,
    Experimenter,
    Fileset,
    Group,
    Membership,
    Snapshot,
)
from omerofs.errors import AccessDenied, CatalogUnavailable, NotFound, OmerofsError
from omerofs.identity import IdMap
from omerofs.policy import KEY as BINARY_ACCESS
from omerofs.policy import OMERO_DEFAULT, BinaryAccess, BinaryAccessPolicy, parse

log = logging.getLogger(__name__)
ID_CHUNK = 1000  # ids per ``in (:ids)`` query
PEOPLE_MAX_AGE = 5.0  # seconds the importer may use a cached list of people and groups
POLICY_MAX_AGE = 60.0  # seconds a read download policy is used before it is read again

# EventLog entity types after which people, groups or containers must be read again
_PEOPLE = {"Experimenter", "ExperimenterGroup", "GroupExperimenterMap"}
_CONTAINERS = {"Project", "Dataset", "ProjectDatasetLink", "Screen", "Plate", "ScreenPlateLink"}


class OmeroCatalog:
    def __init__(
        self,
        settings: OmeroSettings,
        connection: ServerConnection | None = None,
        idmap: IdMap | None = None,
        cache: CatalogCache | None = None,
    ) -> None:
        self.settings = settings
        self.server = connection or ServerConnection(settings)
        self.idmap = idmap or IdMap.load(settings.idmap)
        self.cache = cache
        self.stale: str | None = None  # why the last known state is served, during an outage
        self._lock = threading.Lock()
        self._people: Snapshot | None = None
        self._people_at = 0.0
        self._reconciled = time.monotonic()
        self._max_fileset = 0  # never goes down: a rebuild must not drop delivered filesets
        self._entry_index = True  # order entries by index(fe) until the server refuses it
        self._events = records.EventWindow(settings.event_overlap)
        self._policy: tuple[frozenset[str], dict[int, frozenset[str]]] | None = None
        self._policy_at = 0.0
        self._delivered_policy: BinaryAccessPolicy | None = None  # as the view last got it

    def close(self) -> None:
        self.server.close()

    # -- outages ------------------------------------------------------------------------

    def _went_stale(self, exc: CatalogUnavailable) -> None:
        if self.stale is None:
            log.warning(
                "%s; serving the last known users, groups and filesets (stale) until it "
                "answers again",
                exc,
            )
            if self.cache is not None:
                self.cache.set_outage(str(exc))
        self.stale = str(exc)

    def _answered(self) -> None:
        if self.stale is not None:
            log.info("OMERO server answers again: the view is current")
            self.stale = None
            if self.cache is not None:
                self.cache.set_outage(None)

    def _known_people(self, exc: CatalogUnavailable) -> Snapshot:
        """During an outage: people as last read (this process, or persisted)."""
        with self._lock:
            people = self._people
        if people is None and self.cache is not None:
            saved = self.cache.load_people()
            if saved is not None:
                people = saved[0]
                with self._lock:
                    self._people, self._people_at = people, time.monotonic()
                    self._max_fileset = max(self._max_fileset, people.max_fileset_id)
        if people is None:
            raise exc
        self._went_stale(exc)
        return dataclasses.replace(people, filesets={}, binary_access=self.access_policy())

    # -- queries ----------------------------------------------------------------------

    def _project(self, hql: str, params: Any = None) -> list[list[Any]]:
        params = params or omero.sys.ParametersI()
        return self.server.call(
            lambda sf: records.rows(sf.getQueryService().projection(hql, params, ALL_GROUPS))
        )

    def _paged(self, hql: str, params: Any = None, after: int = -1) -> Iterator[list[Any]]:
        """Rows of ``hql``, which selects an id first, filters ``x.id > :after`` and orders
        by that id: keyset paging, so a page costs the same deep into a big table."""
        params = params or omero.sys.ParametersI()
        while True:
            params.addLong("after", after)
            params.page(0, self.settings.page_size)
            page = self._project(hql, params)
            yield from page
            if len(page) < self.settings.page_size:
                return
            after = page[-1][0]

    def _by_ids(self, hql: str, ids: list[int], params: Any = None) -> list[list[Any]]:
        """``hql`` with ``:ids`` bound to chunks of ``ids``."""
        found: list[list[Any]] = []
        for start in range(0, len(ids), ID_CHUNK):
            p = params or omero.sys.ParametersI()
            p.addIds(ids[start : start + ID_CHUNK])
            found += self._project(hql, p)
        return found

    # -- people, groups, containers ---------------------------------------------------

    def last_event_id(self) -> int:
        """The newest EventLog id; during an outage the last one known (nothing new can
        be known), so pollers keep running."""
        try:
            found = self._last_event_id()
        except CatalogUnavailable as exc:
            return self._known_people(exc).event_id
        self._answered()
        return found

    def _last_event_id(self) -> int:
        return records.scalar(self._project("select max(el.id) from EventLog el"))

    def snapshot_people(self) -> Snapshot:
        """Users, groups, memberships and containers (no filesets), at an event id read
        first: whatever happens after it is delivered again by ``changes``. During an
        outage: the last known ones (``stale`` says why)."""
        snap = self._people_now()
        self._delivered_policy = snap.binary_access  # a view starts from this one
        return snap

    def _people_now(self) -> Snapshot:
        try:
            return self._fresh_people()
        except CatalogUnavailable as exc:
            return self._known_people(exc)

    def _fresh_people(self) -> Snapshot:
        """People read from the server now (and persisted), or CatalogUnavailable."""
        snap = self._read_people()
        self._answered()
        if self.cache is not None:
            self.cache.save_people(snap)
        return snap

    def _read_people(self) -> Snapshot:
        event_id = self._last_event_id()
        max_fileset = records.scalar(self._project("select max(fs.id) from Fileset fs"))
        with self._lock:
            self._max_fileset = max(self._max_fileset, max_fileset)
            snap = Snapshot(event_id=event_id, max_fileset_id=self._max_fileset)
        group_objects = self.server.call(
            lambda sf: sf.getQueryService().findAllByQuery(
                "select g from ExperimenterGroup g", None, ALL_GROUPS
            )
        )
        snap.groups = records.groups_of(group_objects, self.idmap)
        memberships = records.memberships_of(
            [
                row[1:]
                for row in self._paged(
                    "select m.id, m.parent.id, m.child.id, m.owner from GroupExperimenterMap m "
                    "where m.id > :after order by m.id"
                )
            ],
            snap.groups,
        )
        snap.experimenters = records.experimenters_of(
            list(
                self._paged(
                    "select e.id, e.omeName from Experimenter e where e.id > :after order by e.id"
                )
            ),
            memberships,
            snap.groups,
            self._default_groups(),
            self.idmap,
        )
        snap.memberships = [m for m in memberships if m.experimenter_id in snap.experimenters]
        for kind, into in (("Project", snap.projects), ("Dataset", snap.datasets)):
            into.update(self._visible_containers(kind, snap))
        snap.project_dataset = self._visible_links(
            "ProjectDatasetLink", snap.projects, snap.datasets
        )
        for kind, into in (("Screen", snap.screens), ("Plate", snap.plates)):
            into.update(self._visible_containers(kind, snap))
        snap.screen_plate = self._visible_links("ScreenPlateLink", snap.screens, snap.plates)
        snap.binary_access = self.access_policy()
        with self._lock:
            self._people, self._people_at = snap, time.monotonic()
        return snap

    def _visible_containers(self, kind: str, snap: Snapshot) -> dict[int, Container]:
        """Every ``kind`` (Project, Dataset, Screen, Plate) whose owner and group the
        snapshot already holds: the view cannot place one it has no user or group for."""
        found = records.containers_of(
            list(
                self._paged(
                    f"select x.id, x.name, x.details.owner.id, x.details.group.id "
                    f"from {kind} x where x.id > :after order by x.id"
                )
            )
        )
        return {
            i: c
            for i, c in found.items()
            if c.owner_id in snap.experimenters and c.group_id in snap.groups
        }

    def _visible_links(
        self, link: str, parents: dict[int, Container], children: dict[int, Container]
    ) -> list[tuple[int, int]]:
        """(parent, child) of every ``link`` row whose both ends are visible containers."""
        return [
            (p, c)
            for _, p, c in self._paged(
                f"select l.id, l.parent.id, l.child.id from {link} l "
                "where l.id > :after order by l.id"
            )
            if p in parents and c in children
        ]

    def _default_groups(self) -> dict[int, int]:
        """Each user's default group: the first of their group list (``index(m) = 0``).
        Optional: without it, the first group a user is a member of is used."""
        try:
            rows = self._project(
                "select e.id, m.parent.id from Experimenter e join e.groupExperimenterMap m "
                "where index(m) = 0"
            )
        except CatalogUnavailable:
            raise
        except OmerofsError as exc:
            log.warning("cannot read default groups (%s); using each user's first group", exc)
            return {}
        return {e: g for e, g in rows}

    def _current_people(self, strict: bool = False) -> Snapshot:
        """People read at most PEOPLE_MAX_AGE ago; ``strict``: never the stale ones."""
        with self._lock:
            people, at = self._people, self._people_at
        if people is None or time.monotonic() - at > PEOPLE_MAX_AGE:
            people = self._fresh_people() if strict else self._people_now()
        return people

    def experimenter_by_name(self, name: str) -> Experimenter:
        for exp in self._current_people().experimenters.values():
            if exp.name == name:
                return exp
        raise NotFound(f"no OMERO user {name!r} with a local account")

    def experimenter_by_uid(self, uid: int) -> Experimenter | None:
        for exp in self._current_people().experimenters.values():
            if exp.uid == uid:
                return exp
        return None

    def group_by_name(self, name: str) -> Group:
        for group in self._current_people().groups.values():
            if group.name == name:
                return group
        raise NotFound(f"no OMERO group {name!r} with a local group")

    def group_by_id(self, group_id: int) -> Group:
        group = self._current_people().groups.get(group_id)
        if group is None:
            raise NotFound(f"no OMERO group {group_id} with a local group")
        return group

    def memberships_of(self, experimenter_id: int) -> list[Membership]:
        people = self._current_people()
        return [m for m in people.memberships if m.experimenter_id == experimenter_id]

    def is_member(self, user: str, group: str) -> bool:
        people = self._current_people()
        exp = next((e for e in people.experimenters.values() if e.name == user), None)
        grp = next((g for g in people.groups.values() if g.name == group), None)
        return (
            exp is not None
            and grp is not None
            and any(m.group_id == grp.id for m in people.memberships if m.experimenter_id == exp.id)
        )

    # -- the download policy --------------------------------------------------------------

    def binary_access(self, group_id: int) -> BinaryAccess:
        """``omero.policy.binary_access`` for a group's data: the server's value (IConfig)
        and the group's own config entry (``omerofs.policy`` applies them)."""
        with self._lock:
            known, at = self._policy, self._policy_at
        if known is None or time.monotonic() - at > POLICY_MAX_AGE:
            try:
                known = self._read_policy()
            except CatalogUnavailable as exc:
                if known is None and self.cache is not None:
                    saved = self.cache.load_value("binary_access")
                    if saved is not None:
                        known = (
                            frozenset(saved["server"]),
                            {int(g): frozenset(t) for g, t in saved["groups"].items()},
                        )
                if known is None:
                    raise
                self._went_stale(exc)
            with self._lock:
                self._policy, self._policy_at = known, time.monotonic()
        server, groups = known
        return BinaryAccess(server, groups.get(group_id, frozenset()))

    def access_policy(self) -> BinaryAccessPolicy:
        """The whole policy (server-wide and every group's), as the view holds it with
        its snapshot; during an outage with nothing known, OMERO's default."""
        try:
            self.binary_access(0)
        except CatalogUnavailable:
            log.warning("download policy unknown (server away, none saved): OMERO's default")
            return BinaryAccessPolicy()
        with self._lock:
            assert self._policy is not None
            server, groups = self._policy
        return BinaryAccessPolicy.of(server, groups)

    def _read_policy(self) -> tuple[frozenset[str], dict[int, frozenset[str]]]:
        try:
            value = self.server.call(lambda sf: sf.getConfigService().getConfigValue(BINARY_ACCESS))
        except AccessDenied as exc:
            log.warning("cannot read %s (%s); assuming OMERO's default", BINARY_ACCESS, exc)
            value = OMERO_DEFAULT
        try:
            rows = self._project(
                "select g.id, c.name, c.value from ExperimenterGroup g join g.config c"
            )
        except CatalogUnavailable:
            raise
        except OmerofsError as exc:
            log.warning("cannot read the groups' config (%s): server-wide policy only", exc)
            rows = []
        server = parse(value if value is not None else OMERO_DEFAULT)
        groups = records.group_policies(rows, BINARY_ACCESS)
        if self.cache is not None:
            self.cache.save_value(
                "binary_access",
                {"server": sorted(server), "groups": {g: sorted(t) for g, t in groups.items()}},
            )
        return server, groups

    def plate_filesets(self, ids: list[int]) -> set[int]:
        """Those of ``ids`` whose images lie in a plate (have WellSamples): the policy's
        ``plate`` token applies to them."""
        if not ids:
            return set()
        return set(self._plates_of(ids))

    # -- filesets ---------------------------------------------------------------------

    _FILESETS = (
        "select fs.id, fs.details.owner.id, fs.details.group.id, fs.templatePrefix, "
        "fs.details.creationEvent.time from Fileset fs "
        "where fs.id > :after and fs.id <= :max "
        "and exists (select i.id from Image i where i.fileset.id = fs.id) "
    )

    def filesets_for(
        self,
        experimenter_id: int,
        groups: set[int] | None,
        max_id: int,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Fileset]:
        """Finished filesets with ``after`` < id <= ``max_id`` owned by the experimenter or
        in ``groups`` (None: all), in id order; at most ``limit`` of them."""
        params = omero.sys.ParametersI()
        params.addLong("max", max_id)
        hql = self._FILESETS
        if groups is not None:
            params.addLong("uid", experimenter_id)
            params.add("gids", rlist([rlong(g) for g in sorted(groups) or [-1]]))
            hql += "and (fs.details.owner.id = :uid or fs.details.group.id in (:gids)) "
        try:
            heads = list(islice(self._paged(hql + "order by fs.id", params, after), limit))
            found = self._complete(heads)
        except CatalogUnavailable as exc:
            if self.cache is None:
                raise
            self._went_stale(exc)
            return self.cache.filesets_for(experimenter_id, groups, max_id, after, limit)
        if self.cache is not None:
            full = limit is not None and len(heads) == limit
            upto = heads[-1][0] if full else max_id
            self.cache.save_filesets(found, experimenter_id, groups, after, upto)
        return found

    def fileset_by_prefix(self, prefix: str) -> Fileset | None:
        params = omero.sys.ParametersI()
        params.add("prefix", rstring(prefix))
        params.addLong("max", 2**62)
        params.addLong("after", -1)
        heads = self._project(self._FILESETS + "and fs.templatePrefix = :prefix", params)
        found = self._complete(heads)
        return found[0] if found else None

    def _complete(self, heads: list[list[Any]]) -> list[Fileset]:
        """Fileset rows ``[id, owner, group, prefix, created ms]`` with their entries,
        images, datasets and transfer mode, fetched by id in chunks."""
        people = self._current_people()
        heads = [h for h in heads if h[1] in people.experimenters and h[2] in people.groups]
        ids = [h[0] for h in heads]
        if not ids:
            return []
        entries = records.entries_of(self._entry_rows(ids))
        images: dict[int, int] = defaultdict(int)
        for fs_id, count in self._by_ids(
            "select i.fileset.id, count(i.id) from Image i where i.fileset.id in (:ids) "
            "group by i.fileset.id",
            ids,
        ):
            images[fs_id] = int(count)
        datasets: dict[int, set[int]] = defaultdict(set)
        for fs_id, dataset_id in self._by_ids(
            "select distinct i.fileset.id, l.parent.id from DatasetImageLink l join l.child i "
            "where i.fileset.id in (:ids)",
            ids,
        ):
            datasets[fs_id].add(dataset_id)
        transfers = self._transfers(ids)
        plates = self._plates_of(ids)
        return [
            Fileset(
                id=fs_id,
                owner_id=owner,
                group_id=group,
                template_prefix=prefix if prefix.endswith("/") else prefix + "/",
                transfer=transfers.get(fs_id, "upload"),
                created=(created or 0) / 1000.0,
                entries=tuple(
                    dataclasses.replace(e, index=i) for i, e in enumerate(entries.get(fs_id, []))
                ),
                dataset_ids=tuple(sorted(datasets[fs_id])),
                image_count=images[fs_id],
                plate_id=plates.get(fs_id),
            )
            for fs_id, owner, group, prefix, created in heads
        ]

    def _plates_of(self, ids: list[int]) -> dict[int, int]:
        """The plate each fileset's images lie in (Plate -> Well -> WellSample -> Image ->
        Fileset; one plate per fileset, as one import makes it)."""
        found: dict[int, int] = {}
        for fs_id, plate_id in self._by_ids(
            "select distinct i.fileset.id, ws.well.plate.id from WellSample ws join ws.image i "
            "where i.fileset.id in (:ids)",
            ids,
        ):
            found.setdefault(fs_id, plate_id)
        return found

    def _entry_rows(self, ids: list[int]) -> list[list[Any]]:
        """Entries in fileset order: ``index(fe)``, the position in ``Fileset.usedFiles``
        (the main file first, as sent to ``importFileset``). A server whose HQL rejects
        ``index()`` gets ``fe.id``, which follows the same order for entries saved
        together."""
        hql = (
            "select fs.id, {order}, fe.clientPath, f.path, f.name, f.size, f.hash, "
            "h.value, f.mimetype from Fileset fs join fs.usedFiles fe "
            "join fe.originalFile f left outer join f.hasher h where fs.id in (:ids)"
        )
        if self._entry_index:
            try:
                return self._by_ids(hql.format(order="index(fe)"), ids)
            except CatalogUnavailable:
                raise
            except OmerofsError as exc:
                log.warning("cannot order fileset entries by index(fe) (%s); using fe.id", exc)
                self._entry_index = False
        return self._by_ids(hql.format(order="fe.id"), ids)

    def _transfers(self, ids: list[int]) -> dict[int, str]:
        """Transfer modes from the fileTransfer CommentAnnotations OMERO's importer adds."""
        params = omero.sys.ParametersI()
        params.add("ns", rstring(records.FILE_TRANSFER_NS))
        links = self._by_ids(
            "select l.parent.id, l.child.id from FilesetAnnotationLink l "
            "where l.child.ns = :ns and l.parent.id in (:ids)",
            ids,
            params,
        )
        if not links:
            return {}
        texts: dict[int, str] = {}
        annotation_ids = sorted({a for _, a in links})
        for start in range(0, len(annotation_ids), ID_CHUNK):
            p = omero.sys.ParametersI()
            p.addIds(annotation_ids[start : start + ID_CHUNK])
            for ann in self.server.call(
                lambda sf, p=p: sf.getQueryService().findAllByQuery(
                    "select a from CommentAnnotation a where a.id in (:ids)", p, ALL_GROUPS
                )
            ):
                texts[ann.getId().getValue()] = ann.getTextValue().getValue()
        return {fs_id: records.transfer_of(texts.get(a)) for fs_id, a in links}

    # -- following the event log --------------------------------------------------------

    def changes(self, since: int) -> Changes | None:
        """What happened after event ``since``, in the view's terms: new finished filesets
        (``Fileset INSERT``), filesets whose datasets or existence changed (``Fileset
        UPDATE``/``DELETE``), and people/group/container events."""
        try:
            changes = self._changes(since)
        except CatalogUnavailable as exc:
            self._went_stale(exc)
            raise
        self._answered()
        if changes is not None and self.cache is not None:
            gone = [
                e.entity_id for e in changes.events if (e.entity, e.action) == ("Fileset", "DELETE")
            ]
            if gone:
                self.cache.forget_filesets(gone)
            if changes.snapshot.filesets:
                self.cache.add_filesets(changes.snapshot.filesets.values())
        return changes

    def _changes(self, since: int) -> Changes | None:
        params = omero.sys.ParametersI()
        params.add("types", rlist([rstring(t) for t in records.EVENT_TYPES]))
        read = [
            records.event_of(row)
            for row in self._paged(
                "select el.id, el.entityType, el.entityId, el.action from EventLog el "
                "where el.id > :after and el.entityType in (:types) order by el.id",
                params,
                after=self._events.lower_bound(since),
            )
        ]
        raw = self._events.fresh(since, read)
        reconcile = time.monotonic() - self._reconciled >= self.settings.reconcile_interval
        policy = self.access_policy()  # read again at most every POLICY_MAX_AGE
        if self._delivered_policy is None:  # the first poll: the caller's snapshot had it
            self._delivered_policy = policy
        if not raw and not reconcile and policy == self._delivered_policy:
            return None
        last = max([since, *(e.id for e in raw)])
        kinds = {e.entity for e in raw}
        people = (
            self._fresh_people()
            if reconcile or kinds & (_PEOPLE | _CONTAINERS)
            else self._current_people(strict=True)
        )
        events = self._translate(raw)
        if policy != self._delivered_policy:  # the view re-applies it to every tree
            events.append(Event(last, "BinaryAccess", 0, "UPDATE"))
        if reconcile:  # a full re-read now and then: every built tree is fetched again
            self._reconciled = time.monotonic()
            events.append(Event(last, "Reconcile", 0, "UPDATE"))
        with self._lock:
            self._max_fileset = max(
                [self._max_fileset] + [e.entity_id for e in events if e.entity == "Fileset"]
            )
            newest = self._max_fileset
        # the events up to ``last`` are handled; people may be newer (read just now):
        # events after ``last`` come again next time, and applying them twice is harmless
        snap = dataclasses.replace(
            people, event_id=last, filesets={}, max_fileset_id=newest, binary_access=policy
        )
        new_ids = sorted(
            {e.entity_id for e in events if (e.entity, e.action) == ("Fileset", "INSERT")}
        )
        if new_ids:
            heads = self._by_ids(
                "select fs.id, fs.details.owner.id, fs.details.group.id, fs.templatePrefix, "
                "fs.details.creationEvent.time from Fileset fs where fs.id in (:ids) "
                "and exists (select i.id from Image i where i.fileset.id = fs.id)",
                new_ids,
            )
            snap.filesets = {fs.id: fs for fs in self._complete(heads)}
        self._events.delivered(last, raw)
        self._delivered_policy = policy
        return Changes(events, snap)

    def _translate(self, raw: list[Event]) -> list[Event]:
        """Look up what OMERO's events refer to, then translate them (``records``)."""

        def lookup(hql: str, entity: str, action: str | None = None) -> dict[int, Any]:
            ids = [e.entity_id for e in raw if e.entity == entity and action in (None, e.action)]
            return dict(self._by_ids(hql, ids)) if ids else {}

        refs = records.EventRefs(
            fileset_of_image=lookup(
                "select i.id, i.fileset.id from Image i where i.id in (:ids)", "Image", "INSERT"
            ),
            fileset_of_link=lookup(
                "select l.id, l.child.fileset.id from DatasetImageLink l where l.id in (:ids)",
                "DatasetImageLink",
            ),
            member_of_map=lookup(
                "select m.id, m.child.id from GroupExperimenterMap m where m.id in (:ids)",
                "GroupExperimenterMap",
            ),
            dataset_of_link=lookup(
                "select l.id, l.child.id from ProjectDatasetLink l where l.id in (:ids)",
                "ProjectDatasetLink",
                "INSERT",
            ),
            plate_of_link=lookup(
                "select l.id, l.child.id from ScreenPlateLink l where l.id in (:ids)",
                "ScreenPlateLink",
                "INSERT",
            ),
        )
        return records.view_events(raw, refs)
