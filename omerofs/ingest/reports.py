"""The report a user finds beside a fileset in the ingest mount, ``NAME.import-error.txt``:
what went wrong (failed), what is missing (incomplete) or when omerofs tries again
(retrying), and what to do. Ignored by imports; replaced atomically."""

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
    staging: Path, job: Job, error: str, kind: str = "failed", next_try: float | None = None
) -> None:
    """``kind``: failed, incomplete or retrying."""
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
