"""``mount.fuse.omerofs``: what mount(8) runs for ``mount -t fuse.omerofs`` and for
``fuse.omerofs`` lines in /etc/fstab, as sshfs and s3ql ship theirs.

    mount -t fuse.omerofs /srv/omerofs /mnt/omero -o view
    mount -t fuse.omerofs /srv/omerofs /mnt/ingest -o ingest,transfer=cp,settle=10
    /srv/omerofs  /mnt/omero  fuse.omerofs  view,_netdev,nofail  0 0

mount(8) calls ``mount.fuse.omerofs SOURCE MOUNTPOINT [-sfnv] [-N NS] -o OPTIONS``; the
source is the repository. The helper starts the daemon detached (``omerofs mount`` or
``omerofs ingest``) and returns once the mount is up, as mount(8) expects. Options
mount(8) or systemd handle themselves (``rw``, ``noauto``, ``_netdev``, ``x-systemd.*``
…) are accepted and ignored; an option omerofs does not know is an error, never
silently dropped. Exit status as mount(8) documents: 1 bad usage, 32 mount failure.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from omerofs.address import parse_address
from omerofs.errors import UsageError
from omerofs.imports.transfer import MODES

USAGE_EXIT, FAILURE_EXIT = 1, 32
ROLES = {"view": "mount", "ingest": "ingest"}
# what mount(8), the kernel's generic flags or systemd's fstab generator own
IGNORED = {
    "rw",
    "ro",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "async",
    "sync",
    "allow_other",  # always on
    "default_permissions",  # always on
}
IGNORED_PREFIXES = ("x-", "comment=", "_")


@dataclass
class MountRequest:
    repo: str
    mountpoint: str
    role: str = "view"
    options: list[str] = field(default_factory=list)  # omerofs command-line options

    def argv(self) -> list[str]:
        """The ``omerofs`` command line that serves this mount (detached)."""
        return ["-r", self.repo, ROLES[self.role], self.mountpoint, *self.options]


def parse(argv: Sequence[str]) -> MountRequest:
    """mount(8)'s calling convention -> what to run; UsageError for anything unclear."""
    positional: list[str] = []
    options: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "-o":
            if not args:
                raise UsageError("-o needs a list of options")
            options += [o for o in args.pop(0).split(",") if o]
        elif arg.startswith("-o") and len(arg) > 2:
            options += [o for o in arg[2:].split(",") if o]
        elif arg == "-N":  # a mount namespace: not supported, say so
            raise UsageError("-N (mount namespaces) is not supported")
        elif arg in ("-s", "-f", "-n", "-v", "--"):
            continue  # sloppy, fake, no-mtab, verbose: nothing to do for a FUSE helper
        elif arg.startswith("-"):
            raise UsageError(f"unknown argument {arg!r}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError("usage: mount.fuse.omerofs REPOSITORY MOUNTPOINT [-o OPTIONS]")
    request = MountRequest(*positional)
    roles = [o for o in options if o in ROLES]
    if len(set(roles)) > 1:
        raise UsageError("give either -o view or -o ingest, not both")
    if roles:
        request.role = roles[0]
    for option in options:
        if option in ROLES or option in IGNORED or option.startswith(IGNORED_PREFIXES):
            continue
        request.options += _translate(option, request.role)
    return request


def _translate(option: str, role: str) -> list[str]:
    name, has_value, value = option.partition("=")
    if name == "metrics" and has_value:
        parse_address(value)
        return ["--metrics", value]
    if name == "nopassthrough" and not has_value:
        return ["--no-passthrough"]
    if role == "ingest":
        if name == "transfer" and has_value:
            if value not in MODES:
                raise UsageError(f"-o transfer={value}: expected one of {', '.join(MODES)}")
            return ["--transfer", value]
        if name in ("settle", "concurrency") and has_value:
            return [f"--{name}", value]  # checked by `omerofs ingest` like its own options
        if name in ("xattrs", "noxattrs") and not has_value:
            return ["--xattrs" if name == "xattrs" else "--no-xattrs"]
    known = "view, ingest, metrics=ADDR, nopassthrough"
    if role == "ingest":
        known += ", transfer=MODE, settle=SECONDS, concurrency=N, xattrs, noxattrs"
    raise UsageError(f"unknown mount option {option!r} for -o {role} (known: {known})")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        request = parse(argv)
    except UsageError as exc:
        print(f"omerofs: {exc}", file=sys.stderr)
        return USAGE_EXIT
    from omerofs.cli import main as omerofs_main

    status = omerofs_main(request.argv())
    if status == 0:
        return 0
    return USAGE_EXIT if status == 2 else FAILURE_EXIT


if __name__ == "__main__":
    sys.exit(main())
