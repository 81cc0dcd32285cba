"""The repository on disk belongs to omerofs: users reach originals and staged files only
through the mounts, never through the repository's own directories.

``ManagedRepository/`` (embedded backend) and the staging area are owned by the account
that runs the daemons (root) with mode 0700, as OMERO's ManagedRepository belongs to the
server's account. The mounts still show each user their own files: the view maps owners
from the catalog, the ingest mount shows its root as 0755 and each user's directory as
theirs. Imported originals themselves are sealed read-only (imports/transfer.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from omerofs.config import RepoConfig
from omerofs.errors import MountError

PRIVATE_DIR_MODE = 0o700


def private_dirs(config: RepoConfig) -> list[Path]:
    """The directories no user may enter on the host. An OMERO server's ManagedRepository
    is the server's, not ours: its owner sets its modes."""
    dirs = [config.staging_dir]
    if config.omero is None:
        dirs.insert(0, config.managed_dir)
    return dirs


def secure_dir(directory: Path) -> list[str]:
    """Make ``directory`` (created if missing, its parent must exist) private."""
    try:
        directory.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise MountError(f"{directory}: its parent directory does not exist") from None
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{directory} is not a directory")
    changed = []
    uid, gid = os.geteuid(), os.getegid()
    try:
        if uid == 0 and (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(directory, uid, gid, follow_symlinks=False)
            changed.append(f"{directory}: owner {st.st_uid}:{st.st_gid} -> {uid}:{gid}")
        if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
            os.chmod(directory, PRIVATE_DIR_MODE)
            changed.append(
                f"{directory}: mode {stat.S_IMODE(st.st_mode):04o} -> {PRIVATE_DIR_MODE:04o} "
                "(only the mounts give users access)"
            )
    except PermissionError:
        raise MountError(
            f"{directory}: cannot make it private (owned by uid {st.st_uid}); "
            "run the daemon as root"
        ) from None
    return changed
