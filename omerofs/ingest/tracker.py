"""Close tracking: when is a fileset complete?

A fileset is closed when no handle is open anywhere in it and nothing in it changed for
the settle time, or at once on an explicit commit. A run directory (a directory fileset)
has its own, longer settle time: acquisitions write one file every few minutes into it,
while a single file is done when its writer closes it. The tracker is pure bookkeeping with
an injected clock, so its rules are tested without a mount.
"""

from __future__ import annotations

from collections import Counter

from sortedcontainers import SortedList

from omerofs.ingest.paths import FilesetKey


class CloseTracker:
    def __init__(self, settle: float, run_settle: float | None = None) -> None:
        self.settle = settle
        self.run_settle = settle if run_settle is None else run_settle
        self._handles: Counter[FilesetKey] = Counter()
        self._deadline: dict[FilesetKey, float] = {}
        self._due = SortedList()  # (deadline, sequence, key)
        self._seq = 0

    def opened(self, key: FilesetKey) -> None:
        self._handles[key] += 1
        self._deadline.pop(key, None)

    def released(self, key: FilesetKey, now: float) -> None:
        if self._handles[key] > 0:
            self._handles[key] -= 1
        if self._handles[key] == 0:
            del self._handles[key]
            self._arm(key, now + self.settle_for(key))

    def settle_for(self, key: FilesetKey) -> float:
        return self.run_settle if key.is_dir else self.settle

    def changed(self, key: FilesetKey, now: float) -> None:
        """Something in the fileset changed (created, renamed, truncated, written...)."""
        if self._handles[key] == 0:
            self._arm(key, now + self.settle_for(key))

    def commit(self, key: FilesetKey, now: float) -> bool:
        """Close at once; refused (False) while a handle is open."""
        if self._handles[key] > 0:
            return False
        self._arm(key, now)
        return True

    def forget(self, key: FilesetKey) -> None:
        self._deadline.pop(key, None)

    def is_open(self, key: FilesetKey) -> bool:
        return self._handles[key] > 0

    def pending(self, key: FilesetKey) -> bool:
        return key in self._deadline

    def live(self) -> dict[FilesetKey, tuple[str, float | None]]:
        """Filesets with a handle open (``open``) or waiting out their settle time
        (``settling``, with the deadline): what only the daemon knows (ingest/live.py)."""
        found: dict[FilesetKey, tuple[str, float | None]] = {
            key: ("settling", deadline) for key, deadline in self._deadline.items()
        }
        found.update((key, ("open", None)) for key in self._handles)
        return found

    def next_deadline(self) -> float | None:
        while self._due:
            deadline, _, key = self._due[0]
            if self._deadline.get(key) == deadline:
                return deadline
            self._due.pop(0)  # superseded
        return None

    def pop_due(self, now: float) -> list[FilesetKey]:
        """Filesets whose settle time has passed, oldest first."""
        ready = []
        while self._due and self._due[0][0] <= now:
            deadline, _, key = self._due.pop(0)
            if self._deadline.get(key) == deadline and self._handles[key] == 0:
                del self._deadline[key]
                ready.append(key)
        return ready

    def _arm(self, key: FilesetKey, deadline: float) -> None:
        self._deadline[key] = deadline
        self._seq += 1
        self._due.add((deadline, self._seq, key))
