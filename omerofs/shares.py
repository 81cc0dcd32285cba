"""Samba front door: an smb.conf that re-exports the ingest mount and the view.

Why a generated file: the settings that make Windows clients work on omerofs are not
Samba's defaults and are easy to get subtly wrong (docs/shares.md says why each one is
there). Each Windows user logs in as the OMERO user of the same name, and smbd then
works on the mounts with that user's uid (no ``force user``), so the kernel checks the
same modes as for local writers and omerofs imports as the writer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from omerofs.catalog.protocol import Catalog, Experimenter
from omerofs.config import RepoConfig
from omerofs.errors import UsageError

INGEST_SHARE = "omerofs-ingest"
VIEW_SHARE = "omerofs-view"
# A name Samba, the passdb and a path segment all take as it is.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

GLOBAL = {
    "server role": "standalone server",
    "security": "user",
    "passdb backend": "tdbsam",
    "map to guest": "never",
    "server min protocol": "SMB2_10",
    "load printers": "no",
    "printing": "bsd",
    "printcap name": "/dev/null",
    "disable spoolss": "yes",
    # FUSE has no kernel leases or share modes to offer; Samba keeps both in its tdbs.
    "kernel oplocks": "no",
    "kernel share modes": "no",
    "unix extensions": "no",
}

# Windows metadata on the ingest mount: DOS attributes in user.DOSATTRIB, alternate data
# streams in user.DosStream.*, NT ACLs in security.NTACL: all kept on the staging file
# (needs readable xattrs: [ingest] xattrs = "auto" on Linux >= 5.11, or true).
INGEST = {
    "read only": "no",
    "vfs objects": "acl_xattr streams_xattr",
    "ea support": "yes",
    "store dos attributes": "yes",
    "map acl inherit": "yes",
    "nt acl support": "yes",
    # NT ACLs live only in security.NTACL: the mount has no POSIX ACLs to map them to
    # (each new file would log "sys_acl_set_file ... Operation not supported"), and the
    # unix modes stay what the kernel checks (each user's directory is 0700). Samba then
    # uses create mask 0666 / directory mask 0777 inside it, and keeps DOS attributes
    # only in user.DOSATTRIB.
    "acl_xattr:ignore system acls": "yes",
    # flush = fsync on the mount, whose errors (ENOSPC, EIO) reach the client
    "strict sync": "yes",
    # Case-insensitive lookups of a new name make smbd scan the whole directory, and
    # every entry listed through FUSE costs a stat: quadratic in the files of a run
    # directory (2,000 puts at 0.17 of a plain share). Names are kept as written.
    "case sensitive": "yes",
}

# The view is read-only and answers no xattrs (ENOSYS): Samba must not look for any.
VIEW = {
    "read only": "yes",
    "vfs objects": "",
    "ea support": "no",
    "store dos attributes": "no",
    "nt acl support": "no",
    "map archive": "no",
}


_XATTRS_OFF = [
    "# NOTE: [ingest] xattrs is false in omerofs.toml: set it to true (or start the",
    "# ingest mount with --xattrs), or Samba cannot read back DOS attributes, streams",
    "# and ACLs and logs an error for every file.",
]


def share_users(catalog: Catalog) -> list[Experimenter]:
    """The catalog's users who can log in to the shares: a real uid, a plain name."""
    people = catalog.snapshot_people().experimenters.values()
    users = [e for e in people if e.uid > 0 and _SAFE_NAME.match(e.name)]
    return sorted(users, key=lambda e: e.name)


def _section(name: str, keys: Mapping[str, str]) -> list[str]:
    return [f"[{name}]", *(f"   {key} = {value}".rstrip() for key, value in keys.items()), ""]


def smb_conf(
    config: RepoConfig,
    catalog: Catalog,
    ingest_mount: Path | None,
    view_mount: Path | None,
    *,
    case_insensitive: bool = False,
    global_overrides: Mapping[str, str] | None = None,
) -> str:
    """An smb.conf serving ``ingest_mount`` and ``view_mount`` (either may be None) as
    one share each, every user in their own directory of it (``path = MOUNT/%u``).
    ``case_insensitive``: Windows' own name matching on the ingest share, at the price of
    a directory scan per new file (docs/shares.md)."""
    if ingest_mount is None and view_mount is None:
        raise UsageError("no mount to share: give the ingest mount, the view, or both")
    users = share_users(catalog)
    if not users:
        raise UsageError("the catalog has no users with a uid to share for")
    valid = " ".join(e.name for e in users)
    lines = [
        f"# Samba front door for the omerofs repository {config.root}",
        "# (omerofs shares smb-conf; docs/shares.md explains every setting).",
        "# Each user below needs a unix account with the catalog's uid and a Samba",
        "# password: useradd -u UID NAME; smbpasswd -a NAME.",
        "# users: " + ", ".join(f"{e.name}={e.uid}" for e in users),
        *(_XATTRS_OFF if ingest_mount is not None and config.ingest_xattrs is False else []),
        "",
        *_section("global", {**GLOBAL, **(global_overrides or {})}),
    ]
    if ingest_mount is not None:
        keys = {
            "comment": "omerofs ingest: what you write here is imported into OMERO as you",
            "path": f"{Path(ingest_mount).absolute()}/%u",
            "valid users": valid,
            **INGEST,
        }
        if case_insensitive:
            keys["case sensitive"] = "auto"
        lines += _section(INGEST_SHARE, keys)
    if view_mount is not None:
        keys = {
            "comment": "omerofs view: the data you may see, read-only",
            "path": f"{Path(view_mount).absolute()}/%u",
            "valid users": valid,
            **VIEW,
        }
        lines += _section(VIEW_SHARE, keys)
    return "\n".join(lines)
