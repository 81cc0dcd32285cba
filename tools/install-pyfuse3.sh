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
find_wheel() { ls "$cache"/pyfuse3-$version-$tag-*.whl 2>/dev/null | head -1 || true; }
wheel=$(find_wheel)
if [ -z "$wheel" ]; then
  cache_lock "$cache" "pyfuse3-$tag"
  wheel=$(find_wheel)  # built by the install we waited for
fi
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log="$cache/pyfuse3-$version-$tag.build.log"  # outside $work: kept if the build fails
  echo "omerofs: building pyfuse3 $version with kernel passthrough (about 30 s, once; log: $log)"
  pip_quiet "$py" download --no-binary pyfuse3 --no-deps "pyfuse3==$version" -d "$work"
  tar -xzf "$work/pyfuse3-$version.tar.gz" -C "$work"
  "$py" "$patch/apply.py" "$work/pyfuse3-$version"
  with_progress "$log" "pyfuse3" "$py" -m pip wheel -q --disable-pip-version-check --no-deps \
    -w "$work/dist" "$work/pyfuse3-$version" || build_failed "$log" "the patched pyfuse3"
  wheel=$(cache_wheel "$(ls "$work"/dist/pyfuse3-*.whl)" "$cache")
  rm -f "$log"
fi
pip_quiet "$py" install --force-reinstall --no-deps "$wheel"
pip_quiet "$py" install "$wheel"  # its own dependencies (trio), if missing
"$py" -c "import pyfuse3; pyfuse3.backing_open" \
  || { echo "omerofs: the patched pyfuse3 does not import" >&2; exit 1; }
rm -f "$venv"/.omerofs-pyfuse3-*
touch "$marker"
echo "omerofs: pyfuse3 $version with kernel passthrough ready ($wheel)"
