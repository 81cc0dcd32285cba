"""The ``[omero]`` section of ``omerofs.toml``: which server, as whom, and where its
ManagedRepository is mounted locally. Parsed without importing omero-py, so a repository
using the embedded backend never needs it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omerofs.errors import UsageError
from omerofs.tomlfile import read_toml


@dataclass(frozen=True)
class OmeroSettings:
    host: str
    port: int
    credentials: Path  # TOML with username/password, readable by root only
    managed_dir: Path  # the server's ManagedRepository as mounted on this machine
    idmap: Path | None = None  # overrides of the name-based uid/gid mapping
    page_size: int = 5000  # rows per projection query
    reconcile_interval: float = 3600.0  # seconds between full re-reads of the catalog
    import_timeout: float = 3600.0  # seconds to wait for the server to finish an import
    event_overlap: int = 10_000  # EventLog ids re-read below the last one (late commits)

    @classmethod
    def parse(cls, section: dict[str, Any], where: Path) -> OmeroSettings:
        def need(key: str) -> Any:
            if key not in section:
                raise UsageError(f"{where}: [omero] needs {key!r}")
            return section[key]

        settings = cls(
            host=str(need("host")),
            port=int(section.get("port", 4064)),
            credentials=Path(str(need("credentials"))),
            managed_dir=Path(str(need("managed_dir"))),
            idmap=Path(str(section["idmap"])) if section.get("idmap") else None,
            page_size=int(section.get("page_size", 5000)),
            reconcile_interval=float(section.get("reconcile_interval", 3600)),
            import_timeout=float(section.get("import_timeout", 3600)),
            event_overlap=int(section.get("event_overlap", 10_000)),
        )
        if not 0 < settings.port < 65536 or settings.page_size < 1 or settings.event_overlap < 0:
            raise UsageError(f"{where}: [omero] port, page_size or event_overlap out of range")
        if not settings.managed_dir.is_absolute():
            raise UsageError(f"{where}: [omero] managed_dir must be an absolute path")
        return settings

    def login(self) -> tuple[str, str]:
        """Username and password of the service account, from a file only root may read
        (refused otherwise, like ssh refuses a readable private key)."""
        path = self.credentials
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UsageError(f"cannot read OMERO credentials {path}: {exc.strerror}") from None
        data = read_toml(path, "OMERO credentials")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"{path}: OMERO credentials must be private (chmod 600)")
        try:
            return str(data["username"]), str(data["password"])
        except KeyError as exc:
            raise UsageError(f"{path}: missing {exc.args[0]!r}") from None
