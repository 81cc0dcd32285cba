"""The acquisition rules of the ingest mount (``[ingest]`` keys beyond transfer, settle,
concurrency, xattrs, staging and passthrough, which config.py reads itself).

Parsed here, beside the code that uses them, so config.py only passes the section on;
every bad value is one clear message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omerofs.errors import UsageError

DUPLICATE_POLICIES = ("link", "skip", "import")


@dataclass(frozen=True)
class IngestRules:
    # Seconds a run directory (<Project>/<Dataset>/<run>/) must stay closed and unchanged:
    # acquisitions write one file every few minutes, a single file is done when closed.
    run_settle: float = 300.0
    # Close only on an explicit commit (xattr, marker file, `omerofs commit`): for the
    # whole mount, or for these users; a `.omerofs-commit-only` file does it per directory.
    commit_only: bool = False
    commit_only_users: tuple[str, ...] = ()
    # Seconds the names of an *_rm import stay in place after it: a writer coming back
    # to append or to add a file finds its directory and file, never "not found".
    linger: float = 300.0
    # Backoff of imports that failed for a passing reason (server down, disk full,
    # catalog locked): first wait, doubled per attempt up to the maximum.
    retry_initial: float = 5.0
    retry_max: float = 900.0
    # The same content (size + SHA1) arriving again at the same path for the same user:
    # "link" (not imported again; recorded as the earlier fileset), "skip" (not imported
    # again, recorded as a duplicate only) or "import" (a second fileset).
    duplicates: str = "link"

    @classmethod
    def parse(cls, section: dict[str, Any], where: Path) -> IngestRules:
        try:
            rules = cls(
                run_settle=float(section.get("run_settle", cls.run_settle)),
                commit_only=_bool(section.get("commit_only", cls.commit_only), "commit_only"),
                commit_only_users=tuple(
                    str(u) for u in _list(section.get("commit_only_users", []), "commit_only_users")
                ),
                linger=float(section.get("linger", cls.linger)),
                retry_initial=float(section.get("retry_initial", cls.retry_initial)),
                retry_max=float(section.get("retry_max", cls.retry_max)),
                duplicates=str(section.get("duplicates", cls.duplicates)),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: [ingest] {exc}") from None
        for name in ("run_settle", "linger", "retry_initial", "retry_max"):
            if getattr(rules, name) < 0:
                raise UsageError(f"{where}: [ingest] {name} must be >= 0")
        if rules.retry_max < rules.retry_initial:
            raise UsageError(f"{where}: [ingest] retry_max must be >= retry_initial")
        if rules.duplicates not in DUPLICATE_POLICIES:
            raise UsageError(
                f"{where}: [ingest] duplicates must be one of {', '.join(DUPLICATE_POLICIES)}"
            )
        return rules

    def with_overrides(self, **changes: Any) -> IngestRules:
        """The rules with command-line values (those not None) put over the file's."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` (1 = the first retry)."""
        return min(self.retry_max, self.retry_initial * 2 ** max(0, attempts - 1))


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of user names")
    return value
