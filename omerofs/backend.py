"""The backend a repository's config names: its catalog and its import writer, opened
together so every command and daemon treats the embedded default and an OMERO server
alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omerofs.backends.local import local_importer
from omerofs.backends.local.catalog import LocalCatalog
from omerofs.catalog.protocol import Catalog
from omerofs.config import RepoConfig
from omerofs.imports.importer import Importer
from omerofs.policy import parse_groups


@dataclass
class Backend:
    config: RepoConfig
    catalog: Catalog
    importer: Importer
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def open_backend(config: RepoConfig) -> Backend:
    if config.omero is None:
        catalog = LocalCatalog(
            config.catalog_path,
            binary_access=config.binary_access,
            binary_access_groups=parse_groups(config.binary_access_groups),
        )
        return Backend(config, catalog, local_importer(config, catalog), [catalog.close])
    # omero-py is only needed (and only imported) when the repository uses a server
    from omerofs.backends.omero.cache import CatalogCache
    from omerofs.backends.omero.catalog import OmeroCatalog
    from omerofs.backends.omero.writer import OmeroWriter
    from omerofs.catalog.sqlite import Database

    # the repository's own SQLite: the ingest queue, and the server's last known state
    # (so the view and the ingest mount start while the server is down)
    local_db = Database(config.catalog_path, "repository state")
    omero_catalog = OmeroCatalog(config.omero, cache=CatalogCache(local_db))
    importer = Importer(config, omero_catalog, OmeroWriter(omero_catalog, local_db))
    return Backend(config, omero_catalog, importer, [local_db.close, omero_catalog.close])
