"""open_for_writing asks the kernel (a read lease) whether anyone writes a file."""

from __future__ import annotations

import os

from omerofs.imports.writers import open_for_writing
from tests.conftest import needs_root

pytestmark = [needs_root]  # leases on other users' files need CAP_LEASE


def test_open_for_writing_sees_every_writer(tmp_path) -> None:
    path = tmp_path / "f.tif"
    path.write_bytes(b"x")
    assert not open_for_writing(path)
    with open(path, "rb"):
        assert not open_for_writing(path)  # readers do not count
    with open(path, "ab"):
        assert open_for_writing(path)
    fd = os.open(path, os.O_WRONLY)
    assert open_for_writing(path)
    os.close(fd)
    assert not open_for_writing(path)
    assert not open_for_writing(tmp_path / "gone")
    os.symlink(path, tmp_path / "link")
    assert not open_for_writing(tmp_path / "link")  # never followed
