"""Every real microscope file in ../shared/data (copied first): Images, sizes, pixel
types and names as each format's own metadata gives them; filesets grouped as
Bio-Formats groups its "used files"; damaged and incomplete copies recognised."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from omerofs.errors import DamagedFile, UnknownFormat
from omerofs.formats import completeness, group_files, looks_like_image, read_images
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{SHARED_DATA} is missing")

# main file -> [(X, Y, Z, C, T, pixel type), ...] one per Image, with the reason
EXPECTED: dict[str, tuple[list[tuple[int, int, int, int, int, str]], str]] = {
    "czi/s_1_t_1_c_1_z_1.czi": (
        [(475, 325, 1, 1, 1, "uint16")],
        "one subblock X 475 Y 325 C 0, pixel type Gray16",
    ),
    "czi/CellDivision_T3_Z5_CH2_X240_Y170.czi": (
        [(240, 170, 5, 2, 3, "uint16")],
        "30 subblocks 240x170 over T 0-2, C 0-1, Z 0-4; Gray16",
    ),
    "czi/S3_1Pos_2Mosaic_T1_Z1_CH1.czi": (
        [(295, 122, 1, 1, 1, "uint16"), (64, 64, 1, 1, 1, "uint16"), (352, 237, 1, 1, 1, "uint16")],
        "3 scenes (S 0-2) of 64x64 mosaic tiles (M); each scene's tiles stitched to their "
        "bounding box, as Bio-Formats' ZeissCZIReader (autostitch) gives one Image per scene",
    ),
    "dv/toxo.dv": (
        [(128, 128, 17, 2, 1, "uint16")],
        "header nx=ny=128, 34 sections = 17 Z x 2 waves (nc=2), nt=1, mode 6 (uint16)",
    ),
    "imagej-tiff/xyt_8bit_polyp.tif": (
        [(313, 313, 1, 1, 3, "uint8")],
        "ImageJ images=3 frames, 8-bit",
    ),
    "imagej-tiff/xyzc_16bit__dna_conf_wf.tif": (
        [(133, 130, 45, 2, 1, "uint16")],
        "ImageJ images=90 channels=2 slices=45, 16-bit, 133x130 IFDs",
    ),
    "ims/Minimal_IMS_File.ims": (
        [(128, 128, 1, 1, 1, "uint16")],
        "ResolutionLevel 0/TimePoint 0/Channel 0/Data ZYX (1, 128, 128) uint16",
    ),
    "lif/LeicaLASX_wavelength-sweep_example.lif": (
        [(64, 64, 20, 1, 1, "uint8"), (64, 64, 15, 1, 1, "uint8"), (64, 64, 11, 1, 20, "uint8")],
        "3 LIF images, one ChannelDescription each; their wavelength sweeps (DimID 5/9: 20, "
        "15, 10 steps) become Z where there is no Z, else multiply T (11 Z, 2 x 10 T), as "
        "Bio-Formats' LIFReader.translateImageNodes does; 8 bits",
    ),
    "lsm/jimpipeline_test.lsm": (
        [(512, 512, 1, 1, 1, "uint16")],
        "one 512x512 uint16 image; the 3x128x128 uint8 thumbnail series is no Image",
    ),
    "micromanager/181003_multi_pos_time_course_1_MMStack.ome.tif": (
        [(256, 256, 1, 1, 10, "uint16")] * 2,
        "OME-XML: 2 Image nodes (positions) of SizeT 10, 256x256 uint16",
    ),
    "micromanager/alpha_2.0_singleplane_manual/Pos0/metadata.txt": (
        [(16, 16, 1, 1, 1, "uint16")],
        "Summary says -1 (unknown) for Slices/Channels/Frames; its one Coords entry names a "
        "16x16 uint16 TIFF",
    ),
    "nd2/cluster.nd2": (
        [(38, 31, 10, 2, 3, "uint16")],
        "sizes T 3, Z 10, C 2, Y 31, X 38, uint16, one position",
    ),
    "ndtiff/v3/12_bit_pycromanager_mda/12_bit_pycromanager_mda_NDTiffStack.tif": (
        [(64, 64, 1, 2, 4, "uint16")],
        "NDTiff.index: time 0-3 x channel DAPI/FITC of 64x64 uint16",
    ),
    "oib/test.oib": (
        [(256, 256, 1, 3, 1, "uint16")],
        "FluoView axes CYX (3, 256, 256) uint16",
    ),
    "oif/Cell 1 mitoEGFP.oif": (
        [(256, 256, 1, 3, 1, "uint16")],
        "the same streams as test.oib, as .oif + .oif.files/s_C00[1-3].tif",
    ),
    "ome-tiff/s_1_t_1_c_1_z_1.ome.tiff": (
        [(475, 325, 1, 1, 1, "uint16")],
        "OME-XML Pixels SizeX 475 SizeY 325, Type uint16",
    ),
    "ome-tiff/4D-series.ome.tif": (
        [(439, 167, 5, 1, 7, "int8")],
        "OME-XML Pixels SizeZ 5 SizeT 7, Type int8",
    ),
    "ome-tiff-multifile/master/multifile-Z1.ome.tiff": (
        [(18, 24, 5, 1, 1, "uint8")],
        "master OME-XML: SizeZ 5 in 5 files (one plane each), uint8",
    ),
    "ome-tiff-companion/multifile.companion.ome": (
        [(18, 24, 5, 1, 1, "uint8")],
        "companion OME-XML: SizeZ 5 in multifile-Z1..Z5.ome.tiff, uint8",
    ),
    "ome-zarr/fake-series-2.zarr/.zattrs": (
        [(512, 512, 1, 1, 1, "uint8")] * 2,
        "bioformats2raw layout: series 0 and 1, level 0 shape tczyx (1,1,1,512,512) |u1",
    ),
    "ome-zarr/plate-rows-2.zarr/.zattrs": (
        [(512, 512, 1, 1, 1, "uint8")] * 2,
        "plate wells A/1 and B/1, one field each, level 0 (1,1,1,512,512) |u1",
    ),
    "stk/movie.stk": (
        [(20, 20, 1, 1, 2, "uint16")],
        "MetaMorph STK: 2 planes of 20x20 uint16 (tifffile axes TYX)",
    ),
}

# main file -> (number of files in its fileset, why)
FILESETS = {
    "micromanager/alpha_2.0_singleplane_manual/Pos0/metadata.txt": (2, "metadata.txt + 1 TIFF"),
    "ndtiff/v3/12_bit_pycromanager_mda/12_bit_pycromanager_mda_NDTiffStack.tif": (
        3,
        "the whole NDTiff directory",
    ),
    "oif/Cell 1 mitoEGFP.oif": (13, ".oif + the 12 files of .oif.files/"),
    "ome-tiff-companion/multifile.companion.ome": (6, "companion + the 5 TIFFs it names"),
    "ome-tiff-multifile/master/multifile-Z1.ome.tiff": (5, "master + 4 BinaryOnly parts"),
    "ome-zarr/fake-series-2.zarr/.zattrs": (17, "every file of the .zarr directory"),
    "ome-zarr/plate-rows-2.zarr/.zattrs": (23, "every file of the .zarr directory"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A private, writable copy of the real files."""
    if not DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is missing")
    copy = tmp_path_factory.mktemp("formats") / "data"
    shutil.copytree(DATA, copy)
    for dirpath, dirnames, filenames in os.walk(copy):
        for name in dirnames + filenames:
            os.chmod(os.path.join(dirpath, name), 0o755 if name in dirnames else 0o644)
    os.chmod(copy, 0o755)
    (copy / "README.md").unlink()
    return copy


