"""``make run``: a demo repository with users, groups of every permission level and
sample images, and its read-only view mounted in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from omerofs.backends.local import local_importer
from omerofs.backends.local.catalog import LocalCatalog
from omerofs.config import CONFIG_NAME, init_repo, load_config
from omerofs.errors import OmerofsError
from omerofs.identity import PermissionLevel
from omerofs.imports.importer import Target

USERS = [("alice", 2001), ("bob", 2002), ("carol", 2003), ("dave", 2004)]
GROUPS = [  # name, level, gid, members (name, is_owner)
    ("confocal", PermissionLevel.PRIVATE, 72001, [("alice", True), ("bob", False)]),
    (
        "imaging",
        PermissionLevel.READ_ONLY,
        72002,
        [("alice", False), ("bob", False), ("carol", False)],
    ),
    ("screening", PermissionLevel.READ_ANNOTATE, 72003, [("bob", True), ("carol", False)]),
    ("facility", PermissionLevel.READ_WRITE, 72004, [("alice", False), ("dave", False)]),
]
IMPORTS = [  # user, group, transfer, target, sample
    ("alice", "confocal", "cp", "Project:name:Mitosis/Dataset:name:Day1", "stack"),
    ("bob", "confocal", "upload", "Project:name:Mitosis/Dataset:name:Day1", "stack"),
    ("alice", "imaging", "ln", "Dataset:name:Overview", "rgb"),
    ("carol", "imaging", "ln_s", None, "timelapse"),
    ("bob", "screening", "cp", "Project:name:Screen/Dataset:name:Plate1", "multi"),
    ("dave", "facility", "upload", "Dataset:name:QC", "stack"),
]


def _sample(kind: str, directory: Path) -> Path:
    rng = np.random.default_rng(len(kind))
    if kind == "multi":  # a multi-file fileset: a directory with an image and a companion
        directory = directory / "plate1"
        directory.mkdir()
        data = rng.integers(0, 4000, (4, 128, 128), dtype=np.uint16)
        tifffile.imwrite(directory / "well_A1.ome.tif", data, metadata={"axes": "ZYX"})
        (directory / "acquisition.txt").write_text("objective=20x\nexposure=50ms\n")
        return directory
    path = directory / f"{kind}.tif"
    if kind == "rgb":
        tifffile.imwrite(
            path, rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), photometric="rgb"
        )
    elif kind == "timelapse":
        tifffile.imwrite(
            path,
            rng.integers(0, 255, (8, 96, 96), dtype=np.uint8),
            imagej=True,
            metadata={"axes": "TYX"},
        )
    else:
        yy, xx = np.mgrid[0:256, 0:256]
        stack = np.stack([(xx * (z + 1) + yy) % 4096 for z in range(5)]).astype(np.uint16)
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    return path


def build_demo(root: Path) -> None:
    """Create the demo repository (only if it does not exist yet)."""
    if (root / CONFIG_NAME).exists():
        print(f"using the existing demo repository at {root}")
        return
    config = init_repo(root)
    catalog = LocalCatalog(config.catalog_path, create=True)
    for name, level, gid, _ in GROUPS:
        catalog.add_group(name, level, gid)
    for name, uid in USERS:
        catalog.add_experimenter(name, uid)
    for group, _, _, members in GROUPS:
        for user, owner in members:
            catalog.add_member(group, user, owner=owner)
    catalog.add_experimenter("admin", 2000, admin=True)
    importer = local_importer(config, catalog)
    sources = root / "demo-sources"
    sources.mkdir(exist_ok=True)
    for user, group, mode, target, sample in IMPORTS:
        work = Path(tempfile.mkdtemp(dir=sources))
        work.chmod(0o755)  # the samples double as files users may copy into the ingest area
        owner, grp = importer.resolve_identity(user, group)
        fs = importer.import_fileset_path(
            _sample(sample, work), owner, grp, mode, Target.parse(target)
        )
        print(f"  imported {sample} for {user} in {group} ({mode}) -> {fs.template_prefix}")
    catalog.close()


def _reachable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default="var/repo")
    parser.add_argument("--mount", default="mnt/view")
    parser.add_argument("--ingest", default="mnt/ingest")
    args = parser.parse_args(argv)
    root, mountpoint = Path(args.repo).absolute(), Path(args.mount).absolute()
    ingest = Path(args.ingest).absolute()
    logging.basicConfig(level=logging.WARNING, format="omerofs: %(message)s")
    try:
        print(f"building the demo repository at {root}")
        build_demo(root)
        mountpoint.mkdir(parents=True, exist_ok=True)
        ingest.mkdir(parents=True, exist_ok=True)
        from omerofs.fs import mount

        config = load_config(root)
        pid = mount.spawn_daemon(config, ingest, ["ingest", "--settle", "2"])
        try:
            print(_instructions(root, mountpoint, ingest))
            mount.serve_view(config, mountpoint)
        finally:
            _stop_ingest(ingest, pid)
    except OmerofsError as exc:
        print(f"omerofs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    print("unmounted; bye")
    return 0


def _stop_ingest(ingest: Path, pid: int) -> None:
    """Unmount the ingest area we started and wait for its daemon (ours, by pid)."""
    from omerofs.fs import mount

    with contextlib.suppress(OmerofsError):
        mount.unmount(ingest)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


def _instructions(root: Path, mountpoint: Path, ingest: Path) -> str:
    as_user = "setpriv --reuid {uid} --regid {uid} --clear-groups"
    lines = [
        "",
        f"The read-only view of {root} is being mounted at {mountpoint}.",
        "Users (uid): " + ", ".join(f"{n} ({u})" for n, u in USERS) + ", admin (2000, OMERO admin)",
        "Try, in another shell:",
        f"  ls -l {mountpoint}",
        f"  {as_user.format(uid=2002)} find {mountpoint}/bob",
        f"  {as_user.format(uid=2003)} ls -lR {mountpoint}/carol/Groups",
        f"  {as_user.format(uid=2003)} ls {mountpoint}/alice        # Permission denied",
        f"  {as_user.format(uid=2001)} sha1sum {mountpoint}/alice/Groups/confocal/Projects/"
        "Mitosis/Day1/*",
        f"  .venv/bin/omerofs -r {root} import SOME.tif --user carol -T Dataset:name:New"
        "   # appears within a second",
        f"  .venv/bin/omerofs -r {root} ls",
        f"The ingest area is mounted at {ingest}; write as a user and it is imported 2 s "
        "after the last file closes:",
        f"  {as_user.format(uid=2003)} sh -c 'mkdir -p {ingest}/carol/Project/Day2 && "
        f"cp {root}/demo-sources/*/timelapse.tif {ingest}/carol/Project/Day2/new.tif'",
        f"  .venv/bin/omerofs -r {root} status",
        f"  {as_user.format(uid=2003)} ls {mountpoint}/carol/Groups/imaging/Projects/Project/Day2",
        "Press Ctrl-C here to unmount both.",
    ]
    if not _reachable_by_others(mountpoint.parent):
        lines.insert(
            1,
            f"NOTE: a parent of {mountpoint} is not searchable by other users; "
            "they will get 'Permission denied' before reaching the view.",
        )
    return "\n".join(lines)


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
