"""MetaMorph multi-dimensional acquisitions: an ``.nd`` text file naming one TIFF or STK
per wavelength, stage position and time point (``<base>_w1DAPI_s1_t1.TIF``), as
Bio-Formats' MetamorphReader reads them. One Image per stage position."""

from __future__ import annotations

from pathlib import Path

from omerofs.catalog.protocol import ImageInfo
from omerofs.formats.base import Parts, Series, damaged, images, one_line

SUFFIXES = (".nd",)
_EXTENSIONS = (".TIF", ".tif", ".STK", ".stk", ".tiff", ".TIFF")


def claims(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def parse(path: Path) -> dict[str, str]:
    """The ``"Key", value`` lines of an .nd file."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        key, sep, value = line.partition(",")
        if sep:
            values[key.strip().strip('"')] = value.strip().strip('"')
    if "NDInfoFile" not in values:
        raise ValueError("no NDInfoFile line")
    return values


def _count(nd: dict[str, str], flag: str, key: str) -> int:
    if nd.get(flag, "FALSE").upper() != "TRUE":
        return 1
    try:
        return max(1, int(nd.get(key, "1")))
    except ValueError:
        return 1


def layout(path: Path) -> tuple[dict[str, str], list[list[str]]]:
    """Per stage position, the plane file stems (without extension) the .nd names."""
    nd = parse(path)
    waves = _count(nd, "DoWave", "NWavelengths")
    stages = _count(nd, "DoStage", "NStagePositions")
    times = _count(nd, "DoTimelapse", "NTimePoints")
    base = path.name[: -len(".nd")]
    result = []
    for s in range(stages):
        stems = []
        for t in range(times):
            for w in range(waves):
                stem = base
                if nd.get("DoWave", "").upper() == "TRUE":
                    stem += f"_w{w + 1}"
                    if nd.get(f"WaveInFileName{w + 1}", "TRUE").upper() == "TRUE":
                        stem += nd.get(f"WaveName{w + 1}", "")
                if stages > 1:
                    stem += f"_s{s + 1}"
                if times > 1:
                    stem += f"_t{t + 1}"
                stems.append(stem)
        result.append(stems)
    return nd, result


def _find(directory: Path, stem: str) -> Path | None:
    for ext in _EXTENSIONS:
        p = directory / (stem + ext)
        if p.is_file():
            return p
    return None


def read(path: Path) -> list[ImageInfo]:
    from omerofs.formats import tiff

    try:
        nd, stages = layout(path)
    except (OSError, ValueError) as exc:
        raise damaged(path, f"unreadable .nd file: {one_line(exc)}") from None
    stems = [stem for stage in stages for stem in stage]
    found = [_find(path.parent, stem) for stem in stems]
    missing = [s for s, f in zip(stems, found, strict=True) if f is None]
    if missing:
        total = len(stems) + 1
        raise damaged(
            path, f"{total - len(missing)} of {total} files present; missing {missing[0]}.TIF"
        )
    first = tiff.read(found[0])[0]  # type: ignore[arg-type]
    sizes = {
        "X": first.size_x,
        "Y": first.size_y,
        "Z": _count(nd, "DoZSeries", "NZSteps"),
        "C": _count(nd, "DoWave", "NWavelengths"),
        "T": _count(nd, "DoTimelapse", "NTimePoints"),
    }
    series = [
        Series(dict(sizes), first.pixel_type, nd.get(f"Stage{s + 1}") or None)
        for s in range(len(stages))
    ]
    return images(path.name, series)


def parts(path: Path) -> Parts:
    try:
        _nd, stages = layout(path)
    except (OSError, ValueError):
        return Parts()
    present, missing = [], []
    for stem in (s for stage in stages for s in stage):
        found = _find(path.parent, stem)
        (present.append(found) if found else missing.append(stem + ".TIF"))
    return Parts(tuple(present), tuple(missing))
