"""What to do when an OMERO import fails after the hand-off (``verifyUpload``).

From ``verifyUpload`` on, the server imports on its own: ``ManagedImportRequestI``
commits the Images in step 0, in their own transaction, and steps 1–2 (pixel
statistics, thumbnails) can still fail after it, so an ``ERR`` response, a
``LockTimeout`` or a lost connection does not mean nothing landed. Removing the placed
files then would leave OMERO Images pointing at deleted files — data loss. So after the
hand-off a placed file is never removed on a guess:

- the fileset has Images: the import landed; keep everything and report the error as a
  warning on the imported fileset;
- it has none: delete the Fileset on the server (``Delete2`` as the importing user, and
  wait for it), and only then remove our links and copies;
- the server cannot be asked (or the delete fails): keep everything and say the outcome
  is unknown. The sources are never touched here (``*_rm`` removal happens only after a
  successful import), so nothing is lost either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omerofs.catalog.protocol import FilesetWithWarning, with_warning
from omerofs.errors import ImportFailed, ImportOutcomeUnknown

__all__ = ["FilesetWithWarning", "ImportOutcomeUnknown", "settle_failed_handoff", "with_warning"]

log = logging.getLogger(__name__)


def settle_failed_handoff(
    where: str,
    error: str,
    fileset_id: int,
    placed: list[Path],
    image_count: Callable[[], int],
    delete_fileset: Callable[[], None],
    remove: Callable[[list[Path]], None],
) -> str:
    """Decide the fate of an import that failed after the hand-off.

    Returns the warning when the import landed (the caller reports the fileset as
    imported); raises ``ImportFailed`` once the server's fileset is deleted and our files
    removed; raises ``ImportOutcomeUnknown`` (keeping every file) when the server cannot
    tell or cannot delete."""
    try:
        images = image_count()
    except Exception as exc:
        raise ImportOutcomeUnknown(
            f"{where}: {error}; the server could not be asked whether fileset {fileset_id} "
            f"was imported ({exc}); nothing was removed — check it in OMERO before retrying"
        ) from None
    if images:
        warning = f"imported with an error reported after its images were saved: {error}"
        log.warning("%s: fileset %d %s", where, fileset_id, warning)
        return warning
    try:
        delete_fileset()
    except Exception as exc:
        raise ImportOutcomeUnknown(
            f"{where}: {error}; fileset {fileset_id} has no images but the server did not "
            f"delete it ({exc}); nothing was removed — check it in OMERO before retrying"
        ) from None
    remove(placed)
    raise ImportFailed(f"{where}: {error}")
