#!/usr/bin/env bash
# Install what omerofs needs on a Debian machine, idempotently and fast when done:
# system packages (fuse3, libfuse3-dev, pkg-config, a compiler), a virtualenv, the
# patched pyfuse3 (tools/install-pyfuse3.sh: built once into a cache) and the package
# with its test tools. Not the OMERO extra: `make omero` (tools/install-omero.sh).
# Usage: tools/install-deps.sh VENV_DIR
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$here/tools/lib.sh"

packages=(fuse3 libfuse3-dev pkg-config gcc make python3-dev python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "omerofs: missing system packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "omerofs: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "omerofs: /dev/fuse is missing; FUSE is not available here" >&2; exit 1; }

python=${PYTHON:-python3}
stamp="$venv/.omerofs-installed"
if [ ! -x "$venv/bin/python" ]; then
  echo "omerofs: creating the virtualenv $venv"
  "$python" -m venv "$venv"
fi
# pyfuse3 first: the package's own pin (pyfuse3==3.5.0) is then already satisfied and
# pip does not build the unpatched one from source only to have it replaced
bash "$here/tools/install-pyfuse3.sh" "$venv"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "omerofs: installing omerofs and its Python dependencies into $venv"
  pip_quiet "$venv/bin/python" install --upgrade pip
  pip_quiet "$venv/bin/python" install -e "$here[test]"
  touch "$stamp"
fi