def _all_files(root: Path) -> list[Path]:
    return [Path(d, f) for d, _, fs in os.walk(root) for f in fs]


@needs_data
@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_images_per_file(data: Path, rel: str) -> None:
    expected, _why = EXPECTED[rel]
    found = read_images(data / rel)
    assert [
        (i.size_x, i.size_y, i.size_z, i.size_c, i.size_t, i.pixel_type) for i in found
    ] == expected
    assert [i.series for i in found] == list(range(len(expected)))
    assert completeness(data / rel) is None


@needs_data
def test_names_as_omero_gives_them(data: Path) -> None:
    """OMERO (PixelsProcessor): the file name alone for one series, else
    ``file [series name]`` with the name the reader gives the series."""
    assert read_images(data / "ome-tiff/4D-series.ome.tif")[0].name == "4D-series.ome.tif"
    lif = [i.name for i in read_images(data / "lif/LeicaLASX_wavelength-sweep_example.lif")]
    assert lif[0] == "LeicaLASX_wavelength-sweep_example.lif [x_y_lambdaEmi]"
    czi = [i.name for i in read_images(data / "czi/S3_1Pos_2Mosaic_T1_Z1_CH1.czi")]
    # ZeissCZIReader names scenes "scene position #N" from 0 when resolutions are not flattened
    assert czi[2] == "S3_1Pos_2Mosaic_T1_Z1_CH1.czi [scene position #2]"
    zarr = [i.name for i in read_images(data / "ome-zarr/fake-series-2.zarr")]
    assert zarr == ["fake-series-2.zarr [series]", "fake-series-2.zarr [series 2]"]  # OME-XML


