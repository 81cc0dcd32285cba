"""The embedded catalog: one SQLite file (WAL mode) modelling what OMERO models.

All SQL of the embedded backend lives here. Every change also appends a row to
``events`` (like OMERO's EventLog) so that mounted views can follow changes made by
other processes (``omerofs import``, the ingest daemon) without rescanning.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from sys import intern
from typing import Any

from omerofs.catalog.protocol import (
    Changes,
    Container,
    Event,
    Experimenter,
    Fileset,
    FilesetEntry,
    Group,
    ImageInfo,
    ImportRecord,
    Membership,
    PlateInfo,
    Snapshot,
    WellSample,
)
from omerofs.catalog.rows import BadRows, clean_snapshot
from omerofs.catalog.sqlite import Database
from omerofs.errors import (
    AccessDenied,
    AlreadyExists,
    CatalogUnavailable,
    NotFound,
    OmerofsError,
    UsageError,
)
from omerofs.identity import PermissionLevel, check_posix_id
from omerofs.policy import OMERO_DEFAULT, BinaryAccess, BinaryAccessPolicy, parse

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ROOT_ID = 0
SYSTEM_GROUP_ID = 0
FIRST_USER_ID = 2  # OMERO: 0 is root, 1 is guest

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    level TEXT NOT NULL CHECK (level IN ('private','read-only','read-annotate','read-write')),
    gid INTEGER NOT NULL UNIQUE
);
CREATE TABLE experimenters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uid INTEGER NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    default_group_id INTEGER REFERENCES groups(id),
    email TEXT
);
CREATE TABLE memberships (
    group_id INTEGER NOT NULL REFERENCES groups(id),
    experimenter_id INTEGER NOT NULL REFERENCES experimenters(id),
    owner INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, experimenter_id)
);
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL REFERENCES experimenters(id),
    group_id INTEGER NOT NULL REFERENCES groups(id),
    created REAL NOT NULL
);
CREATE TABLE datasets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL REFERENCES experimenters(id),
    group_id INTEGER NOT NULL REFERENCES groups(id),
    created REAL NOT NULL
);
CREATE TABLE project_dataset (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    PRIMARY KEY (project_id, dataset_id)
);
CREATE TABLE filesets (
    id INTEGER PRIMARY KEY,
    owner_id INTEGER NOT NULL REFERENCES experimenters(id),
    group_id INTEGER NOT NULL REFERENCES groups(id),
    template_prefix TEXT NOT NULL UNIQUE,
    transfer TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE fileset_entries (
    fileset_id INTEGER NOT NULL REFERENCES filesets(id),
    idx INTEGER NOT NULL,
    client_path TEXT NOT NULL,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    hasher TEXT NOT NULL,
    mimetype TEXT NOT NULL,
    PRIMARY KEY (fileset_id, idx),
    UNIQUE (path, name)
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    fileset_id INTEGER NOT NULL REFERENCES filesets(id),
    series INTEGER NOT NULL,
    name TEXT NOT NULL,
    size_x INTEGER NOT NULL, size_y INTEGER NOT NULL, size_z INTEGER NOT NULL,
    size_c INTEGER NOT NULL, size_t INTEGER NOT NULL,
    pixel_type TEXT NOT NULL
);
CREATE INDEX images_fileset ON images(fileset_id);
CREATE TABLE dataset_image (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    image_id INTEGER NOT NULL REFERENCES images(id),
    PRIMARY KEY (dataset_id, image_id)
);
CREATE INDEX dataset_image_image ON dataset_image(image_id);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    entity_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    time REAL NOT NULL
);
"""


# Indexes added after schema 1 shipped are created on open (IF NOT EXISTS: idempotent).
_INDEXES = """
CREATE INDEX IF NOT EXISTS filesets_owner ON filesets(owner_id);
CREATE INDEX IF NOT EXISTS filesets_group ON filesets(group_id);
"""
# Tables added after schema 1 shipped (plates and screens, issue #11): created on a
# writable open of an older catalog; a read-only open of one shows no plates.
_TABLES = """
CREATE TABLE IF NOT EXISTS screens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL REFERENCES experimenters(id),
    group_id INTEGER NOT NULL REFERENCES groups(id),
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plates (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL REFERENCES experimenters(id),
    group_id INTEGER NOT NULL REFERENCES groups(id),
    created REAL NOT NULL,
    rows INTEGER NOT NULL, columns INTEGER NOT NULL, fields INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS screen_plate (
    screen_id INTEGER NOT NULL REFERENCES screens(id),
    plate_id INTEGER NOT NULL REFERENCES plates(id),
    PRIMARY KEY (screen_id, plate_id)
);
"""
# Columns added after schema 1 shipped: added on a writable open of an older catalog.
_COLUMNS = {
    ("experimenters", "email"): "TEXT",
    ("filesets", "plate_id"): "INTEGER REFERENCES plates(id)",  # the fileset is this plate
    # an image of a plate: its well (row, column from 0) and field (a WellSample)
    ("images", "well_row"): "INTEGER",
    ("images", "well_column"): "INTEGER",
    ("images", "well_field"): "INTEGER",
    # physical pixel sizes in micrometres, where the file gives them
    ("images", "physical_x"): "REAL",
    ("images", "physical_y"): "REAL",
    ("images", "physical_z"): "REAL",
}
_EXPERIMENTER_COLUMNS = "id, name, uid, admin, default_group_id"


