"""A Samba share of the ingest mount against a Samba share of a plain directory.

Why: issue 13's target for the Samba front door is >= 0.9 of a plain share for smbclient
puts (one 2 GiB file; 2,000 small files). Both shares are served by one real smbd on
127.0.0.1 (tests/samba.py) with the same settings (omerofs.shares.INGEST), the plain
directory on the staging filesystem; puts alternate pair by pair, the figure is the
median of the per-pair ratios (plain time / ingest time). The ingest mount runs with
readable xattrs, as the recipe asks, and a settle time longer than the run (no imports
compete with the puts).

Usage (root, FUSE, Samba): python tools/bench_samba.py [--pairs 3] [--gib 2] [--files 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omerofs.backends.local.catalog import LocalCatalog  # noqa: E402
from omerofs.config import init_repo  # noqa: E402
from omerofs.identity import PermissionLevel  # noqa: E402
from omerofs.shares import INGEST  # noqa: E402
from tests.conftest import MountedView  # noqa: E402
from tests.samba import Smbd, samba_missing, unix_users  # noqa: E402

USER, UID = "bench", 3901


def timed_put(smbd: Smbd, share: str, commands: str) -> float:
    start = time.perf_counter()
    smbd.client(USER, share, commands, timeout=1800)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--file-kib", type=int, default=64)
    parser.add_argument("--case-insensitive", action="store_true", help="both shares")
    args = parser.parse_args()
    if reason := samba_missing():
        raise SystemExit(f"bench_samba: {reason}")
    base = Path(tempfile.mkdtemp(prefix="omerofs-samba-bench-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        with unix_users({USER: UID}):
            run(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, args: argparse.Namespace) -> None:
    config = init_repo(base / "repo")
    catalog = LocalCatalog(config.catalog_path, create=True)
    catalog.add_group("benchers", PermissionLevel.PRIVATE, 73901)
    catalog.add_experimenter(USER, UID, default_group="benchers")
    src = base / "src"
    (src / "small").mkdir(parents=True)
    block = os.urandom(64 << 20)
    with open(src / "big.bin", "wb") as f:
        for _ in range(int(args.gib * (1 << 30)) // len(block)):
            f.write(block)
    for i in range(args.files):
        (src / "small" / f"f{i:05d}.bin").write_bytes(os.urandom(args.file_kib << 10))
    os.chmod(src, 0o755)
    plain = base / "plain" / USER  # the same filesystem as staging/
    plain.mkdir(parents=True)
    os.chown(plain, UID, 100)
    plain.chmod(0o700)
    (base / "plain").chmod(0o755)
    mountpoint = base / "ingest"
    mountpoint.mkdir()
    flags = ("ingest", "--transfer", "ln", "--settle", "36000", "--xattrs")
    mount = MountedView(config.root, mountpoint, flags)
    smbd = None
    try:
        section = ["", "[plain]", f"   path = {base / 'plain'}/%u", f"   valid users = {USER}"]
        keys = {**INGEST, **({"case sensitive": "auto"} if args.case_insensitive else {})}
        section += [f"   {k} = {v}".rstrip() for k, v in keys.items()]
        extra = "\n".join(section) + "\n"
        smbd = Smbd(base / "samba", config, catalog, mountpoint, None, extra,
                    case_insensitive=args.case_insensitive)  # fmt: skip
        smbd.add_user(USER)
        shares = {"plain": plain, "omerofs-ingest": mountpoint / USER}
        results: dict[str, list[float]] = {"big": [], "small": []}
        speeds: dict[str, list[float]] = {"big": [], "small": []}
        for i in range(args.pairs):
            times = {}
            order = list(shares.items())  # alternate who goes first (page cache, writeback)
            for share, local in order if i % 2 == 0 else order[::-1]:
                big = timed_put(smbd, share, f'put "{src / "big.bin"}" big{i}.bin')
                small = timed_put(
                    smbd, share, f'mkdir s{i}; cd s{i}; lcd "{src / "small"}"; prompt off; mput *'
                )
                times[share] = (big, small)
                (local / f"big{i}.bin").unlink()
                shutil.rmtree(local / f"s{i}")
            for k, key in enumerate(("big", "small")):
                results[key].append(times["plain"][k] / times["omerofs-ingest"][k])
                speeds[key].append(times["omerofs-ingest"][k])
        size = int(args.gib * (1 << 30)) // len(block) * len(block)
        big_mb = size / statistics.median(speeds["big"]) / 1e6
        files_s = args.files / statistics.median(speeds["small"])
        case = "case-insensitive" if args.case_insensitive else "case sensitive = yes"
        print(f"smbclient put over SMB3 on 127.0.0.1, {case}; median of {args.pairs} pairs")
        print()
        print("| workload | ingest share / plain share | ingest share |")
        print("| --- | --- | --- |")
        print(f"| one {args.gib:g} GiB file | {statistics.median(results['big']):.2f} "
              f"| {big_mb:.0f} MB/s |")  # fmt: skip
        print(f"| {args.files} files of {args.file_kib} KiB | "
              f"{statistics.median(results['small']):.2f} | {files_s:.0f} files/s |")  # fmt: skip
    finally:
        if smbd is not None:
            smbd.stop()
        mount.close()
        catalog.close()


if __name__ == "__main__":
    main()
