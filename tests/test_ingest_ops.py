"""The ingest mount's handlers on a real repository and real staging files, called the
way pyfuse3 calls them (for what a mount cannot show from outside: its inode table)."""

from __future__ import annotations

import errno

import pyfuse3
import pytest
import trio

from omerofs.config import load_config
from omerofs.fs.ingest_ops import IngestOperations
from omerofs.fs.mount import ensure_user_dirs
from omerofs.ingest.service import IngestService


@pytest.fixture
def ops(populated):
    ensure_user_dirs(populated.config, populated.catalog)
    service = IngestService(populated.config, populated.importer, "cp", 0)
    try:
        yield IngestOperations(service, populated.config.staging_dir, populated.catalog.is_member)
    finally:
        service.close()


def test_a_failed_lookup_leaves_no_node_behind(ops) -> None:
    """Every stat of a missing name (a shell's PATH search, Samba's case probes, a
    microscope polling for its marker) answers ENOENT and keeps the table as it was."""

    async def main() -> None:
        alice = await ops.lookup(pyfuse3.ROOT_INODE, b"alice", None)
        known = len(ops.tree)
        for i in range(100):
            with pytest.raises(pyfuse3.FUSEError) as err:
                await ops.lookup(alice.st_ino, f"missing-{i}.tif".encode(), None)
            assert err.value.errno == errno.ENOENT
        assert len(ops.tree) == known
        assert ops.tree.get(alice.st_ino).children == {}

    trio.run(main)


@pytest.mark.parametrize(
    ("value", "readable"),
    [('"auto"', None), ("true", True), ("false", False), ('"true"', True), ('"false"', False)],
)
def test_ingest_xattrs_setting(populated, value, readable) -> None:
    """``[ingest] xattrs``: "auto" (None: decided after INIT), or true/false forcing it
    (TOML booleans as before "auto" existed, or the same words as strings)."""
    toml = populated.config.root / "omerofs.toml"
    toml.write_text(toml.read_text().replace('xattrs = "auto"', f"xattrs = {value}", 1))
    assert load_config(populated.config.root).ingest_xattrs is readable
