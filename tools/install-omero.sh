#!/usr/bin/env bash
# Install omero-py (the `omero` extra) into the venv, idempotently: `make omero`, and
# `make test` (the offline OMERO tests use real omero-py objects). `make run` does not.
#
# omero-py 5.23 needs zeroc-ice 3.6.5, which PyPI has only as a source distribution that
# does not compile on Python >= 3.11 as shipped; the two one-line fixes are applied below
# (docs/install.md says what they are and why). The wheel is built once into a cache
# outside the repository (~/.cache/omerofs/wheels, override with OMEROFS_WHEEL_CACHE) and
# installed from there; later runs only check that `import omero.clients` works.
# Usage: tools/install-omero.sh VENV_DIR
set -euo pipefail
venv=${1:-.venv}
py="$venv/bin/python"
ice_version=3.6.5
omero_version=5.23.0
cache=${OMEROFS_WHEEL_CACHE:-$HOME/.cache/omerofs/wheels}
# shellcheck source=tools/lib.sh
. "$(dirname "$0")/lib.sh"

installed=$("$py" -m pip show omero-py 2>/dev/null || true)
if [[ "$installed" == *"Version: $omero_version"* ]] \
   && "$py" -c "import omero.clients, omero.gateway, Ice" 2>/dev/null; then
  exit 0
fi

packages=(libssl-dev libbz2-dev g++)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "omerofs: installing ${missing[*]} (to build zeroc-ice)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

tag=$(python_tag "$py")
find_wheel() { ls "$cache"/zeroc_ice-$ice_version-$tag-*.whl 2>/dev/null | head -1 || true; }
wheel=$(find_wheel)
if [ -z "$wheel" ]; then
  cache_lock "$cache" "zeroc-ice-$tag"
  wheel=$(find_wheel)  # built by the install we waited for
fi
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log="$cache/zeroc-ice-$ice_version-$tag.build.log"  # outside $work: kept on failure
  echo "omerofs: building zeroc-ice $ice_version for $tag (about 6-9 minutes on 2 cores, once; log: $log)"
  pip_quiet "$py" download --no-binary zeroc-ice --no-deps "zeroc-ice==$ice_version" -d "$work"
  tar -xzf "$work/zeroc-ice-$ice_version.tar.gz" -C "$work"
  src="$work/zeroc-ice-$ice_version"
  # Fix 1: <eval.h> is gone in Python 3.11; Python.h declares what it held.
  sed -i 's|^#include <eval.h>|// eval.h: removed in Python 3.11|' "$src/src/Slice.cpp"
  # Fix 2: PyThreadState.frame is gone; PyThreadState_GetFrame returns a new reference,
  # held by a PyObjectHandle so it is released when the function returns.
  sed -i 's|PyFrameObject \*f = PyThreadState_GET()->frame;|PyObjectHandle frame(reinterpret_cast<PyObject*>(PyThreadState_GetFrame(PyThreadState_GET())));\n    PyObject* f = frame.get();|' \
    "$src/src/Util.cpp"
  grep -q "PyThreadState_GetFrame" "$src/src/Util.cpp" || { echo "omerofs: zeroc-ice patch did not apply" >&2; exit 1; }
  builder="$work/venv"
  "$py" -m venv "$builder"
  pip_quiet "$builder/bin/python" install "setuptools<70" wheel
  (cd "$src" && with_progress "$log" "zeroc-ice" "$builder/bin/python" setup.py -q build_ext \
      --parallel "$(nproc)" bdist_wheel -d "$work/dist") || build_failed "$log" "zeroc-ice"
  wheel=$(cache_wheel "$(ls "$work"/dist/zeroc_ice-*.whl)" "$cache")
  rm -f "$log"
fi
pip_quiet "$py" install "$wheel"
pip_quiet "$py" install "omero-py==$omero_version"
"$py" -c "import omero.clients, omero.gateway" \
  || { echo "omerofs: omero-py installed but does not import" >&2; exit 1; }
echo "omerofs: omero-py $omero_version ready (zeroc-ice from $wheel)"
