"""The report a user finds beside a fileset in the ingest mount, ``NAME.import-error.txt``:
what went wrong (failed), what is missing (incomplete), when omerofs tries again
(retrying), that nobody can tell whether it was imported (unknown: the server took it
over and could not be asked), or that it was imported with a warning (the server saved
the images, then a later step failed), and what to do. One file name for all of them, so
users look in one place. Ignored by imports; replaced atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from omerofs.ingest.paths import FilesetKey
from omerofs.ingest.queue import Job

log = logging.getLogger(__name__)


def write(
    staging: Path,
    job: Job,
    error: str,
    kind: str = "failed",
    next_try: float | None = None,
    fileset_id: int | None = None,
) -> None:
    """``kind``: failed, incomplete, retrying, unknown or warning (``fileset_id`` the
    imported fileset)."""
    key = job.key
    path = staging / key.error_report
    when = datetime.now().isoformat(timespec="seconds")
    if kind == "incomplete":
        text = (
            f"omerofs is holding {key.root}: it looks incomplete\n"
            f"when: {when} (job {job.id})\n"
            f"why: {error}\n\n"
            "Nothing was imported and nothing was deleted. If a writer was cut off,\n"
            "write the file again (it is checked again once it settles). To import it\n"
            "as it is, commit it:\n"
            f"  setfattr -n user.omerofs.commit -v 1 '{key.name}'\n"
            f"or create a file '{key.name}.done' beside it.\n"
        )
    elif kind == "retrying":
        at = datetime.fromtimestamp(next_try or time.time()).isoformat(timespec="seconds")
        text = (
            f"omerofs could not import {key.root} yet\n"
            f"when: {when} (job {job.id}, attempt {job.attempts + 1})\n"
            f"error: {error}\n\n"
            "This is expected to pass (a server, disk or lock that is busy or down):\n"
            f"omerofs tries again by itself at {at}. Your files are kept as they are.\n"
        )
    elif kind == "unknown":
        text = (
            f"omerofs cannot tell whether {key.root} was imported\n"
            f"when: {when} (job {job.id}, attempt {job.attempts + 1})\n"
            f"error: {error}\n\n"
            "The OMERO server took this import over and could not be asked how it ended:\n"
            "it may be in OMERO already. Nothing was removed, and omerofs does not retry it\n"
            "by itself, because that could import it twice.\n\n"
            "Check in OMERO (or ask an admin) whether the images arrived. Only if they did\n"
            "not, retry with:\n"
            f"  setfattr -n user.omerofs.commit -v 1 '{key.name}'\n"
            f"or create a file '{key.name}.done' beside it.\n"
        )
    elif kind == "warning":
        text = (
            f"omerofs imported {key.root}, with a warning\n"
            f"when: {when} (job {job.id}, fileset {fileset_id})\n"
            f"warning: {error}\n\n"
            "The images are imported; a step the server runs after saving them (thumbnails,\n"
            "pixel statistics) reported an error, so some may show no thumbnail or no\n"
            "statistics until the server makes them again. Do not import it again: it is\n"
            "there, and a second import would be a second copy. Tell an admin if this\n"
            "happens often.\n"
        )
    else:
        text = (
            f"omerofs could not import {key.root}\n"
            f"when: {when} (job {job.id}, attempt {job.attempts + 1})\n"
            f"error: {error}\n\n"
            "Your files were left exactly as they were. Fix the cause, then either change or\n"
            "replace a file (it is retried once it settles) or retry at once with:\n"
            f"  setfattr -n user.omerofs.commit -v 1 '{key.name}'\n"
            "State: getfattr -d -m user.omerofs FILE, or ask an admin for `omerofs status`.\n"
        )
    try:
        tmp = path.with_name("." + path.name + ".new")
        tmp.write_text(text)
        st = os.stat(path.parent)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write error report %s: %s", path, exc)


def remove(staging: Path, key: FilesetKey) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging / key.error_report)
