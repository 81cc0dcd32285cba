"""The import engine against a real repository: placement, records, rollback, rules."""

import os

import pytest

from omerofs.errors import AccessDenied, ImportFailed, UnknownFormat, UsageError
from omerofs.imports.filesets import plan_fileset
from omerofs.imports.importer import Target
from omerofs.imports.transfer import sha1_file
from tests.conftest import make_tiff, needs_root


def _repo_files(repo) -> list[str]:
    root = repo.config.managed_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("mode", ["ln", "ln_s", "ln_rm", "cp", "cp_rm", "upload", "upload_rm"])
def test_import_modes(populated, world_dir, mode) -> None:
    src = make_tiff(world_dir / "in" / f"{mode}.tif", shape=(2, 16, 16))
    digest = sha1_file(src)
    fs = populated.import_file(src, "alice", "ro", mode, "Project:name:P/Dataset:name:D")
    placed = populated.config.managed_dir / fs.entries[0].repo_path
    assert sha1_file(placed) == digest == fs.entries[0].hash
    assert fs.template_prefix.startswith("alice_2/") and fs.transfer == mode
    assert fs.image_count == 1 and len(fs.dataset_ids) == 1
    assert src.exists() == (not mode.endswith("_rm"))
    log = placed.parent.parent / (placed.parent.name + ".log")
    assert f"fileset: {fs.id}" in log.read_text()
    assert fs.entries[0].client_path == str(src).lstrip("/")


def test_directory_is_one_fileset_main_file_first(populated, world_dir) -> None:
    d = world_dir / "run1"
    (d / "sub").mkdir(parents=True)
    (d / "a_notes.txt").write_text("notes")
    make_tiff(d / "sub" / "deep.tif", seed=2)
    make_tiff(d / "z_main.ome.tif", seed=1)
    make_tiff(d / "b_second.tif", seed=3)
    fs = populated.import_file(d, "bob", mode="cp")
    names = [e.repo_path[len(fs.template_prefix) :] for e in fs.entries]
    assert names[0] == "run1/z_main.ome.tif"  # shallowest image, OME-TIFF preferred
    assert sorted(names) == [
        "run1/a_notes.txt",
        "run1/b_second.tif",
        "run1/sub/deep.tif",
        "run1/z_main.ome.tif",
    ]
    assert fs.image_count == 3  # every readable TIFF contributes its series


def test_multi_series_and_dimensions(populated, world_dir) -> None:
    src = make_tiff(world_dir / "t.tif", shape=(4, 2, 24, 20), axes="TCYX", dtype="uint8")
    fs = populated.import_file(src, "alice")
    (image,) = populated.catalog.images_of(fs.id)
    assert (image.size_x, image.size_y, image.size_c, image.size_t, image.pixel_type) == (
        20,
        24,
        2,
        4,
        "uint8",
    )


def test_unknown_format_fails_and_leaves_nothing(populated, world_dir) -> None:
    bad = world_dir / "broken.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(UnknownFormat, match="broken.tif"):
        populated.import_file(bad, "alice", mode="cp_rm")
    assert bad.exists() and _repo_files(populated) == []
    assert populated.catalog.snapshot().filesets == {}


def test_companion_files_are_fine_but_main_must_be_an_image(populated, world_dir) -> None:
    d = world_dir / "only-text"
    d.mkdir()
    (d / "readme.txt").write_text("x")
    with pytest.raises(UnknownFormat):
        populated.import_file(d, "alice")


@needs_root
def test_failed_import_rolls_back_placed_files(world_dir, tmpfs) -> None:
    """ENOSPC half-way through a fileset: the first file's copy must disappear too."""
    from tests.conftest import Repo

    small = tmpfs("small", size="2m")
    repo = Repo(small / "repo").populate()
    try:
        d = world_dir / "big"
        make_tiff(d / "a_main.tif", shape=(1, 256, 256))  # 128 KiB: fits
        (d / "b_blob.bin").write_bytes(os.urandom(3 << 20))  # does not fit
        with pytest.raises(ImportFailed, match="No space left"):
            repo.import_file(d, "alice", mode="cp_rm")
        assert _repo_files(repo) == []
        assert repo.catalog.snapshot().filesets == {}
        assert (d / "a_main.tif").exists() and (d / "b_blob.bin").exists()
    finally:
        repo.catalog.close()