@needs_data
def test_physical_sizes_where_the_file_has_them(data: Path) -> None:
    (dv,) = read_images(data / "dv/toxo.dv")  # header dx dy dz
    assert dv.physical_x == pytest.approx(0.13262, rel=1e-4)
    assert dv.physical_z == pytest.approx(0.3, rel=1e-6)
    (nd2,) = read_images(data / "nd2/cluster.nd2")  # voxel_size from the ND2 metadata
    assert nd2.physical_x == pytest.approx(0.16781, rel=1e-4) and nd2.physical_z == 0.5
    mm = read_images(data / "micromanager/181003_multi_pos_time_course_1_MMStack.ome.tif")
    assert mm[0].physical_x == pytest.approx(5.2304)  # OME-XML PhysicalSizeX µm
    (oib,) = read_images(data / "oib/test.oib")  # WidthConvertValue 0.177 um
    assert oib.physical_x == pytest.approx(0.177)
    (stk,) = read_images(data / "stk/movie.stk")
    assert stk.physical_x is None


@needs_data
def test_group_files_partitions_everything_as_bio_formats(data: Path) -> None:
    groups = group_files(_all_files(data))
    by_main = {str(g.main.relative_to(data)): g for g in groups}
    assert set(by_main) == set(EXPECTED), "one fileset per main file, nothing else"
    for rel, group in by_main.items():
        count, why = FILESETS.get(rel, (1, "a single file"))
        assert len(group.files) == count, why
        assert group.files[0] == group.main and group.missing == ()
    assert sum(len(g.files) for g in groups) == len(_all_files(data))


@needs_data
def test_a_missing_part_is_named_and_the_set_is_incomplete(data: Path, tmp_path: Path) -> None:
    d = tmp_path / "multi"
    shutil.copytree(data / "ome-tiff-multifile" / "master", d)
    (d / "multifile-Z3.ome.tiff").unlink()
    (group,) = group_files(d.iterdir())
    assert group.main.name == "multifile-Z1.ome.tiff" and len(group.files) == 4
    assert group.missing == ("multifile-Z3.ome.tiff",)
    assert completeness(d / "multifile-Z1.ome.tiff") == (
        "4 of 5 files present; missing multifile-Z3.ome.tiff"
    )
    with pytest.raises(DamagedFile, match="4 of 5 files present"):
        read_images(d / "multifile-Z1.ome.tiff")
    # a part on disk but not handed in (still being written) is missing too
    (group,) = group_files([d / "multifile-Z1.ome.tiff", d / "multifile-Z2.ome.tiff"])
    assert set(group.missing) == {
        "multifile-Z3.ome.tiff",
        "multifile-Z4.ome.tiff",
        "multifile-Z5.ome.tiff",
    }


@needs_data
def test_binary_only_parts_wait_for_their_master(data: Path, tmp_path: Path) -> None:
    d = tmp_path / "parts"
    d.mkdir()
    for n in (2, 4):
        shutil.copy(data / f"ome-tiff-multifile/master/multifile-Z{n}.ome.tiff", d)
    (group,) = group_files(d.iterdir())
    assert group.main.name == "multifile-Z2.ome.tiff" and len(group.files) == 2
    assert group.missing == ("multifile-Z1.ome.tiff",)
    assert "metadata file 'multifile-Z1.ome.tiff' is missing" in completeness(group.main)


