"""The repository directory and its ``omerofs.toml``.

A repository is a directory holding ``omerofs.toml``, the SQLite catalog
``catalog.sqlite`` and ``ManagedRepository/`` laid out as OMERO lays it out.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from omerofs.catalog.omero.settings import OmeroSettings
from omerofs.errors import AlreadyExists, NotFound, UsageError
from omerofs.ingest.settings import IngestRules
from omerofs.ingest.transfer import MODES as TRANSFER_MODES
from omerofs.template import DEFAULT_TEMPLATE, validate_template

CONFIG_NAME = "omerofs.toml"
CATALOG_NAME = "catalog.sqlite"
MANAGED_NAME = "ManagedRepository"

_DEFAULT_TOML = """\
# omerofs repository configuration
[repository]
# "local": the embedded SQLite catalog beside this file.
# "omero": an OMERO server, configured in an [omero] section (see docs/omero.md).
backend = "{backend}"
# OMERO's omero.fs.repo.path: directories before // belong to root, after it to the user.
template = "{template}"

[import]
# Transfer mode used when `omerofs import` is given none.
transfer = "upload"

[ingest]
# How closed filesets are imported from the ingest mount (ln_rm: moved in, no copy).
transfer = "ln_rm"
# Seconds a fileset must stay closed and unchanged before it is imported.
settle = 5
# Imports running at once.
concurrency = 2
# Readable user.omerofs.* xattrs (state, error). Off by default: while getxattr works
# the kernel asks the daemon for security.capability before EVERY write(2), which makes
# 4 KiB writes ~12x and 1 MiB writes ~1.3x slower. State is in `omerofs status` and
# NAME.import-error.txt; commit/retry by setxattr work either way.
xattrs = false
# Where written files wait for their import (default: staging/ beside this file). For
# ln/ln_rm it must be on the ManagedRepository's filesystem (with an OMERO backend: the
# filesystem the server's ManagedRepository is mounted from).
# staging = "/data/omero/omerofs-staging"
# Kernel passthrough (Linux >= 6.9, daemon as root): open files are written and read by
# the kernel directly, at native speed; the daemon still sees every open and close.
passthrough = true

[view]
# Seconds the kernel may cache names and attributes of the read-only view.
cache_timeout = 300
# Seconds between checks of the catalog for changes (new imports, new members).
refresh_interval = 0.25
# Readahead for the mount, in KiB (the kernel default of 128 halves streaming reads).
read_ahead_kb = 1024
# Kernel passthrough (Linux >= 6.9, daemon as root): reads of opened originals go from
# the kernel straight to ManagedRepository, at native speed.
passthrough = true
"""


@dataclass(frozen=True)
class RepoConfig:
    root: Path
    backend: str
    template: str
    transfer: str
    cache_timeout: float
    refresh_interval: float
    read_ahead_kb: int
    ingest_transfer: str = "ln_rm"
    settle: float = 5.0
    concurrency: int = 2
    ingest_xattrs: bool = False
    omero: OmeroSettings | None = None
    ingest_staging: Path | None = None
    view_passthrough: bool = True
    ingest_passthrough: bool = True
    ingest_rules: IngestRules = IngestRules()  # the other [ingest] keys: ingest/settings.py

    @property
    def catalog_path(self) -> Path:
        """The embedded catalog, or with an OMERO backend only the ingest queue."""
        return self.root / CATALOG_NAME

    @property
    def managed_dir(self) -> Path:
        if self.omero is not None:
            return self.omero.managed_dir
        return self.root / MANAGED_NAME

    @property
    def staging_dir(self) -> Path:
        """Where the ingest mount keeps written files: by default inside the repository,
        on the same filesystem as ManagedRepository, so ln/ln_rm imports never copy a
        byte; ``[ingest] staging`` moves it (an OMERO server's repository is elsewhere)."""
        return self.ingest_staging or self.root / "staging"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


def init_repo(
    root: Path, template: str = DEFAULT_TEMPLATE, omero: dict[str, str] | None = None
) -> RepoConfig:
    """Create a new, empty repository directory (refusing to touch an existing one).
    With ``omero`` (the [omero] keys), the catalog is that server's."""
    validate_template(template)
    root = root.absolute()
    if (root / CONFIG_NAME).exists():
        raise AlreadyExists(f"{root} is already an omerofs repository")
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    (root / MANAGED_NAME).mkdir(exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    tmp = root / (CONFIG_NAME + ".tmp")
    text = _DEFAULT_TOML.format(template=template, backend="omero" if omero else "local")
    if omero:
        text += "\n[omero]\n" + "".join(
            f"{key} = {_toml_value(value)}\n" for key, value in omero.items()
        )
    tmp.write_text(text)
    os.replace(tmp, root / CONFIG_NAME)
    return load_config(root)


def _toml_value(value: str) -> str:
    if value.isdigit():
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_config(root: Path) -> RepoConfig:
    """Read and validate ``omerofs.toml``; every problem is one clear message."""
    root = root.absolute()
    path = root / CONFIG_NAME
    if not path.is_file():
        raise NotFound(
            f"{root} is not an omerofs repository (no {CONFIG_NAME}; run 'omerofs init')"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    repo = data.get("repository", {})
    imp = data.get("import", {})
    view = data.get("view", {})
    ingest = data.get("ingest", {})
    config = RepoConfig(
        root=root,
        backend=str(repo.get("backend", "local")),
        template=str(repo.get("template", DEFAULT_TEMPLATE)),
        transfer=str(imp.get("transfer", "upload")),
        cache_timeout=float(view.get("cache_timeout", 300)),
        refresh_interval=float(view.get("refresh_interval", 0.25)),
        read_ahead_kb=int(view.get("read_ahead_kb", 1024)),
        ingest_transfer=str(ingest.get("transfer", "ln_rm")),
        settle=float(ingest.get("settle", 5)),
        concurrency=int(ingest.get("concurrency", 2)),
        ingest_xattrs=bool(ingest.get("xattrs", False)),
        ingest_staging=Path(str(ingest["staging"])) if ingest.get("staging") else None,
        view_passthrough=bool(view.get("passthrough", True)),
        ingest_passthrough=bool(ingest.get("passthrough", True)),
        ingest_rules=IngestRules.parse(ingest, path),
        omero=OmeroSettings.parse(data.get("omero", {}), path)
        if repo.get("backend") == "omero"
        else None,
    )
    if config.backend not in ("local", "omero"):
        raise UsageError(f"{path}: unknown backend {config.backend!r} (expected local or omero)")
    validate_template(config.template)
    for mode in (config.transfer, config.ingest_transfer):
        if mode not in TRANSFER_MODES:
            raise UsageError(f"{path}: unknown transfer mode {mode!r}")
    if config.ingest_staging is not None and not config.ingest_staging.is_absolute():
        raise UsageError(f"{path}: [ingest] staging must be an absolute path")
    if config.settle < 0 or config.concurrency < 1:
        raise UsageError(f"{path}: [ingest] settle must be >= 0 and concurrency >= 1")
    if config.refresh_interval <= 0 or config.cache_timeout < 0:
        raise UsageError(f"{path}: view timeouts must be positive")
    return config
