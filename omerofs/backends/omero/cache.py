"""The OMERO server's last known state, kept in the repository's own SQLite file.

A facility's microscopes must keep saving while the OMERO server is down (a maintenance
window, a reboot of the omerofs host during one). So every successful read of people,
groups and memberships is persisted here, and so is every fileset record a view
fetched; when the server cannot be reached, the catalog starts from these, says so in
the log and records the outage here (``outage``: what ``omerofs status`` can show).
Filesets are cached per fetched range: rows of a range that the server no longer
returns are dropped when that range is fetched again, and deletions seen in the event
log remove theirs, so the cache never resurrects a deleted fileset once it was told.

Stored as JSON per row: a view of a million filesets costs one row each (the cost is
measured in docs/omero.md); nothing here is ever the source of truth.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from omerofs.catalog.protocol import (
    Container,
    Experimenter,
    Fileset,
    FilesetEntry,
    Group,
    Membership,
    Snapshot,
)
from omerofs.catalog.sqlite import Database
from omerofs.identity import PermissionLevel

SCHEMA = """
CREATE TABLE IF NOT EXISTS omero_people (
    id INTEGER PRIMARY KEY CHECK (id = 1), saved REAL NOT NULL, digest TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS omero_filesets (
    id INTEGER PRIMARY KEY, owner_id INTEGER NOT NULL, group_id INTEGER NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS omero_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class CatalogCache:
    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    # -- people -----------------------------------------------------------------------

    def save_people(self, snap: Snapshot) -> None:
        """Persist people, groups, memberships and containers (not rewritten when only
        the time changed: this runs every few seconds while imports run)."""
        data = json.dumps(people_to_json(snap), separators=(",", ":"))
        digest = hashlib.sha1(data.encode()).hexdigest()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT digest FROM omero_people WHERE id = 1").fetchone()
            if row is not None and row[0] == digest:
                conn.execute("UPDATE omero_people SET saved = ? WHERE id = 1", (time.time(),))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO omero_people (id, saved, digest, data) "
                    "VALUES (1, ?, ?, ?)",
                    (time.time(), digest, data),
                )

    def load_people(self) -> tuple[Snapshot, float] | None:
        """The last persisted people snapshot and when it was read from the server."""
        rows = self.db.query("SELECT saved, data FROM omero_people WHERE id = 1")
        if not rows:
            return None
        saved, data = rows[0]
        return people_from_json(json.loads(data)), saved

    # -- filesets ---------------------------------------------------------------------

    def save_filesets(
        self,
        found: list[Fileset],
        experimenter_id: int,
        groups: set[int] | None,
        after: int,
        upto: int,
    ) -> None:
        """What the server returned for ``after`` < id <= ``upto`` under this filter: it
        replaces what the cache held there."""
        where, params = _filter(experimenter_id, groups)
        keep = [f.id for f in found]
        with self.db.transaction() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS omero_keep (id INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM omero_keep")
            conn.executemany("INSERT INTO omero_keep VALUES (?)", ((i,) for i in keep))
            conn.execute(
                f"DELETE FROM omero_filesets WHERE id > ? AND id <= ? AND {where} "
                "AND id NOT IN (SELECT id FROM omero_keep)",
                (after, upto, *params),
            )
            _upsert(conn, found)

    def add_filesets(self, found: Iterable[Fileset]) -> None:
        with self.db.transaction() as conn:
            _upsert(conn, list(found))

    def forget_filesets(self, ids: Iterable[int]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM omero_filesets WHERE id = ?", ((i,) for i in ids))

    def filesets_for(
        self,
        experimenter_id: int,
        groups: set[int] | None,
        max_id: int,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Fileset]:
        where, params = _filter(experimenter_id, groups)
        rows = self.db.query(
            f"SELECT data FROM omero_filesets WHERE id > ? AND id <= ? AND {where} "
            "ORDER BY id LIMIT ?",
            (after, max_id, *params, -1 if limit is None else limit),
        )
        return [fileset_from_json(json.loads(data)) for (data,) in rows]

    # -- small named values (the download policy, ...) -----------------------------------

    def save_value(self, key: str, value: Any) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO omero_state (key, value) VALUES (?, ?)",
                (key, json.dumps(value)),
            )

    def load_value(self, key: str) -> Any:
        rows = self.db.query("SELECT value FROM omero_state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    # -- outages ----------------------------------------------------------------------

    def set_outage(self, error: str | None) -> None:
        """Record that the server is unreachable (since now, unless already recorded) or
        that it answers again (``None``)."""
        with self.db.transaction() as conn:
            if error is None:
                conn.execute("DELETE FROM omero_state WHERE key = 'outage'")
                return
            row = conn.execute("SELECT value FROM omero_state WHERE key = 'outage'").fetchone()
            since = json.loads(row[0])["since"] if row else time.time()
            conn.execute(
                "INSERT OR REPLACE INTO omero_state (key, value) VALUES ('outage', ?)",
                (json.dumps({"since": since, "error": error}),),
            )

    def outage(self) -> tuple[float, str] | None:
        """(since when, last error) while the server is unreachable, else None."""
        rows = self.db.query("SELECT value FROM omero_state WHERE key = 'outage'")
        if not rows:
            return None
        value = json.loads(rows[0][0])
        return float(value["since"]), str(value["error"])


def describe_outage(db: Database) -> str | None:
    """One line for ``omerofs status``: whether the OMERO server was unreachable at the
    last attempt, since when, and how old the data served instead is."""
    cache = CatalogCache(db)
    outage = cache.outage()
    if outage is None:
        return None
    since, error = outage
    people = cache.load_people()
    known = (
        f"serving users, groups and filesets as of {_when(people[1])}"
        if people
        else "no saved state to serve"
    )
    return f"OMERO server unreachable since {_when(since)} ({error}); {known}"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _filter(experimenter_id: int, groups: set[int] | None) -> tuple[str, tuple]:
    if groups is None:
        return "1", ()
    marks = ",".join("?" * len(groups)) or "NULL"
    return f"(owner_id = ? OR group_id IN ({marks}))", (experimenter_id, *sorted(groups))


def _upsert(conn: Any, found: list[Fileset]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO omero_filesets (id, owner_id, group_id, data) VALUES (?,?,?,?)",
        (
            (f.id, f.owner_id, f.group_id, json.dumps(fileset_to_json(f), separators=(",", ":")))
            for f in found
        ),
    )


# -- records <-> JSON ----------------------------------------------------------------------


def people_to_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "event_id": snap.event_id,
        "max_fileset_id": snap.max_fileset_id,
        "experimenters": [
            [e.id, e.name, e.uid, e.admin, e.default_group_id, e.email]
            for e in snap.experimenters.values()
        ],
        "groups": [[g.id, g.name, g.level.perms, g.gid] for g in snap.groups.values()],
        "memberships": [[m.group_id, m.experimenter_id, m.owner] for m in snap.memberships],
        "projects": [[c.id, c.name, c.owner_id, c.group_id] for c in snap.projects.values()],
        "datasets": [[c.id, c.name, c.owner_id, c.group_id] for c in snap.datasets.values()],
        "project_dataset": [list(pd) for pd in snap.project_dataset],
        "screens": [[c.id, c.name, c.owner_id, c.group_id] for c in snap.screens.values()],
        "plates": [[c.id, c.name, c.owner_id, c.group_id] for c in snap.plates.values()],
        "screen_plate": [list(sp) for sp in snap.screen_plate],
    }


def people_from_json(data: dict[str, Any]) -> Snapshot:
    return Snapshot(
        event_id=data["event_id"],
        max_fileset_id=data["max_fileset_id"],
        experimenters={row[0]: Experimenter(*row) for row in data["experimenters"]},
        groups={
            gid: Group(gid, name, PermissionLevel.from_perms(perms), local)
            for gid, name, perms, local in data["groups"]
        },
        memberships=[Membership(g, e, bool(o)) for g, e, o in data["memberships"]],
        projects={row[0]: Container(*row) for row in data["projects"]},
        datasets={row[0]: Container(*row) for row in data["datasets"]},
        project_dataset=[(p, d) for p, d in data["project_dataset"]],
        # saved before plates were read: none
        screens={row[0]: Container(*row) for row in data.get("screens", [])},
        plates={row[0]: Container(*row) for row in data.get("plates", [])},
        screen_plate=[(s, p) for s, p in data.get("screen_plate", [])],
    )


def fileset_to_json(f: Fileset) -> list[Any]:
    entries = [
        [e.index, e.client_path, e.path, e.name, e.size, e.hash, e.hasher, e.mimetype]
        for e in f.entries
    ]
    return [
        f.id,
        f.owner_id,
        f.group_id,
        f.template_prefix,
        f.transfer,
        f.created,
        entries,
        list(f.dataset_ids),
        f.image_count,
        f.plate_id,
    ]


def fileset_from_json(row: list[Any]) -> Fileset:
    fs_id, owner, group, prefix, transfer, created, entries, datasets, images = row[:9]
    plate_id = row[9] if len(row) > 9 else None  # saved before plates were read: none
    return Fileset(
        id=fs_id,
        owner_id=owner,
        group_id=group,
        template_prefix=prefix,
        transfer=transfer,
        created=created,
        entries=tuple(FilesetEntry(*e) for e in entries),
        dataset_ids=tuple(datasets),
        image_count=images,
        plate_id=plate_id,
    )
