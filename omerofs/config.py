"""The repository directory and its ``omerofs.toml``.

A repository is a directory holding ``omerofs.toml``, the SQLite catalog
``catalog.sqlite`` and ``ManagedRepository/`` laid out as OMERO lays it out.
Every key of ``omerofs.toml`` is declared once, in ``SCHEMA`` below (omerofs/schema.py
says how); ``omerofs config-reference`` prints docs/config.md from it. To add a key:
one ``Key(...)`` line here and a field of ``RepoConfig``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omerofs.backends.omero.settings import OmeroSettings
from omerofs.errors import AlreadyExists, NotFound, UsageError
from omerofs.imports.transfer import MODES as TRANSFER_MODES
from omerofs.ingest.settings import IngestRules
from omerofs.policy import OMERO_DEFAULT, check_tokens, parse_groups
from omerofs.schema import Key, Section, render_markdown, render_toml, validate
from omerofs.template import DEFAULT_TEMPLATE, validate_template
from omerofs.tomlfile import read_toml

CONFIG_NAME = "omerofs.toml"
CATALOG_NAME = "catalog.sqlite"
MANAGED_NAME = "ManagedRepository"
MAX_CONCURRENCY = 64


def _template(text: str) -> None:
    validate_template(text)


SCHEMA: tuple[Section, ...] = (
    Section(
        "repository",
        "What the repository is: its catalog backend and the ManagedRepository layout.",
        (
            Key(
                "backend",
                str,
                "local",
                '"local": the embedded SQLite catalog beside this file.\n'
                '"omero": an OMERO server, configured in an [omero] section (docs/omero.md).',
                choices=("local", "omero"),
            ),
            Key(
                "template",
                str,
                DEFAULT_TEMPLATE,
                "OMERO's omero.fs.repo.path: directories before // belong to root, after "
                "it to the user.",
                check=_template,
            ),
        ),
    ),
    Section(
        "import",
        "`omerofs import`.",
        (
            Key(
                "transfer",
                str,
                "upload",
                "Transfer mode used when `omerofs import` is given none.",
                choices=TRANSFER_MODES,
            ),
        ),
    ),
    Section(
        "ingest",
        "The ingest mount (`omerofs ingest`, docs/ingest.md).",
        (
            Key(
                "transfer",
                str,
                "ln_rm",
                "How closed filesets are imported from the ingest mount (ln_rm: moved in, "
                "no copy).",
                choices=TRANSFER_MODES,
            ),
            Key(
                "settle",
                float,
                5.0,
                "Seconds a fileset must stay closed and unchanged before it is imported.",
                minimum=0,
            ),
            Key(
                "concurrency",
                int,
                2,
                "Imports running at once.",
                minimum=1,
                maximum=MAX_CONCURRENCY,
            ),
            Key(
                "xattrs",
                str,
                "auto",
                "Readable user.omerofs.* xattrs (state, error) and Windows metadata for Samba.\n"
                "auto: on when the kernel grants FUSE_HANDLE_KILLPRIV_V2 (Linux >= 5.11 with\n"
                "omerofs's pyfuse3), off otherwise: without it, while getxattr works the kernel\n"
                "asks the daemon for security.capability before EVERY write(2) (4 KiB writes\n"
                "0.08 of native instead of 0.91). The daemon's log says which at start-up.\n"
                "true/false force it. State is also in `omerofs status` and\n"
                "NAME.import-error.txt; commit/retry by setxattr work either way.",
                choices=("auto", "true", "false"),
                booleans=True,
            ),
            Key(
                "staging",
                str,
                None,
                "Where written files wait for their import (default: staging/ beside this\n"
                "file). For ln/ln_rm it must be on the ManagedRepository's filesystem (with\n"
                "an OMERO backend: the filesystem the server's ManagedRepository is mounted\n"
                "from).",
                absolute_path=True,
                example="/data/omero/omerofs-staging",
            ),
            Key(
                "passthrough",
                bool,
                True,
                "Kernel passthrough (Linux >= 6.9, daemon as root): open files are written\n"
                "and read by the kernel directly, at native speed; the daemon still sees\n"
                "every open and close.",
            ),
        ),
        more_keys=lambda: [f.name for f in dataclasses.fields(IngestRules)],
    ),
    Section(
        "view",
        "The read-only view (`omerofs mount`, docs/view.md).",
        (
            Key(
                "cache_timeout",
                float,
                300.0,
                "Seconds the kernel may cache names and attributes of the read-only view.",
                minimum=0,
            ),
            Key(
                "refresh_interval",
                float,
                0.25,
                "Seconds between checks of the catalog for changes (new imports, new\nmembers).",
                above=0,
            ),
            Key(
                "read_ahead_kb",
                int,
                1024,
                "Readahead for the mount, in KiB (the kernel default of 128 halves\n"
                "streaming reads).",
                minimum=0,
                maximum=1 << 20,
            ),
            Key(
                "passthrough",
                bool,
                True,
                "Kernel passthrough (Linux >= 6.9, daemon as root): reads of opened\n"
                "originals go from the kernel straight to ManagedRepository, at native speed.",
            ),
            Key(
                "binary_access",
                str,
                OMERO_DEFAULT,
                "Who may read originals through the view, as OMERO's\n"
                "omero.policy.binary_access (docs/view.md): +read/-read (-read: only who\n"
                "may edit the data), +write/-write (-write: nobody), +image, +plate (without\n"
                "+plate a plate's files are listed but not readable, as OMERO's default).\n"
                "Embedded backend; with an OMERO backend the server's own setting applies.",
                check=check_tokens,
            ),
            Key(
                "binary_access_groups",
                str,
                "",
                'Per-group additions, as OMERO\'s group config: "GROUP: TOKENS; GROUP: TOKENS"\n'
                '(e.g. "screening: +plate; clinic: -read"); a "-" anywhere wins.',
                check=parse_groups,
            ),
        ),
    ),
    Section(
        "omero",
        'The OMERO server, when `backend = "omero"`.',
        delegated=("omerofs/backends/omero/settings.py", "docs/omero.md"),
    ),
    Section(
        "notify",
        "Notifications to users and admins (optional).",
        delegated=("omerofs/notify/settings.py", "docs/notifications.md"),
    ),
)

REFERENCE_INTRO = """\
# omerofs.toml reference