def test_cross_filesystem_ln_leaves_nothing(populated, tmpfs) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount tmpfs")
    other = tmpfs("elsewhere")
    src = make_tiff(other / "x.tif")
    with pytest.raises(ImportFailed, match="'ln' needs the source"):
        populated.import_file(src, "alice", mode="ln_rm")
    assert src.exists() and _repo_files(populated) == []


def test_sources_inside_the_repository_are_refused(populated, world_dir) -> None:
    fs = populated.import_file(make_tiff(world_dir / "a.tif"), "alice")
    inside = populated.config.managed_dir / fs.entries[0].repo_path
    with pytest.raises(UsageError, match="already inside the ManagedRepository"):
        populated.import_file(inside, "alice", mode="ln_s")


def test_rm_mode_keeps_a_source_that_changed_during_import(
    populated, world_dir, monkeypatch
) -> None:
    """A writer appending while we import: the appended bytes must not be deleted."""
    from omerofs.backends.local.writer import LocalWriter

    src = make_tiff(world_dir / "growing.tif")
    real_write_log = LocalWriter._write_log

    def append_then_log(*args, **kwargs):
        with open(src, "ab") as f:
            f.write(b"late bytes")
        return real_write_log(*args, **kwargs)

    monkeypatch.setattr(LocalWriter, "_write_log", staticmethod(append_then_log))
    populated.import_file(src, "alice", mode="cp_rm")
    assert src.exists() and src.read_bytes().endswith(b"late bytes")


def test_unique_directories_for_fast_imports(populated, world_dir) -> None:
    prefixes = {
        populated.import_file(make_tiff(world_dir / f"f{i}.tif", seed=i), "alice").template_prefix
        for i in range(12)
    }
    assert len(prefixes) == 12


def test_template_without_time_still_gets_unique_dirs(world_dir) -> None:
    from omerofs.backends.local import local_importer
    from omerofs.backends.local.catalog import LocalCatalog
    from omerofs.config import init_repo

    config = init_repo(world_dir / "r2", template="%user%//%year%")
    catalog = LocalCatalog(config.catalog_path, create=True)
    try:
        catalog.add_group("g", __import__("omerofs.identity").identity.PermissionLevel.PRIVATE, 5)
        catalog.add_experimenter("u", 42, default_group="g")
        imp = local_importer(config, catalog)
        owner, group = imp.resolve_identity("u", None)
        a = imp.import_fileset_path(make_tiff(world_dir / "a.tif"), owner, group, "cp", Target())
        b = imp.import_fileset_path(make_tiff(world_dir / "b.tif"), owner, group, "cp", Target())
        assert a.template_prefix != b.template_prefix
        assert b.template_prefix.endswith("-1/")
    finally:
        catalog.close()


@pytest.mark.parametrize(
    "user,group,caller,error",
    [
        ("carol", "rw", None, AccessDenied),  # not a member
        ("alice", "nope", None, Exception),
        ("alice", "priv", 3002, AccessDenied),  # bob may not import as alice
        ("alice", "priv", 999, AccessDenied),  # unmapped uid
    ],
)
def test_import_as_rules_refuse(populated, user, group, caller, error) -> None:
    with pytest.raises(error):
        populated.importer.resolve_identity(user, group, caller)


@pytest.mark.parametrize("caller", [0, 3001, 3004, 3005])  # root, self, group owner, admin
def test_import_as_rules_allow(populated, caller) -> None:
    owner, group = populated.importer.resolve_identity("alice", "priv", caller)
    assert (owner.name, group.name) == ("alice", "priv")


@pytest.mark.parametrize(
    "text,parsed",
    [
        (None, Target()),
        ("Dataset:name:D", Target(None, "D")),
        ("Project:name:P/Dataset:name:D 1", Target("P", "D 1")),
    ],
)
def test_target_parse(text, parsed) -> None:
    assert Target.parse(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "Dataset:D",
        "Project:name:P",
        "Dataset:name:D/Project:name:P",
        "Screen:name:S/Dataset:name:D",  # a Screen stands alone (tests/test_plates.py)
        "Dataset:name:+D",
        "A/B/C",
    ],
)
def test_target_parse_errors(text) -> None:
    with pytest.raises(UsageError):
        Target.parse(text)


def test_plan_rejects_specials(world_dir) -> None:
    fifo = world_dir / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        plan_fileset(fifo)
    (world_dir / "empty").mkdir()
    with pytest.raises(UsageError, match="no files"):
        plan_fileset(world_dir / "empty")
