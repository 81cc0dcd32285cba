"""How long reading an image's metadata takes: one file per format from
../shared/data, and a generated 2 GiB OME-TIFF (written to /var/tmp, deleted after).

Each row: the first call in a fresh process (reader library import included, the file
evicted from the page cache with posix_fadvise), then the median of warm repeats.
Usage: .venv/bin/python tools/bench_formats.py [--repeats N] [--no-big]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the checkout
SAMPLES = [
    ("TIFF (ImageJ)", "imagej-tiff/xyzc_16bit__dna_conf_wf.tif"),
    ("OME-TIFF", "ome-tiff/4D-series.ome.tif"),
    ("OME-TIFF multi-file", "ome-tiff-multifile/master/multifile-Z1.ome.tiff"),
    ("companion.ome", "ome-tiff-companion/multifile.companion.ome"),
    ("LSM", "lsm/jimpipeline_test.lsm"),
    ("STK", "stk/movie.stk"),
    ("MMStack", "micromanager/181003_multi_pos_time_course_1_MMStack.ome.tif"),
    ("Micro-Manager metadata.txt", "micromanager/alpha_2.0_singleplane_manual/Pos0/metadata.txt"),
    ("NDTiff", "ndtiff/v3/12_bit_pycromanager_mda/12_bit_pycromanager_mda_NDTiffStack.tif"),
    ("CZI", "czi/CellDivision_T3_Z5_CH2_X240_Y170.czi"),
    ("ND2", "nd2/cluster.nd2"),
    ("LIF", "lif/LeicaLASX_wavelength-sweep_example.lif"),
    ("OIB", "oib/test.oib"),
    ("OIF", "oif/Cell 1 mitoEGFP.oif"),
    ("DV", "dv/toxo.dv"),
    ("IMS", "ims/Minimal_IMS_File.ims"),
    ("OME-Zarr", "ome-zarr/fake-series-2.zarr"),
]

_CHILD = """
import os, sys, time
from pathlib import Path
path = Path(sys.argv[1])
for p in ([path] if path.is_file() else [q for q in path.rglob('*') if q.is_file()]):
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
t = time.perf_counter()
from omerofs.formats import read_images
images = read_images(path)
first = time.perf_counter() - t
warm = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    read_images(path)
    warm.append(time.perf_counter() - t)
warm.sort()
print(first, warm[len(warm) // 2], len(images))
"""


def measure(path: Path, repeats: int) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def write_big(directory: Path) -> Path:
    """A real (not sparse) 2 GiB OME-TIFF: 256 planes of 2048 x 2048 uint16."""
    import numpy as np
    import tifffile

    path = directory / "bench-2GiB.ome.tif"
    plane = np.random.default_rng(0).integers(0, 4096, (2048, 2048), dtype=np.uint16)

    def planes():
        for i in range(256):
            yield plane + np.uint16(i)

    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(planes(), shape=(256, 2048, 2048), dtype=np.uint16, metadata={"axes": "ZYX"})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-big", action="store_true")
    args = parser.parse_args()
    rows = []
    for label, rel in SAMPLES:
        path = DATA / rel
        size = (
            path.stat().st_size
            if path.is_file()
            else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        )
        first, warm, count = measure(path, args.repeats)
        rows.append((label, rel, size, count, first, warm))
    if not args.no_big:
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="omerofs-bench-") as tmp:
            t = time.perf_counter()
            big = write_big(Path(tmp))
            written = time.perf_counter() - t
            os.sync()
            first, warm, count = measure(big, args.repeats)
            rows.append(
                ("OME-TIFF 2 GiB", f"generated, 256 IFDs ({written:.0f} s to write)",
                 big.stat().st_size, count, first, warm)
            )  # fmt: skip
    print("| format | file | size | Images | first call (cold, with import) | warm median |")
    print("|---|---|---:|---:|---:|---:|")
    for label, rel, size, count, first, warm in rows:
        print(
            f"| {label} | `{rel}` | {size / 1e6:.2f} MB | {count} | "
            f"{first * 1000:.0f} ms | {warm * 1000:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
