"""Every TOML file omerofs reads fails the same one-line way: unreadable, not UTF-8, malformed."""

from __future__ import annotations

from pathlib import Path

import pytest

from omerofs.errors import UsageError
from omerofs.identity import IdMap
from omerofs.notify.settings import read_secret_file
from omerofs.tomlfile import read_toml

LATIN1 = b'[users]\nj\xf6rg = 1001\n'  # "jörg" saved as Latin-1 by an editor: not UTF-8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (LATIN1, r"not UTF-8 text \(line 2\)"),
        (b"[users\n", r"idmap.toml: .*line 1"),
    ],
)
def test_bad_files_are_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "idmap.toml"
    path.write_bytes(content)
    for load in (read_toml, IdMap.load):
        with pytest.raises(UsageError, match=message) as info:
            load(path)
        assert "\n" not in str(info.value)


def test_a_missing_file_names_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read id map .*missing.toml: No such file"):
        IdMap.load(tmp_path / "missing.toml")


def test_a_secret_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "smtp.toml"
    path.write_bytes(LATIN1)
    path.chmod(0o600)
    with pytest.raises(UsageError, match="SMTP credentials must be UTF-8 text"):
        read_secret_file(path, "SMTP credentials")