@needs_data
def test_oif_without_its_folder_and_companion_without_tiffs(data: Path, tmp_path: Path) -> None:
    oif = tmp_path / "x.oif"
    shutil.copy(data / "oif" / "Cell 1 mitoEGFP.oif", oif)
    with pytest.raises(DamagedFile, match=r"x.oif.files/ is missing"):
        read_images(oif)
    (group,) = group_files([oif])
    assert group.missing == ("x.oif.files/",)
    comp = tmp_path / "c"
    comp.mkdir()
    shutil.copy(data / "ome-tiff-companion" / "multifile.companion.ome", comp)
    shutil.copy(data / "ome-tiff-companion" / "multifile-Z1.ome.tiff", comp)
    assert completeness(comp / "multifile.companion.ome").startswith("2 of 6 files present")


# name -> (source, fraction kept): truncated copies of several formats
TRUNCATED = {
    "t.ome.tif": ("ome-tiff/4D-series.ome.tif", 0.66),
    "ij.tif": ("imagej-tiff/xyzc_16bit__dna_conf_wf.tif", 0.66),
    "small.tif": ("imagej-tiff/xyt_8bit_polyp.tif", 200),  # the 200-byte TIFF
    "t.lsm": ("lsm/jimpipeline_test.lsm", 0.66),
    "mm.ome.tif": ("micromanager/181003_multi_pos_time_course_1_MMStack.ome.tif", 0.66),
    "t.czi": ("czi/CellDivision_T3_Z5_CH2_X240_Y170.czi", 0.66),
    "t.nd2": ("nd2/cluster.nd2", 0.66),
    "t.dv": ("dv/toxo.dv", 0.66),
    "t.lif": ("lif/LeicaLASX_wavelength-sweep_example.lif", 0.66),
    "t.oib": ("oib/test.oib", 0.66),
    "t.ims": ("ims/Minimal_IMS_File.ims", 0.66),
}


def truncate_copy(source: Path, dest: Path, keep: float) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    return dest


@needs_data
@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_copies_are_damaged(data: Path, tmp_path: Path, name: str) -> None:
    source, keep = TRUNCATED[name]
    bad = truncate_copy(data / source, tmp_path / name, keep)
    with pytest.raises(DamagedFile) as info:
        read_images(bad)
    message = str(info.value)
    assert message.startswith(f"{name}: damaged or incomplete file (") and "\n" not in message
    reason = completeness(bad)
    assert reason and reason in message


@needs_data
def test_pixel_data_beyond_the_end_names_the_plane(data: Path, tmp_path: Path) -> None:
    bad = truncate_copy(data / "ome-tiff/4D-series.ome.tif", tmp_path / "x.ome.tif", 0.5)
    assert completeness(bad).startswith("plane 18 lies beyond the end of the file")
    few = truncate_copy(data / "imagej-tiff/xyzc_16bit__dna_conf_wf.tif", tmp_path / "y.tif", 0.5)
    assert completeness(few) == "44 of 90 planes present"  # ImageJ images=90


