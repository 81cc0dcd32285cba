"""Small and big writes into the ingest mount with readable xattrs, against native.

Why: while getxattr works, a kernel without FUSE_HANDLE_KILLPRIV_V2 asks the daemon for
security.capability before every write(2) (issue 13/15: 4 KiB writes at 0.07 of
native). With KILLPRIV_V2 (the patched pyfuse3 asks for it) it asks once per inode.
This writes the same file natively (a directory on the staging filesystem) and through
the mount, pair by pair, and prints the median of the per-pair ratios for each mount
configuration, as a Markdown table for docs/shares.md.

Usage (root, FUSE): python tools/bench_xattr_writes.py [--pairs 5] [--no-passthrough]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.config import init_repo
from omerofs.identity import PermissionLevel

USER, UID = "bench", 3901
WORKLOADS = [(4 << 10, 64 << 20), (1 << 20, 512 << 20)]  # (block, total bytes)
CONFIGS = [
    ("xattrs off (getxattr answers ENOSYS)", ["--no-xattrs"], "1"),
    ("--xattrs, without KILLPRIV_V2 (before)", ["--xattrs"], "0"),
    ("--xattrs, with KILLPRIV_V2 (now)", ["--xattrs"], "1"),
]


def write_file(path: Path, block: int, total: int) -> float:
    """Seconds to write ``total`` bytes in ``block``-sized write(2) calls and close."""
    buf = os.urandom(block)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(total // block):
            os.write(fd, buf)
    finally:
        os.close(fd)
    return time.perf_counter() - start


class Mount:
    def __init__(self, repo: Path, mountpoint: Path, args: list[str], killpriv: str) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(exist_ok=True)
        env = {**os.environ, "OMEROFS_KILLPRIV_V2": killpriv}
        cmd = [sys.executable, "-m", "omerofs.cli", "-r", str(repo), "ingest", str(mountpoint)]
        cmd += ["--transfer", "ln", "--settle", "3600", "--foreground", *args]
        self.log = open(repo / "bench-mount.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not (mountpoint / USER).is_dir():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"bench: the ingest mount did not come up; see {self.log.name}")
            time.sleep(0.05)

    def close(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where the repository goes")
    parser.add_argument("--no-passthrough", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omerofs-xattr-bench-", dir=args.dir))
    try:
        config = init_repo(work / "repo")
        catalog = LocalCatalog(config.catalog_path, create=True)
        catalog.add_group("benchers", PermissionLevel.PRIVATE, 73901)
        catalog.add_experimenter(USER, UID, default_group="benchers")
        catalog.close()
        native = work / "native"  # beside staging/: the same filesystem
        native.mkdir()
        extra = ["--no-passthrough"] if args.no_passthrough else []
        rows = []
        for label, flags, killpriv in CONFIGS:
            mount = Mount(config.root, work / "mnt", [*flags, *extra], killpriv)
            try:
                cells = []
                for block, total in WORKLOADS:
                    ratios, speeds = [], []
                    for i in range(args.pairs):  # a temporary name: never imported
                        t_native = write_file(native / f"w{i}.part", block, total)
                        t_mount = write_file(mount.mountpoint / USER / f"w{i}.part", block, total)
                        ratios.append(t_native / t_mount)
                        speeds.append(total / t_mount / 1e6)
                        (native / f"w{i}.part").unlink()
                        (mount.mountpoint / USER / f"w{i}.part").unlink()
                    ratio, speed = statistics.median(ratios), statistics.median(speeds)
                    cells.append(f"{ratio:.2f} ({speed:.0f} MB/s)")
            finally:
                mount.close()
            rows.append(f"| {label} | {' | '.join(cells)} |")
        mode = "daemon writes (--no-passthrough)" if args.no_passthrough else "kernel passthrough"
        print(f"{mode}; ratio = native time / mount time, median of {args.pairs} pairs")
        print()
        print("| ingest mount | 4 KiB writes (64 MiB) | 1 MiB writes (512 MiB) |")
        print("| --- | --- | --- |")
        print("\n".join(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
