"""``omerofs import`` of real microscope data on the embedded backend: one fileset per
Bio-Formats group, main file first, the Images each format's metadata gives; damaged
copies fail with one line and are kept.

Most imports go through ``Importer.import_paths``, the call ``omerofs import`` makes;
two tests run the CLI itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.imports.importer import Outcome, Target
from tests.conftest import run_cli
from tests.test_formats import DATA, EXPECTED, FILESETS, TRUNCATED, truncate_copy

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is missing")


@pytest.fixture
def repo_root(populated) -> str:
    """A real repository with users (conftest's)."""
    return str(populated.config.root)


def _import(repo, *sources: Path, mode: str = "cp") -> list[Outcome]:
    owner, group = repo.importer.resolve_identity("alice", None)
    return repo.importer.import_paths(list(sources), owner, group, mode, Target())


def _filesets(root: str) -> list[tuple[list[str], list[tuple]]]:
    """Per fileset: its files' client paths (main first) and its Images' sizes."""
    catalog = LocalCatalog(Path(root) / "catalog.sqlite")
    try:
        result = []
        for fs in sorted(catalog.snapshot().filesets.values(), key=lambda f: f.id):
            images = [
                (i.size_x, i.size_y, i.size_z, i.size_c, i.size_t, i.pixel_type)
                for i in catalog.images_of(fs.id)
            ]
            result.append(([e.client_path for e in fs.entries], images))
        return result
    finally:
        catalog.close()


def _copy(rel: str, dest: Path) -> None:
    src = DATA / rel
    if src.is_dir():
        shutil.copytree(src, dest / src.name, dirs_exist_ok=True)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest / src.name)


def test_a_directory_with_a_multi_file_ome_tiff_and_a_czi_is_two_filesets(
    populated, repo_root: str, world_dir: Path
) -> None:
    d = world_dir / "acq"
    _copy("ome-tiff-multifile/master", d)
    _copy("czi/s_1_t_1_c_1_z_1.czi", d / "master")
    res = run_cli("-r", repo_root, "import", str(d), "--user", "alice", "--transfer", "cp")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("fileset ") == 2
    (multi, multi_images), (czi, czi_images) = _filesets(repo_root)
    assert multi[0].endswith("master/multifile-Z1.ome.tiff")  # the master: main file first
    assert sorted(Path(p).name for p in multi[1:]) == [
        f"multifile-Z{n}.ome.tiff" for n in range(2, 6)
    ]
    assert multi_images == [(18, 24, 5, 1, 1, "uint8")]  # one Image over 5 files, not five
    assert len(czi) == 1 and czi[0].endswith("s_1_t_1_c_1_z_1.czi")
    assert czi_images == [(475, 325, 1, 1, 1, "uint16")]


def test_every_shared_file_imports_with_its_images(
    populated, repo_root: str, world_dir: Path
) -> None:
    d = world_dir / "all"
    shutil.copytree(DATA, d)
    (d / "README.md").unlink()
    outcomes = _import(populated, d)
    assert [o.error for o in outcomes if o.error] == []
    found = {}
    for paths, images in _filesets(repo_root):
        main = str(Path("/" + paths[0]).relative_to(d))
        found[main] = (len(paths), images)
    assert set(found) == set(EXPECTED)
    for main, (count, images) in found.items():
        assert images == EXPECTED[main][0], EXPECTED[main][1]
        assert count == FILESETS.get(main, (1, ""))[0]


@pytest.mark.parametrize("name", ["small.tif", "t.czi", "t.nd2", "t.dv", "t.lif", "t.ome.tif"])
def test_a_truncated_file_fails_cleanly_and_is_kept(
    populated, repo_root: str, world_dir: Path, name: str
) -> None:
    source, keep = TRUNCATED[name]
    src = world_dir / "in"
    src.mkdir()
    bad = truncate_copy(DATA / source, src / name, keep)
    before = bad.read_bytes()
    (outcome,) = _import(populated, bad, mode="cp_rm")
    assert outcome.fileset is None and "\n" not in outcome.error
    assert outcome.error.startswith(f"{name}: damaged or incomplete file (")
    assert bad.read_bytes() == before  # cp_rm removed nothing
    assert _filesets(repo_root) == []
    managed = Path(repo_root) / "ManagedRepository"
    assert not managed.exists() or not any(p.is_file() for p in managed.rglob("*"))


def test_the_cli_reports_a_damaged_file_in_one_line(repo_root: str, world_dir: Path) -> None:
    good = world_dir / "in"
    _copy("stk/movie.stk", good)
    bad = truncate_copy(DATA / "dv/toxo.dv", good / "toxo.dv", 0.5)
    res = run_cli("-r", repo_root, "import", str(good), "--user", "alice", "--transfer", "cp_rm")
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"omerofs: {bad}: import failed: toxo.dv: damaged or incomplete")
    assert "movie.stk: fileset 1, 1 image(s), 1 file(s)" in res.stdout
    assert bad.exists() and not (good / "movie.stk").exists()  # cp_rm: the good one moved
