#!/usr/bin/env bash
# Install pyfuse3 with the omerofs passthrough patch into the venv, idempotently.
#
# pyfuse3 3.5 on libfuse 3.14 cannot use FUSE passthrough (Linux >= 6.9), which lets the
# kernel read and write opened files without the daemon. tools/pyfuse3-passthrough/
# adds it (see passthrough.h for how). This script builds the patched wheel once from
# PyPI's sdist into ~/.cache/omerofs/wheels (override with OMEROFS_WHEEL_CACHE), keyed
# by a hash of the patch, and installs it; later runs only check what is installed.
# Usage: tools/install-pyfuse3.sh VENV_DIR
set -euo pipefail
venv=${1:-.venv}
py="$venv/bin/python"
version=3.5.0
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/lib.sh
. "$here/lib.sh"
patch="$here/pyfuse3-passthrough"
key=$(cat "$patch/apply.py" "$patch/passthrough.h" | sha256sum | cut -c1-12)
marker="$venv/.omerofs-pyfuse3-$key"
if [ -f "$marker" ] && "$py" -c "import pyfuse3; pyfuse3.backing_open" 2>/dev/null; then
  exit 0
fi

cache="${OMEROFS_WHEEL_CACHE:-$HOME/.cache/omerofs/wheels}/pyfuse3-passthrough-$key"
tag=$(python_tag "$py")
wheel=$(ls "$cache"/pyfuse3-$version-$tag-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "omerofs: building pyfuse3 $version with kernel passthrough (about 30 s, once)"
  quiet "$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
    "pyfuse3==$version" -d "$work"
  tar -xzf "$work/pyfuse3-$version.tar.gz" -C "$work"
  "$py" "$patch/apply.py" "$work/pyfuse3-$version"
  if ! quiet "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/dist" \
         "$work/pyfuse3-$version" >"$work/build.log" 2>&1; then
    tail -30 "$work/build.log" >&2
    echo "omerofs: building the patched pyfuse3 failed (last 30 lines above)" >&2
    exit 1
  fi
  wheel=$(cache_wheel "$(ls "$work"/dist/pyfuse3-*.whl)" "$cache")
fi
quiet "$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$py" -c "import pyfuse3; pyfuse3.backing_open" \
  || { echo "omerofs: the patched pyfuse3 does not import" >&2; exit 1; }
rm -f "$venv"/.omerofs-pyfuse3-*
touch "$marker"
echo "omerofs: pyfuse3 $version with kernel passthrough ready ($wheel)"
