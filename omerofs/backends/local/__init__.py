"""The embedded backend: an SQLite catalog and a ManagedRepository written by omerofs."""

from __future__ import annotations

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.backends.local.writer import LocalWriter
from omerofs.config import RepoConfig
from omerofs.imports.importer import Importer


def local_importer(config: RepoConfig, catalog: LocalCatalog) -> Importer:
    """The shared import rules with the embedded backend's writer."""
    return Importer(config, catalog, LocalWriter(config, catalog))