def _check_name(kind: str, name: str) -> None:
    if not name or "/" in name or "\0" in name or name in (".", "..") or name != name.strip():
        raise UsageError(f"invalid {kind} name {name!r}")


def check_email(email: str | None) -> str | None:
    """An address for notifications, or None ("" clears it). Only its shape is checked:
    one @, something on both sides, no spaces; the mail server decides the rest."""
    if email is None or email == "":
        return None
    local, at, domain = email.partition("@")
    if not (local and at and domain) or "@" in domain or any(c.isspace() for c in email):
        raise UsageError(f"invalid email address {email!r}")
    return email


class LocalCatalog:
    """SQLite-backed catalog; safe to share between threads (one lock, one connection)."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool = False,
        readonly: bool = False,
        binary_access: str = OMERO_DEFAULT,
        binary_access_groups: dict[str, frozenset[str]] | None = None,
    ) -> None:
        """``readonly``: for commands that only look (anyone who may read the file can run
        them); every write then fails before it starts. ``binary_access`` and
        ``binary_access_groups`` (by group name): the download policy, ``[view]
        binary_access`` and ``binary_access_groups`` in omerofs.toml."""
        self.path = Path(path)
        self._policy_server = parse(binary_access)
        self._policy_groups = dict(binary_access_groups or {})
        self._unknown_policy_groups: set[str] = set()
        if not create and not self.path.exists():
            raise NotFound(f"catalog {self.path} does not exist")
        self._store = Database(self.path, "the catalog", readonly=readonly and not create)
        self._db, self._lock = self._store.conn, self._store.lock
        self._transaction = self._store.transaction
        self._read = self._store.reading
        self._query = self._store.query
        self.bad_rows = BadRows()
        try:
            if create:
                self._create()
            else:
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None or int(row[0]) != SCHEMA_VERSION:
                    raise UsageError(f"catalog {self.path} has an unsupported schema")
            if not self._store.readonly:
                self._db.executescript(_INDEXES)
                self._add_tables()
                self._add_columns()
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(experimenters)")}
            self._exp_columns = _EXPERIMENTER_COLUMNS + (
                ", email" if "email" in columns else ", NULL"
            )
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            self._plates = "plates" in tables  # an older catalog opened read-only: none
            fs_columns = {r[1] for r in self._db.execute("PRAGMA table_info(filesets)")}
            self._fs_plate = "f.plate_id" if "plate_id" in fs_columns else "NULL"
            image_columns = {r[1] for r in self._db.execute("PRAGMA table_info(images)")}
            self._image_physical = (
                "physical_x, physical_y, physical_z"
                if "physical_x" in image_columns
                else "NULL, NULL, NULL"
            )
        except sqlite3.Error as exc:
            self._store.close()
            raise CatalogUnavailable(f"cannot open catalog {self.path}: {exc}") from None

    def _add_tables(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if not {"screens", "plates", "screen_plate"} <= tables:
            with self._transaction() as db:
                for statement in _TABLES.split(";"):
                    if statement.strip():
                        db.execute(statement)

    def _add_columns(self) -> None:
        for (table, column), kind in _COLUMNS.items():
            present = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                with self._transaction() as db:
                    present = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                    if column not in present:  # another process may have just added it
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._store.close()

    # -- plumbing ------------------------------------------------------------------

    @staticmethod
    def _event(db: sqlite3.Connection, entity: str, entity_id: int, action: str) -> None:
        db.execute(
            "INSERT INTO events (entity, entity_id, action, time) VALUES (?, ?, ?, ?)",
            (entity, entity_id, action, time.time()),
        )

    def _create(self) -> None:
        with self._lock:
            self._db.executescript(
                "BEGIN IMMEDIATE;"
                + _SCHEMA
                + _TABLES
                + f"INSERT INTO meta VALUES ('schema', '{SCHEMA_VERSION}');"
                + f"INSERT INTO groups VALUES ({SYSTEM_GROUP_ID}, 'system', 'private', 0);"
                + "INSERT INTO experimenters (id, name, uid, admin, default_group_id) "
                + f"VALUES ({ROOT_ID}, 'root', 0, 1, {SYSTEM_GROUP_ID});"
                + f"INSERT INTO memberships VALUES ({SYSTEM_GROUP_ID}, {ROOT_ID}, 1);"
                + "COMMIT;"
            )

    # -- people and groups ---------------------------------------------------------

    def add_group(self, name: str, level: PermissionLevel, gid: int) -> Group:
        _check_name("group", name)
        check_posix_id("gid", gid)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM groups WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"group {name!r} already exists")
            self._gid_free(db, gid)
            cur = db.execute(
                "INSERT INTO groups (name, level, gid) VALUES (?, ?, ?)", (name, level.label, gid)
            )
            group_id = int(cur.lastrowid)
            self._event(db, "ExperimenterGroup", group_id, "INSERT")
        return Group(group_id, name, level, gid)

    def add_experimenter(
        self,
        name: str,
        uid: int,
        *,
        admin: bool = False,
        default_group: str | None = None,
        email: str | None = None,
    ) -> Experimenter:
        _check_name("user", name)
        check_posix_id("uid", uid)
        email = check_email(email)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM experimenters WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"user {name!r} already exists")
            self._uid_free(db, uid)
            group_id = None
            if default_group is not None:
                group_id = self._group_id(db, default_group)
            (max_id,) = db.execute("SELECT max(id) FROM experimenters").fetchone()
            new_id = max(FIRST_USER_ID, (max_id or 0) + 1)
            db.execute(
                "INSERT INTO experimenters (id, name, uid, admin, default_group_id, email) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (new_id, name, uid, int(admin), group_id, email),
            )
            if group_id is not None:
                db.execute("INSERT INTO memberships VALUES (?, ?, 0)", (group_id, new_id))
            self._event(db, "Experimenter", new_id, "INSERT")
        return Experimenter(new_id, name, uid, admin, group_id, email)

    @staticmethod
    def _uid_free(db: sqlite3.Connection, uid: int, other_than: int | None = None) -> None:
        row = db.execute("SELECT id, name FROM experimenters WHERE uid=?", (uid,)).fetchone()
        if row and row[0] != other_than:
            raise AlreadyExists(f"uid {uid} is already mapped to user {row[1]!r}")

    @staticmethod
    def _gid_free(db: sqlite3.Connection, gid: int, other_than: int | None = None) -> None:
        row = db.execute("SELECT id, name FROM groups WHERE gid=?", (gid,)).fetchone()
        if row and row[0] != other_than:
            raise AlreadyExists(f"gid {gid} is already mapped to group {row[1]!r}")

    def add_member(self, group: str, user: str, *, owner: bool = False) -> Membership:
        with self._transaction() as db:
            group_id = self._group_id(db, group)
            user_id = self._experimenter_id(db, user)
            row = db.execute(
                "SELECT owner FROM memberships WHERE group_id=? AND experimenter_id=?",
                (group_id, user_id),
            ).fetchone()
            if row is not None and bool(row[0]) == owner:
                raise AlreadyExists(
                    f"{user!r} is already a{'n owner' if owner else ' member'} of {group!r}"
                )
            db.execute(
                "INSERT OR REPLACE INTO memberships VALUES (?, ?, ?)",
                (group_id, user_id, int(owner)),
            )
            db.execute(
                "UPDATE experimenters SET default_group_id=? "
                "WHERE id=? AND default_group_id IS NULL",
                (group_id, user_id),
            )
            self._event(db, "GroupExperimenterMap", user_id, "UPDATE" if row else "INSERT")
        return Membership(group_id, user_id, owner)

    # -- undoing: OMERO's rules, and nothing imported is ever lost ------------------

    def modify_experimenter(
        self,
        name: str,
        *,
        uid: int | None = None,
        admin: bool | None = None,
        default_group: str | None = None,
        email: str | None = None,
    ) -> Experimenter:
        """Change what is given; ``email=""`` clears the address. The default group must
        be one of the user's groups (OMERO's rule)."""
        if uid is not None:
            check_posix_id("uid", uid)
        with self._transaction() as db:
            user_id = self._experimenter_id(db, name)
            if user_id == ROOT_ID and (uid not in (None, 0) or admin is False):
                raise AccessDenied("root stays uid 0 and an admin")
            if uid is not None:
                self._uid_free(db, uid, other_than=user_id)
                db.execute("UPDATE experimenters SET uid=? WHERE id=?", (uid, user_id))
            if admin is not None:
                db.execute("UPDATE experimenters SET admin=? WHERE id=?", (int(admin), user_id))
            if default_group is not None:
                group_id = self._group_id(db, default_group)
                if not self._is_member(db, group_id, user_id):
                    raise UsageError(
                        f"{name!r} is not a member of {default_group!r}: "
                        f"omerofs group add-member {default_group} {name} first"
                    )
                db.execute(
                    "UPDATE experimenters SET default_group_id=? WHERE id=?", (group_id, user_id)
                )
            if email is not None:
                db.execute(
                    "UPDATE experimenters SET email=? WHERE id=?", (check_email(email), user_id)
                )
            self._event(db, "Experimenter", user_id, "UPDATE")
            row = db.execute(
                f"SELECT {self._exp_columns} FROM experimenters WHERE id=?", (user_id,)
            ).fetchone()
        return _experimenter(row)

    def remove_experimenter(self, name: str, *, move_to: str | None = None) -> dict[str, list]:
        """Remove a user. Like OMERO, one who owns data cannot be deleted: without
        ``move_to`` the data is listed and nothing changes; with it, their filesets,
        projects and datasets are given to that user (who must be in each group
        concerned, as OMERO's chown requires) and then the user is removed. Files on
        disk stay where they are. Returns what was moved, by kind."""
        with self._transaction() as db:
            user_id = self._experimenter_id(db, name)
            if user_id == ROOT_ID:
                raise AccessDenied("root cannot be removed")
            owned = self._owned(db, "owner_id", user_id)
            if any(owned.values()):
                if move_to is None:
                    raise AccessDenied(
                        f"{name!r} owns {_describe(owned)}: give them to another user with "
                        f"--move-to USER (nothing imported is deleted)"
                    )
                heir = self._experimenter_id(db, move_to)
                if heir == user_id:
                    raise UsageError("--move-to names the user being removed")
                groups = {g for (g,) in db.execute(_OWNED_GROUPS, (user_id,) * len(_OWNED_TABLES))}
                missing = [g for g in sorted(groups) if not self._is_member(db, g, heir)]
                if missing:
                    names = ", ".join(self._group_name(db, g) for g in missing)
                    raise AccessDenied(
                        f"{move_to!r} is not a member of {names}, where {name!r} owns data"
                    )
                for table in _OWNED_TABLES:
                    db.execute(f"UPDATE {table} SET owner_id=? WHERE owner_id=?", (heir, user_id))
                for fileset_id in owned["filesets"]:
                    self._event(db, "Fileset", fileset_id, "UPDATE")
            db.execute("DELETE FROM memberships WHERE experimenter_id=?", (user_id,))
            db.execute("DELETE FROM experimenters WHERE id=?", (user_id,))
            self._event(db, "Experimenter", user_id, "DELETE")
        return owned

    def modify_group(
        self, name: str, *, level: PermissionLevel | None = None, gid: int | None = None
    ) -> Group:
        if gid is not None:
            check_posix_id("gid", gid)
        with self._transaction() as db:
            group_id = self._group_id(db, name)
            if group_id == SYSTEM_GROUP_ID and level not in (None, PermissionLevel.PRIVATE):
                raise AccessDenied("the system group stays private")
            if gid is not None:
                self._gid_free(db, gid, other_than=group_id)
                db.execute("UPDATE groups SET gid=? WHERE id=?", (gid, group_id))
            if level is not None:
                db.execute("UPDATE groups SET level=? WHERE id=?", (level.label, group_id))
            self._event(db, "ExperimenterGroup", group_id, "UPDATE")
            row = db.execute("SELECT * FROM groups WHERE id=?", (group_id,)).fetchone()
        return _group(row)

    def remove_group(
        self, name: str, *, force: bool = False, move_to: str | None = None
    ) -> dict[str, list]:
        """Remove a group. Data in it is never deleted: without ``move_to`` a group holding
        filesets, projects or datasets stays (OMERO's chgrp: each owner must be a member of
        the new group). Members stay unless ``force``; then each loses the membership, and
        one whose default group it was gets their next group (refused if they have none)."""
        with self._transaction() as db:
            group_id = self._group_id(db, name)
            if group_id == SYSTEM_GROUP_ID:
                raise AccessDenied("the system group cannot be removed")
            held = self._owned(db, "group_id", group_id)
            if any(held.values()):
                if move_to is None:
                    raise AccessDenied(
                        f"group {name!r} holds {_describe(held)}: move them with "
                        "--move-to GROUP (nothing imported is deleted)"
                    )
                target = self._group_id(db, move_to)
                if target == group_id:
                    raise UsageError("--move-to names the group being removed")
                owners = {o for (o,) in db.execute(_GROUP_OWNERS, (group_id,) * len(_OWNED_TABLES))}
                missing = [o for o in sorted(owners) if not self._is_member(db, target, o)]
                if missing:
                    names = ", ".join(self._user_name(db, o) for o in missing)
                    raise AccessDenied(f"{names} must first be members of {move_to!r}")
                for table in _OWNED_TABLES:
                    db.execute(
                        f"UPDATE {table} SET group_id=? WHERE group_id=?", (target, group_id)
                    )
                for fileset_id in held["filesets"]:
                    self._event(db, "Fileset", fileset_id, "UPDATE")
            members = [
                e
                for (e,) in db.execute(
                    "SELECT experimenter_id FROM memberships WHERE group_id=? "
                    "ORDER BY experimenter_id",
                    (group_id,),
                )
            ]
            if members and not force:
                names = ", ".join(self._user_name(db, e) for e in members)
                raise AccessDenied(
                    f"group {name!r} has members ({names}): --force removes their memberships too"
                )
            for user_id in members:
                self._leave(db, group_id, user_id)
            db.execute("DELETE FROM groups WHERE id=?", (group_id,))
            self._event(db, "ExperimenterGroup", group_id, "DELETE")
        return held

    def remove_member(self, group: str, user: str) -> None:
        """Take ``user`` out of ``group``. Their data there stays theirs (and visible to
        them); a user keeps a default group, so leaving the default one makes their next
        group the default, and leaving their last group is refused."""
        with self._transaction() as db:
            group_id = self._group_id(db, group)
            user_id = self._experimenter_id(db, user)
            if not self._is_member(db, group_id, user_id):
                raise NotFound(f"{user!r} is not a member of {group!r}")
            if (group_id, user_id) == (SYSTEM_GROUP_ID, ROOT_ID):
                raise AccessDenied("root stays in the system group")
            self._leave(db, group_id, user_id)

    def _leave(self, db: sqlite3.Connection, group_id: int, user_id: int) -> None:
        (default,) = db.execute(
            "SELECT default_group_id FROM experimenters WHERE id=?", (user_id,)
        ).fetchone()
        if default == group_id:
            row = db.execute(
                "SELECT group_id FROM memberships WHERE experimenter_id=? AND group_id!=? "
                "ORDER BY group_id LIMIT 1",
                (user_id, group_id),
            ).fetchone()
            if row is None:
                raise AccessDenied(
                    f"{self._group_name(db, group_id)!r} is the only group of "
                    f"{self._user_name(db, user_id)!r}, and a user keeps a default group: "
                    "add them to another group first, or remove the user"
                )
            db.execute("UPDATE experimenters SET default_group_id=? WHERE id=?", (row[0], user_id))
        db.execute(
            "DELETE FROM memberships WHERE group_id=? AND experimenter_id=?", (group_id, user_id)
        )
        self._event(db, "GroupExperimenterMap", user_id, "DELETE")

    @staticmethod
    def _owned(db: sqlite3.Connection, column: str, value: int) -> dict[str, list]:
        return {
            table: [i for (i,) in db.execute(f"SELECT id FROM {table} WHERE {column}=?", (value,))]
            for table in _OWNED_TABLES
        }

    @staticmethod
    def _is_member(db: sqlite3.Connection, group_id: int, user_id: int) -> bool:
        return bool(
            db.execute(
                "SELECT 1 FROM memberships WHERE group_id=? AND experimenter_id=?",
                (group_id, user_id),
            ).fetchone()
        )

    @staticmethod
    def _group_name(db: sqlite3.Connection, group_id: int) -> str:
        return str(db.execute("SELECT name FROM groups WHERE id=?", (group_id,)).fetchone()[0])

    @staticmethod
    def _user_name(db: sqlite3.Connection, user_id: int) -> str:
        row = db.execute("SELECT name FROM experimenters WHERE id=?", (user_id,)).fetchone()
        return str(row[0])

    @staticmethod
    def _group_id(db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM groups WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no such group {name!r}")
        return int(row[0])

    @staticmethod
    def _experimenter_id(db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM experimenters WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no such user {name!r}")
        return int(row[0])

    def experimenter_by_name(self, name: str) -> Experimenter:
        rows = self._query(f"SELECT {self._exp_columns} FROM experimenters WHERE name=?", (name,))
        if not rows:
            raise NotFound(f"no such user {name!r}")
        return _experimenter(rows[0])

    def group_by_name(self, name: str) -> Group:
        rows = self._query("SELECT * FROM groups WHERE name=?", (name,))
        if not rows:
            raise NotFound(f"no such group {name!r}")
        return _group(rows[0])

    def group_by_id(self, group_id: int) -> Group:
        rows = self._query("SELECT * FROM groups WHERE id=?", (group_id,))
        if not rows:
            raise NotFound(f"no such group id {group_id}")
        return _group(rows[0])

    def experimenter_by_uid(self, uid: int) -> Experimenter | None:
        rows = self._query(f"SELECT {self._exp_columns} FROM experimenters WHERE uid=?", (uid,))
        return _experimenter(rows[0]) if rows else None

    def memberships_of(self, experimenter_id: int) -> list[Membership]:
        rows = self._query(
            "SELECT group_id, experimenter_id, owner FROM memberships WHERE experimenter_id=?",
            (experimenter_id,),
        )
        return [Membership(g, e, bool(o)) for g, e, o in rows]

    def used_gids(self) -> set[int]:
        return {gid for (gid,) in self._query("SELECT gid FROM groups")}

    # -- reading for the view ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Read everything at one consistent point (one read transaction)."""
        with self._read() as db:
            snap = self._read_meta(db)
            for fs in self._read_filesets(db, "", ()):
                snap.filesets[fs.id] = fs
            return snap

    def changes(self, since: int) -> Changes | None:
        """Events after ``since`` with the people, groups and containers as they are now
        and the filesets those events created; None when nothing happened."""
        with self._read() as db:
            (last,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
            if last <= since:
                return None
            events = [
                Event(*row)
                for row in db.execute(
                    "SELECT id, entity, entity_id, action FROM events WHERE id>? ORDER BY id",
                    (since,),
                )
            ]
            meta = self._read_meta(db)
            ids = sorted({e.entity_id for e in events if e.entity == "Fileset"})
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                where = f"WHERE f.id IN ({','.join('?' * len(part))})"
                for fs in self._read_filesets(db, where, tuple(part)):
                    meta.filesets[fs.id] = fs
            return Changes(events, meta)

    def snapshot_people(self) -> Snapshot:
        """Experimenters, groups, memberships and containers, without filesets."""
        with self._read() as db:
            return self._read_meta(db)

    def is_member(self, user: str, group: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM memberships m JOIN experimenters e ON e.id=m.experimenter_id "
            "JOIN groups g ON g.id=m.group_id WHERE e.name=? AND g.name=?",
            (user, group),
        )
        return bool(rows)

    def _read_meta(self, db: sqlite3.Connection) -> Snapshot:
        """People, groups and containers; a row that cannot be a record (written by hand
        or by an older omerofs) is skipped and logged once, never fatal (catalog/rows.py)."""
        (event_id,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        (max_fileset,) = db.execute("SELECT coalesce(max(id), 0) FROM filesets").fetchone()
        snap = Snapshot(event_id=event_id, max_fileset_id=max_fileset)
        for row in db.execute(f"SELECT {self._exp_columns} FROM experimenters"):
            self._keep(snap.experimenters, row, _experimenter, "user")
        for row in db.execute("SELECT id, name, level, gid FROM groups"):
            self._keep(snap.groups, row, _group, "group")
        snap.memberships = [
            Membership(g, e, bool(o))
            for g, e, o in db.execute("SELECT group_id, experimenter_id, owner FROM memberships")
        ]
        for row in db.execute("SELECT id, name, owner_id, group_id FROM projects"):
            snap.projects[row[0]] = Container(*row)
        for row in db.execute("SELECT id, name, owner_id, group_id FROM datasets"):
            snap.datasets[row[0]] = Container(*row)
        snap.project_dataset = list(
            db.execute("SELECT project_id, dataset_id FROM project_dataset")
        )
        if self._plates:
            for row in db.execute("SELECT id, name, owner_id, group_id FROM screens"):
                snap.screens[row[0]] = Container(*row)
            for row in db.execute("SELECT id, name, owner_id, group_id FROM plates"):
                snap.plates[row[0]] = Container(*row)
            snap.screen_plate = list(db.execute("SELECT screen_id, plate_id FROM screen_plate"))
        snap.binary_access = self._policy_of({g.name: g.id for g in snap.groups.values()})
        return clean_snapshot(snap, self.bad_rows)

    def _policy_of(self, group_ids: dict[str, int]) -> BinaryAccessPolicy:
        for name in self._policy_groups:
            if name not in group_ids and name not in self._unknown_policy_groups:
                self._unknown_policy_groups.add(name)  # logged once, not at every poll
                log.warning("[view] binary_access_groups names no group %r: ignored", name)
        return BinaryAccessPolicy.of(
            self._policy_server,
            {group_ids[n]: t for n, t in self._policy_groups.items() if n in group_ids},
        )

    def _keep(self, into: dict, row: tuple, make: Callable[[tuple], Any], kind: str) -> None:
        try:
            into[row[0]] = make(row)
        except (OmerofsError, TypeError, ValueError) as exc:
            self.bad_rows.skip(f"{kind} row {row!r}", str(exc))

    def _read_filesets(self, db: sqlite3.Connection, where: str, params: tuple) -> list[Fileset]:
        entries: dict[int, list[FilesetEntry]] = defaultdict(list)
        for row in db.execute(
            "SELECT e.fileset_id, e.idx, e.client_path, e.path, e.name, e.size, e.hash, "
            f"e.hasher, e.mimetype FROM fileset_entries e JOIN filesets f ON f.id=e.fileset_id "
            f"{where} ORDER BY e.fileset_id, e.idx",
            params,
        ):
            idx, client_path, path, name, size, sha, hasher, mimetype = row[1:]
            # a million entries share a few hashers, mimetypes and one prefix per fileset
            entries[row[0]].append(
                FilesetEntry(
                    idx,
                    client_path,
                    _intern(path),
                    name,
                    size,
                    sha,
                    _intern(hasher),
                    _intern(mimetype),
                )
            )
        datasets: dict[int, set[int]] = defaultdict(set)
        images: dict[int, int] = defaultdict(int)
        for fileset_id, dataset_id in db.execute(
            "SELECT i.fileset_id, di.dataset_id FROM images i JOIN filesets f ON f.id=i.fileset_id "
            f"LEFT JOIN dataset_image di ON di.image_id=i.id {where}",
            params,
        ):
            images[fileset_id] += 1
            if dataset_id is not None:
                datasets[fileset_id].add(dataset_id)
        return [
            Fileset(
                id=row[0],
                owner_id=row[1],
                group_id=row[2],
                template_prefix=_intern(row[3]),
                transfer=row[4],
                created=row[5],
                entries=tuple(entries[row[0]]),
                dataset_ids=tuple(sorted(datasets[row[0]])),
                image_count=images[row[0]],
                plate_id=row[6],
            )
            for row in db.execute(
                "SELECT f.id, f.owner_id, f.group_id, f.template_prefix, f.transfer, f.created, "
                f"{self._fs_plate} FROM filesets f {where} ORDER BY f.id",
                params,
            )
        ]

    def fileset(self, fileset_id: int) -> Fileset:
        with self._lock:
            found = self._read_filesets(self._db, "WHERE f.id=?", (fileset_id,))
        if not found:
            raise NotFound(f"no such fileset {fileset_id}")
        return found[0]

    def filesets_for(
        self,
        experimenter_id: int,
        groups: set[int] | None,
        max_id: int,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Fileset]:
        """Filesets with ``after`` < id <= ``max_id`` owned by the experimenter or in
        ``groups`` (None: all), in id order; at most ``limit`` of them."""
        who, params = "", ()
        if groups is not None:
            who = f" AND (f.owner_id = ? OR f.group_id IN ({','.join('?' * len(groups))}))"
            params = (experimenter_id, *sorted(groups))
        with self._read() as db:
            if limit is not None:  # the id range holding the next ``limit`` of them
                last = db.execute(
                    f"SELECT max(id) FROM (SELECT f.id FROM filesets f WHERE f.id > ? "
                    f"AND f.id <= ?{who} ORDER BY f.id LIMIT ?)",
                    (after, max_id, *params, limit),
                ).fetchone()[0]
                if last is None:
                    return []
                max_id = last
            return self._read_filesets(
                db, f"WHERE f.id > ? AND f.id <= ?{who}", (after, max_id, *params)
            )

    def fileset_by_prefix(self, prefix: str) -> Fileset | None:
        with self._lock:
            found = self._read_filesets(self._db, "WHERE f.template_prefix=?", (prefix,))
        return found[0] if found else None

    def images_of(self, fileset_id: int) -> list[ImageInfo]:
        rows = self._query(
            "SELECT series, name, size_x, size_y, size_z, size_c, size_t, pixel_type, "
            f"{self._image_physical} FROM images WHERE fileset_id=? ORDER BY series",
            (fileset_id,),
        )
        return [ImageInfo(*row) for row in rows]

    def plate_of(self, fileset_id: int) -> tuple[Container, PlateInfo, list[str]] | None:
        """The plate a fileset is (its record, its geometry with where each image lies,
        and the screens it is in), or None."""
        if not self._plates or self._fs_plate == "NULL":
            return None
        with self._read() as db:
            row = db.execute(
                "SELECT p.id, p.name, p.owner_id, p.group_id, p.rows, p.columns, p.fields "
                "FROM filesets f JOIN plates p ON p.id=f.plate_id WHERE f.id=?",
                (fileset_id,),
            ).fetchone()
            if row is None:
                return None
            wells = tuple(
                WellSample(*w)
                for w in db.execute(
                    "SELECT series, well_row, well_column, well_field FROM images "
                    "WHERE fileset_id=? AND well_row IS NOT NULL ORDER BY series",
                    (fileset_id,),
                )
            )
            screens = [
                name
                for (name,) in db.execute(
                    "SELECT s.name FROM screen_plate sp JOIN screens s ON s.id=sp.screen_id "
                    "WHERE sp.plate_id=? ORDER BY s.id",
                    (row[0],),
                )
            ]
        return (
            Container(*row[:4]),
            PlateInfo(row[1], row[4], row[5], row[6], wells),
            screens,
        )

    def binary_access(self, group_id: int) -> BinaryAccess:
        """``omero.policy.binary_access`` for a group's data, from ``[view]`` in
        omerofs.toml (the same rule as OMERO's: ``omerofs.policy``)."""
        names = {name: gid for gid, name in self._query("SELECT id, name FROM groups")}
        return self._policy_of(names).for_group(group_id)

    def last_event_id(self) -> int:
        return int(self._query("SELECT coalesce(max(id), 0) FROM events")[0][0])

    # -- writing an import ---------------------------------------------------------

    def record_import(
        self,
        record: ImportRecord,
        on_commit: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> Fileset:
        """Resolve/create the target, then record fileset, files and images atomically.

        ``on_commit(db, fileset_id)`` runs inside the same transaction (the ingest queue
        marks its job imported there, so a crash can never separate the two)."""
        with self._transaction() as db:
            member = db.execute(
                "SELECT 1 FROM memberships WHERE group_id=? AND experimenter_id=?",
                (record.group_id, record.owner_id),
            ).fetchone()
            if member is None:
                raise UsageError("the importing user is not a member of the import group")
            dataset_id = None
            if record.dataset_name is not None:
                dataset_id = self._resolve_target(db, record)
            plate_id = None
            if record.plate is not None:
                plate_id = self._create_plate(db, record)
            elif record.screen_name is not None:
                raise UsageError(
                    "a Screen target takes plates only, and this fileset is no plate "
                    "(use a Dataset target, or none)"
                )
            cur = db.execute(
                "INSERT INTO filesets (owner_id, group_id, template_prefix, transfer, created, "
                "plate_id) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.owner_id,
                    record.group_id,
                    record.template_prefix,
                    record.transfer,
                    record.created,
                    plate_id,
                ),
            )
            fileset_id = int(cur.lastrowid)
            db.executemany(
                "INSERT INTO fileset_entries VALUES (?, ?, ?, ?, ?, ?, ?, 'SHA1-160', ?)",
                [
                    (fileset_id, i, f.client_path, f.path, f.name, f.size, f.sha1, f.mimetype)
                    for i, f in enumerate(record.files)
                ],
            )
            wells = {w.series: w for w in record.plate.wells} if record.plate else {}
            for img in record.images:
                well = wells.get(img.series)
                cur = db.execute(
                    "INSERT INTO images (fileset_id, series, name, size_x, size_y, size_z, "
                    "size_c, size_t, pixel_type, well_row, well_column, well_field, "
                    "physical_x, physical_y, physical_z) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        fileset_id,
                        img.series,
                        img.name,
                        img.size_x,
                        img.size_y,
                        img.size_z,
                        img.size_c,
                        img.size_t,
                        img.pixel_type,
                        well.row if well else None,
                        well.column if well else None,
                        well.field if well else None,
                        img.physical_x,
                        img.physical_y,
                        img.physical_z,
                    ),
                )
                if dataset_id is not None:
                    db.execute(
                        "INSERT INTO dataset_image VALUES (?, ?)", (dataset_id, cur.lastrowid)
                    )
            self._event(db, "Fileset", fileset_id, "INSERT")
            if on_commit is not None:
                on_commit(db, fileset_id)
            return self._read_filesets(db, "WHERE f.id=?", (fileset_id,))[0]

    def _create_plate(self, db: sqlite3.Connection, record: ImportRecord) -> int:
        """A new Plate for the imported fileset (OMERO makes one per plate import), linked
        to the newest Screen of that name of the user in the group, created when missing
        (``-T Screen:name:S``, as ``ModelImportTarget``). The link travels with the Plate
        event: a view learns both from one snapshot."""
        plate = record.plate
        assert plate is not None
        now = time.time()
        owner, group = record.owner_id, record.group_id
        cur = db.execute(
            "INSERT INTO plates (name, owner_id, group_id, created, rows, columns, fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (plate.name, owner, group, now, plate.rows, plate.columns, plate.fields),
        )
        plate_id = int(cur.lastrowid)
        if record.screen_name is not None:
            row = db.execute(
                "SELECT id FROM screens WHERE name=? AND owner_id=? AND group_id=? "
                "ORDER BY id DESC LIMIT 1",
                (record.screen_name, owner, group),
            ).fetchone()
            if row is None:
                cur = db.execute(
                    "INSERT INTO screens (name, owner_id, group_id, created) VALUES (?, ?, ?, ?)",
                    (record.screen_name, owner, group, now),
                )
                row = (int(cur.lastrowid),)
                self._event(db, "Screen", row[0], "INSERT")
            db.execute("INSERT INTO screen_plate VALUES (?, ?)", (row[0], plate_id))
        self._event(db, "Plate", plate_id, "INSERT")
        return plate_id

    def _resolve_target(self, db: sqlite3.Connection, record: ImportRecord) -> int:
        """Find the newest matching Project/Dataset of the user in the group, or create it
        (OMERO's ``-T`` with the default ``+`` qualifier)."""
        now = time.time()
        owner, group = record.owner_id, record.group_id

        def newest(table: str, name: str, extra: str = "", params: tuple = ()) -> int | None:
            row = db.execute(
                f"SELECT t.id FROM {table} t {extra} WHERE t.name=? AND t.owner_id=? "
                "AND t.group_id=? ORDER BY t.id DESC LIMIT 1",
                (*params, name, owner, group),
            ).fetchone()
            return None if row is None else int(row[0])

        def create(table: str, entity: str, name: str) -> int:
            cur = db.execute(
                f"INSERT INTO {table} (name, owner_id, group_id, created) VALUES (?, ?, ?, ?)",
                (name, owner, group, now),
            )
            self._event(db, entity, int(cur.lastrowid), "INSERT")
            return int(cur.lastrowid)

        assert record.dataset_name is not None
        if record.project_name is None:
            found = newest("datasets", record.dataset_name)
            return (
                found if found is not None else create("datasets", "Dataset", record.dataset_name)
            )
        project_id = newest("projects", record.project_name)
        if project_id is None:
            project_id = create("projects", "Project", record.project_name)
        found = newest(
            "datasets",
            record.dataset_name,
            "JOIN project_dataset pd ON pd.dataset_id=t.id AND pd.project_id=?",
            (project_id,),
        )
        if found is not None:
            return found
        dataset_id = create("datasets", "Dataset", record.dataset_name)
        db.execute("INSERT INTO project_dataset VALUES (?, ?)", (project_id, dataset_id))
        return dataset_id


# what a user owns and a group holds (a writable open has created every one of them)
_OWNED_TABLES = ("filesets", "projects", "datasets", "screens", "plates")
_OWNED_GROUPS = " UNION ".join(f"SELECT group_id FROM {t} WHERE owner_id=?" for t in _OWNED_TABLES)
_GROUP_OWNERS = " UNION ".join(f"SELECT owner_id FROM {t} WHERE group_id=?" for t in _OWNED_TABLES)


def _describe(owned: dict[str, list]) -> str:
    """``filesets 3, 7; 1 project; 2 datasets`` — ids of filesets, counts of the rest."""
    parts = []
    if owned["filesets"]:
        ids = owned["filesets"]
        shown = ", ".join(map(str, ids[:20])) + (
            f" and {len(ids) - 20} more" if len(ids) > 20 else ""
        )
        parts.append(f"fileset{'s' if len(ids) > 1 else ''} {shown}")
    for kind in ("projects", "datasets", "screens", "plates"):
        if n := len(owned.get(kind, ())):
            parts.append(f"{n} {kind if n > 1 else kind[:-1]}")
    return "; ".join(parts)


def _intern(value: Any) -> Any:
    """Interned if a string; anything else (a hand-written row) is left for the checks of
    catalog/rows.py to reject, instead of failing the whole query here."""
    return intern(value) if type(value) is str else value


def _experimenter(row: tuple) -> Experimenter:
    return Experimenter(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


def _group(row: tuple) -> Group:
    if not isinstance(row[2], str):
        raise UsageError(f"permission level {row[2]!r} is not a name")
    return Group(row[0], row[1], PermissionLevel.parse(row[2]), row[3])
