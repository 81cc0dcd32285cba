"""Transfer modes on real files, including a second filesystem for cross-device links."""

import os

import pytest

from omerofs.errors import ChecksumMismatch, ImportFailed, UsageError
from omerofs.imports import transfer
from tests.conftest import needs_root


@pytest.fixture
def source(world_dir):
    path = world_dir / "src.bin"
    path.write_bytes(os.urandom(3 * transfer.CHUNK + 17))
    return path


@pytest.mark.parametrize("mode", transfer.MODES)
def test_every_mode_places_and_verifies(world_dir, source, mode) -> None:
    target = world_dir / f"placed-{mode}"
    sha1 = transfer.place(mode, source, target)
    assert sha1 == transfer.sha1_file(source) == transfer.sha1_file(target)
    kind = transfer.base_mode(mode)
    assert os.path.islink(target) == (kind == "ln_s")
    assert (os.stat(target).st_ino == os.stat(source).st_ino) == (kind in ("ln", "ln_s"))
    assert source.exists()  # removing sources is the importer's job, after the commit


def test_unknown_mode() -> None:
    with pytest.raises(UsageError, match="unknown transfer mode 'mv'"):
        transfer.base_mode("mv")


@pytest.mark.parametrize("mode", ["cp", "upload"])
def test_existing_target_is_never_overwritten(world_dir, source, mode) -> None:
    target = world_dir / "taken"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        transfer.place(mode, source, target)
    assert target.read_bytes() == b"keep me"


@needs_root
def test_hardlink_across_filesystems_fails_cleanly(tmpfs, source) -> None:
    other = tmpfs("otherfs")
    with pytest.raises(ImportFailed, match="same filesystem|repository's filesystem"):
        transfer.place("ln", source, other / "x")
    assert not (other / "x").exists()


def test_verify_detects_corruption(world_dir, source) -> None:
    target = world_dir / "copy"
    expected = transfer.place("cp", source, target)
    with open(target, "r+b") as f:
        f.seek(5)
        f.write(b"\xff\x00")
    with pytest.raises(ChecksumMismatch, match="does not match"):
        transfer._verify(target, expected)


def test_uploader_hashes_what_it_received(world_dir) -> None:
    up = transfer.RepositoryUploader(world_dir / "up")
    up.write(b"abc")
    up.write(b"def")
    assert up.close() == transfer.sha1_file(world_dir / "up")


@needs_root
@pytest.mark.parametrize("across", [False, True])
def test_copy_with_and_without_the_kernel_copy(tmpfs, world_dir, source, across) -> None:
    """cp uses copy_file_range; where the kernel refuses (another filesystem type) the
    plain loop copies the rest. Either way every byte arrives and is verified."""
    target = (tmpfs("elsewhere") if across else world_dir) / "copied"
    done: list[int] = []
    sha1 = transfer.place("cp", source, target, done.append)
    assert target.read_bytes() == source.read_bytes()
    assert sha1 == transfer.sha1_file(source) and sum(done) == source.stat().st_size


def test_a_copy_that_differs_from_its_source_fails(world_dir, source, monkeypatch) -> None:
    """The copy is hashed independently of the source: a copy that came out different
    (here: a kernel copy that drops its last byte) is caught, not recorded."""
    real = os.copy_file_range

    def short_copy(src, dst, count, *args):
        n = real(src, dst, count, *args)
        if n and os.fstat(src).st_size == os.lseek(src, 0, os.SEEK_CUR):
            os.ftruncate(dst, os.fstat(dst).st_size - 1)
        return n

    monkeypatch.setattr(os, "copy_file_range", short_copy)
    with pytest.raises(ChecksumMismatch, match="does not match"):
        transfer.place("cp", source, world_dir / "bad-copy")


@needs_root
@pytest.mark.parametrize("mode", ["ln", "cp", "upload", "ln_s"])
def test_sealed_placement_belongs_to_the_account(world_dir, source, mode) -> None:
    """Sealed originals are the account's and read-only; for ln that is the source's
    inode (it keeps its read bits), for ln_s only the link (its target is the user's)."""
    os.chown(source, 3001, 3001)
    source.chmod(0o640)
    target = world_dir / f"sealed-{mode}"
    seals: list[transfer.Seal] = []
    account = transfer.Account(0, 0)
    sha1 = transfer.place(mode, source, target, seal_as=account, seals=seals)
    assert sha1 == transfer.sha1_file(source)
    st = os.lstat(target)
    assert (st.st_uid, st.st_gid) == (0, 0)
    if mode == "ln_s":
        assert os.stat(source).st_uid == 3001 and not seals
        return
    expected = {"ln": 0o440, "cp": 0o444, "upload": 0o444}[mode]
    assert oct(st.st_mode & 0o7777) == oct(expected)
    if mode == "ln":
        (seal,) = seals
        transfer.unseal(seal)  # a rolled-back import gives the source back as it was
        st = os.stat(source)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (3001, 3001, 0o640)
