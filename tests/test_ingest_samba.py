"""Issue #14 over Samba: a client that dies mid-write leaves smbd to close its handle, and
what stays is a closed, partial file — exactly what putting the partial file leaves.
It must be held as incomplete, never imported as good, and a rewrite imports it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from omerofs.imports.transfer import sha1_file
from tests import test_samba as samba_tests
from tests.conftest import wait_for

pytestmark = samba_tests.pytestmark
door = samba_tests.door  # the fixtures: repository, ingest mount, view, smbd (module scope)
src = samba_tests.src


@pytest.mark.parametrize("kind", ["imagej", "multipage"])
def test_a_cut_off_smb_upload_is_held_not_imported(door, src, kind) -> None:
    data = np.random.default_rng(5).integers(0, 200, (3, 128, 128)).astype("uint8")
    whole = src / f"{kind}.tif"
    if kind == "imagej":  # three planes announced by ImageJ's images=3
        tifffile.imwrite(whole, data, imagej=True, metadata={"axes": "ZYX"})
    else:  # a three-page acquisition (its description says shape 3x128x128)
        tifffile.imwrite(whole, data, photometric="minisblack")
    half = src / f"half-{kind}.tif"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    remote = f"smb14-{kind}\\{kind}.tif"
    door.smbd.client("alice", samba_tests.INGEST, f"mkdir smb14-{kind}")
    door.put("alice", half, remote)
    rel = f"alice/smb14-{kind}/{kind}.tif"
    door.wait_state(rel, "incomplete")
    error = (door.ingest / rel).with_name(f"{kind}.tif.import-error.txt")
    wait_for(error.exists, what="the report")
    assert "planes present" in error.read_text()
    assert not door.filesets(f"smb14-{kind}/{kind}.tif")
    door.put("alice", whole, remote)  # the client tries again
    wait_for(lambda: door.filesets(f"smb14-{kind}/{kind}.tif"), timeout=60, what="the rewrite")
    (fs,) = door.filesets(f"smb14-{kind}/{kind}.tif")
    assert fs.entries[0].hash == sha1_file(whole)
