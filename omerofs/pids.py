"""Whether a process still runs, from its pid alone: import directories and live rows
carry their writer's pid, and a reader must tell a running writer from a dead one."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` runs, also when it is another user's (EPERM: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