<!-- generated from omerofs/config.py SCHEMA by `omerofs config-reference`; do not edit -->

Every repository has one `omerofs.toml` (TOML, UTF-8). `omerofs init` writes it with
every key at its default and a comment saying what the key does. Every command reads and
checks the whole file first: a wrong type, a value out of range, an unknown section or an
unknown key (with a guess at the key that was meant, as in `cache_timout` ->
`cache_timeout`) is one line naming the file, the section and the key, and the command
changes nothing. Numbers must be finite; booleans are `true`/`false`, not strings.

The schema is a small table of keys in `omerofs/config.py` (`omerofs/schema.py` checks
it) rather than a validation library: tomllib already types the values, and what remains
is ranges and messages that name the key; pydantic or jsonschema would add a dependency
for less readable messages.
"""


def config_reference() -> str:
    """docs/config.md."""
    return render_markdown(SCHEMA, REFERENCE_INTRO)


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
    ingest_xattrs: bool | None = None  # None: auto (fs/ingest_ops.py decides after INIT)
    omero: OmeroSettings | None = None
    ingest_staging: Path | None = None
    view_passthrough: bool = True
    ingest_passthrough: bool = True
    notify: dict[str, Any] | None = None  # [notify], parsed by omerofs/notify/settings.py
    binary_access: str = OMERO_DEFAULT  # [view], omerofs/policy.py
    binary_access_groups: str = ""
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
    (root / MANAGED_NAME).mkdir(mode=0o700, exist_ok=True)  # users go through the mounts
    (root / "logs").mkdir(exist_ok=True)
    tmp = root / (CONFIG_NAME + ".tmp")
    values = {"repository": {"template": template, "backend": "omero" if omero else "local"}}
    text = render_toml(SCHEMA, values)
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
    """Read and validate ``omerofs.toml`` against ``SCHEMA``; every problem is one line."""
    root = root.absolute()
    path = root / CONFIG_NAME
    if not path.is_file():
        raise NotFound(
            f"{root} is not an omerofs repository (no {CONFIG_NAME}; run 'omerofs init')"
        )
    data = validate(read_toml(path), SCHEMA, path)
    repo, imp, view, ingest = data["repository"], data["import"], data["view"], data["ingest"]
    return RepoConfig(
        root=root,
        backend=repo["backend"],
        template=repo["template"],
        transfer=imp["transfer"],
        cache_timeout=view["cache_timeout"],
        refresh_interval=view["refresh_interval"],
        read_ahead_kb=view["read_ahead_kb"],
        ingest_transfer=ingest["transfer"],
        settle=ingest["settle"],
        concurrency=ingest["concurrency"],
        ingest_xattrs={"auto": None, "true": True, "false": False}[ingest["xattrs"]],
        ingest_staging=Path(ingest["staging"]) if ingest["staging"] else None,
        view_passthrough=view["passthrough"],
        binary_access=view["binary_access"],
        binary_access_groups=view["binary_access_groups"],
        ingest_passthrough=ingest["passthrough"],
        ingest_rules=IngestRules.parse(ingest, path),
        notify=data["notify"] or None,
        omero=OmeroSettings.parse(data["omero"], path) if repo["backend"] == "omero" else None,
    )