def test_unknown_files(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(UnknownFormat, match="notes.txt: unknown or unreadable image format"):
        read_images(notes)
    assert completeness(notes) is None and not looks_like_image(notes)
    garbage = tmp_path / "garbage.czi"
    garbage.write_bytes(b"\0" * 4096)
    with pytest.raises(DamagedFile, match="no CZI file header"):
        read_images(garbage)
    assert looks_like_image(garbage)


def test_a_big_file_is_read_from_its_headers_only(tmp_path: Path) -> None:
    """A sparse 1 GiB OME-TIFF (no pixel data on disk): its metadata reads at once."""
    import numpy as np
    import tifffile

    path = tmp_path / "big.ome.tif"
    shape = (64, 4096, 4096)  # 64 planes of 32 MiB (uint16)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(shape=shape, dtype=np.uint16, metadata={"axes": "ZYX"})
    (image,) = read_images(path)
    assert (image.size_x, image.size_y, image.size_z, image.pixel_type) == (
        4096,
        4096,
        64,
        "uint16",
    )
    assert os.stat(path).st_blocks * 512 < 1 << 20  # nothing was ever written or read


@needs_data
def test_micro_manager_and_dv_sets(data: Path, tmp_path: Path) -> None:
    pos = tmp_path / "acq" / "Pos0"
    shutil.copytree(data / "micromanager/alpha_2.0_singleplane_manual/Pos0", pos)
    plane = pos / "img_channel000_position000_time000000000_z000.tif"
    plane.unlink()
    assert completeness(pos / "metadata.txt").startswith("0 of 1 planes present")
    (group,) = group_files(pos.iterdir())
    assert group.main.name == "metadata.txt" and group.missing == (plane.name,)
    dv = tmp_path / "dv"
    dv.mkdir()
    shutil.copy(data / "dv/toxo.dv", dv)
    (dv / "toxo.dv.log").write_text("softWoRx log")
    (group,) = group_files(dv.iterdir())
    assert [p.name for p in group.files] == ["toxo.dv", "toxo.dv.log"]


@needs_data
@pytest.mark.parametrize(
    "given,main,count",
    [
        ("ome-tiff-multifile/master/multifile-Z3.ome.tiff", "multifile-Z1.ome.tiff", 5),
        ("ome-tiff-companion/multifile-Z2.ome.tiff", "multifile.companion.ome", 6),
        ("oif/Cell 1 mitoEGFP.oif", "Cell 1 mitoEGFP.oif", 13),
        ("micromanager/alpha_2.0_singleplane_manual/Pos0/metadata.txt", "metadata.txt", 2),
        ("czi/s_1_t_1_c_1_z_1.czi", "s_1_t_1_c_1_z_1.czi", 1),
    ],
)
def test_a_file_given_alone_brings_its_fileset(data: Path, given: str, main: str, count: int):
    """``omerofs import part.ome.tiff`` imports what Bio-Formats would: the whole set."""
    from omerofs.imports.filesets import plan_filesets

    (plan,) = plan_filesets(data / given)
    assert plan.main.path.name == main and len(plan.files) == count
    assert len({f.rel_name for f in plan.files}) == count


@needs_data
def test_a_directory_is_planned_as_its_filesets(data: Path) -> None:
    from omerofs.imports.filesets import plan_fileset, plan_filesets

    plans = plan_filesets(data / "ome-zarr")
    assert [p.main.rel_name for p in plans] == [
        "fake-series-2.zarr/.zattrs",
        "plate-rows-2.zarr/.zattrs",
    ]
    oif = plan_filesets(data / "oif")[0]
    assert [f.rel_name for f in oif.files[:2]] == [
        "Cell 1 mitoEGFP.oif",
        "Cell 1 mitoEGFP.oif.files/s_286352832-137694875.roi",
    ]
    # the ingest mount's one-fileset-per-directory plan picks the naming main file first
    whole = plan_fileset(data / "oif")
    assert whole.main.rel_name == "oif/Cell 1 mitoEGFP.oif" and len(whole.files) == 13


ND_FILE = """"NDInfoFile", Version 1.0
"Description", File recreated from images.
"StartTime1", 20040728 14:07:01
"DoTimelapse", FALSE
"DoStage", TRUE
"NStagePositions", 2
"Stage1", "left"
"Stage2", "right"
"DoWave", TRUE
"NWavelengths", 2
"WaveName1", "DAPI"
"WaveName2", "GFP"
"DoZSeries", TRUE
"NZSteps", 2
"WaveInFileName", TRUE
"EndFile"
"""


@needs_data
def test_metamorph_nd_set(data: Path, tmp_path: Path) -> None:
    """No .nd set ships in shared/data: the real movie.stk (2 planes of 20x20 uint16)
    stands for each wavelength x stage file the .nd names, as MetamorphReader expects."""
    (tmp_path / "acq.nd").write_text(ND_FILE)
    names = [f"acq_w{w}{n}_s{s}.STK" for s in (1, 2) for w, n in ((1, "DAPI"), (2, "GFP"))]
    for name in names[:3]:
        shutil.copy(data / "stk/movie.stk", tmp_path / name)
    assert completeness(tmp_path / "acq.nd") == "4 of 5 files present; missing acq_w2GFP_s2.TIF"
    (group,) = group_files(tmp_path.iterdir())
    assert group.main.name == "acq.nd" and group.missing == ("acq_w2GFP_s2.TIF",)
    shutil.copy(data / "stk/movie.stk", tmp_path / names[3])
    found = read_images(tmp_path / "acq.nd")
    assert [(i.name, i.size_x, i.size_y, i.size_z, i.size_c, i.size_t) for i in found] == [
        ("acq.nd [left]", 20, 20, 2, 2, 1),  # NZSteps 2, NWavelengths 2, no time lapse
        ("acq.nd [right]", 20, 20, 2, 2, 1),
    ]
    (group,) = group_files(tmp_path.iterdir())
    assert len(group.files) == 5 and group.missing == ()
