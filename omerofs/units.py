"""Install omerofs as a service: two systemd unit templates and ``mount.fuse.omerofs``.

    python -m omerofs.units install [--repo DIR] [--units-dir D] [--sbin-dir D]
    (make install-units)

The units are templates over the mountpoint, so one machine can serve several:
``omerofs-view@mnt-omero.service`` serves /mnt/omero (``systemd-escape --path``). The
repository comes from ``/etc/omerofs/omerofs.env`` (``OMEROFS_REPO=…``, written by
``--repo``), and per mountpoint from ``/etc/omerofs/<instance>.env`` (e.g.
``OMEROFS_METRICS=9464``, or another repository). ``Type=notify``: the daemon tells
systemd once the kernel has answered FUSE_INIT (sdnotify.py); SIGTERM unmounts
cleanly; ``Restart=on-failure`` brings a crashed daemon back, clearing its stale mount.
The commands point at this interpreter, so the venv they were installed from is the one
that runs. docs/service.md is the admin's guide.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from omerofs.errors import OmerofsError, UsageError

UNITS_DIR = Path("/etc/systemd/system")
SBIN_DIR = Path("/sbin")
ENV_DIR = Path("/etc/omerofs")
HELPER = "mount.fuse.omerofs"

_UNIT = """\
# Installed by `python -m omerofs.units install` (docs/service.md); reinstall to update.
[Unit]
Description=omerofs {what} at %f
{docs}After=local-fs.target network-online.target
Wants=network-online.target
RequiresMountsFor=%f
# a daemon that keeps failing (a broken omerofs.toml) stops being restarted
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile=-{env_dir}/omerofs.env
EnvironmentFile=-{env_dir}/%i.env
ExecStart={python} -m omerofs.cli {command} %f --foreground
# SIGTERM: the daemon unmounts and exits 0; an import in progress is finished or
# rolled back at the next start (docs/ingest.md), never half-recorded
KillSignal=SIGTERM
TimeoutStopSec=120
Restart=on-failure
RestartSec=5
# exit status 2 is a usage error (bad option or configuration): restarting cannot help
RestartPreventExitStatus=2

[Install]
WantedBy=multi-user.target
"""

UNITS = {
    "omerofs-view@.service": {"what": "read-only view", "command": "mount"},
    "omerofs-ingest@.service": {"what": "ingest mount", "command": "ingest"},
}

_HELPER_SCRIPT = """\
#!/bin/sh
# mount(8) helper for `mount -t fuse.omerofs` and fstab lines (docs/service.md).
# Installed by `python -m omerofs.units install`; runs the omerofs it was installed from.
exec {python} -m omerofs.mount_helper "$@"
"""


def render_unit(name: str, python: str = sys.executable, env_dir: Path = ENV_DIR) -> str:
    guide = Path(__file__).resolve().parents[1] / "docs" / "service.md"
    docs = f"Documentation=file://{guide}\n" if guide.is_file() else ""
    return _UNIT.format(python=python, env_dir=env_dir, docs=docs, **UNITS[name])


def render_helper(python: str = sys.executable) -> str:
    return _HELPER_SCRIPT.format(python=python)


def install(
    units_dir: Path = UNITS_DIR,
    sbin_dir: Path = SBIN_DIR,
    env_dir: Path = ENV_DIR,
    repo: Path | None = None,
    python: str = sys.executable,
    reload: bool = True,
) -> list[Path]:
    """Write the units, the helper and (with ``repo``) the environment file; return
    what was written. Files are replaced whole (written beside, then renamed)."""
    written = []
    for name in UNITS:
        written.append(_write(units_dir / name, render_unit(name, python, env_dir), 0o644))
    written.append(_write(sbin_dir / HELPER, render_helper(python), 0o755))
    if repo is not None:
        repo = repo.absolute()
        if not (repo / "omerofs.toml").is_file():
            raise UsageError(f"{repo} is not an omerofs repository (no omerofs.toml)")
        env_dir.mkdir(parents=True, exist_ok=True)
        text = f"# read by the omerofs units (docs/service.md)\nOMEROFS_REPO={repo}\n"
        written.append(_write(env_dir / "omerofs.env", text, 0o644))
    if reload and Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    return written


def uninstall(units_dir: Path = UNITS_DIR, sbin_dir: Path = SBIN_DIR) -> list[Path]:
    removed = []
    for path in [*(units_dir / n for n in UNITS), sbin_dir / HELPER]:
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def _write(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m omerofs.units",
        description="install the omerofs systemd units and mount.fuse.omerofs",
    )
    parser.add_argument("action", choices=["install", "uninstall", "print"])
    parser.add_argument("--repo", type=Path, help="write OMEROFS_REPO=DIR to omerofs.env")
    parser.add_argument("--units-dir", type=Path, default=UNITS_DIR)
    parser.add_argument("--sbin-dir", type=Path, default=SBIN_DIR)
    parser.add_argument("--env-dir", type=Path, default=ENV_DIR)
    args = parser.parse_args(argv)
    try:
        if args.action == "print":
            for name in UNITS:
                print(f"# {args.units_dir / name}\n{render_unit(name, env_dir=args.env_dir)}")
            print(f"# {args.sbin_dir / HELPER}\n{render_helper()}")
            return 0
        if args.action == "uninstall":
            for path in uninstall(args.units_dir, args.sbin_dir):
                print(f"removed {path}")
            return 0
        for path in install(args.units_dir, args.sbin_dir, args.env_dir, args.repo):
            print(f"installed {path}")
    except (OmerofsError, OSError) as exc:
        print(f"omerofs: {exc}", file=sys.stderr)
        return 1
    print(
        "next: systemctl enable --now "
        '"omerofs-view@$(systemd-escape --path /mnt/omero).service" (docs/service.md)'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
