"""omerofs.toml: one schema; every bad file is one line naming the key (issue 12, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omerofs.config import CONFIG_NAME, config_reference, load_config
from tests.conftest import run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


@pytest.fixture
def cfg(world_dir) -> Path:
    root = world_dir / "cfg"
    assert run_cli("-r", str(root), "init").returncode == 0
    return root


def _edit(root: Path, old: str, new: str) -> None:
    toml = root / CONFIG_NAME
    text = toml.read_text()
    assert old in text, old
    toml.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "old,new,words",
    [
        (
            "cache_timeout = 300",
            "cache_timout = 300",
            "unknown key 'cache_timout' (did you mean 'cache_timeout'?)",
        ),
        ("[view]", "[viwe]", "unknown section 'viwe' (did you mean 'view'?)"),
        ("[view]", "[extras]\nx = 1\n[view]", "unknown section 'extras'"),
        ("[import]", "stray = 1\n[import]", "[repository] unknown key 'stray'"),
        (
            "passthrough = true\n\n[view]",
            'passthrough = "yes"\n\n[view]',
            '[ingest] passthrough must be true or false, not "yes"',
        ),
        ('template = "', "template = 42\n# ", "[repository] template must be a string, not 42"),
        ("settle = 5", 'settle = "five"', '[ingest] settle must be a number, not "five"'),
        ("settle = 5", "settle = nan", "[ingest] settle must be a finite number"),
        ("settle = 5", "settle = -1", "[ingest] settle must be >= 0"),
        ("concurrency = 2", 'concurrency = "two"', "[ingest] concurrency must be a whole number"),
        ("concurrency = 2", "concurrency = 0", "[ingest] concurrency must be >= 1, not 0"),
        ("concurrency = 2", "concurrency = 2.5", "[ingest] concurrency must be a whole number"),
        ("concurrency = 2", "concurrency = true", "[ingest] concurrency must be a whole number"),
        ("refresh_interval = 0.25", "refresh_interval = 0", "refresh_interval must be > 0"),
        ("[ingest]\n", '[ingest]\nstaging = "relative/dir"\n', "staging must be an absolute path"),
        (
            'backend = "local"',
            'backend = "ldap"',
            "backend must be one of local, omero, not 'ldap'",
        ),
        ('transfer = "upload"', 'transfer = "scp"', "[import] transfer must be one of"),
        ("[view]", "view = 3\n[view]", "[ingest] unknown key 'view'"),
        ('xattrs = "auto"', "xattrs = [", "omerofs.toml: "),
        ('xattrs = "auto"', 'xattrs = "yes"', "[ingest] xattrs must be one of auto, true, false"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(cfg, old, new, words) -> None:
    _edit(cfg, old, new)
    result = run_cli("-r", str(cfg), "ls", "users")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("omerofs: ") and words in lines[0], lines[0]


def test_not_utf8_is_one_line(cfg) -> None:
    toml = cfg / CONFIG_NAME
    toml.write_bytes(toml.read_bytes().replace(b"# omerofs", b"# omerofs \xff\xfe", 1))
    result = run_cli("-r", str(cfg), "ls", "users")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not UTF-8 text (line 1)" in result.stderr


def test_sections_other_modules_parse_pass_through(cfg) -> None:
    """[notify] goes to the notify engineer's NotifySettings.parse unchecked here; the
    [ingest] rules of ingest/settings.py are accepted beside the schema's keys."""
    _edit(cfg, "[ingest]\n", "[ingest]\nrun_settle = 60\n")
    (cfg / CONFIG_NAME).write_text(
        (cfg / CONFIG_NAME).read_text() + '\n[notify]\nwhatever = "notify decides"\n'
    )
    config = load_config(cfg)
    assert config.notify == {"whatever": "notify decides"}
    assert config.ingest_rules.run_settle == 60


def test_written_file_is_the_schema_defaults(cfg) -> None:
    config = load_config(cfg)
    assert (config.settle, config.concurrency, config.cache_timeout) == (5.0, 2, 300.0)
    assert config.ingest_staging is None and config.notify is None


def test_docs_config_md_is_generated_from_the_schema() -> None:
    assert DOCS.read_text() == config_reference(), (
        "docs/config.md is stale: run omerofs config-reference > docs/config.md"
    )
    printed = run_cli("config-reference", check=True).stdout
    assert printed == config_reference()
