# Shared by the install scripts (sourced, not run).

quiet() {  # run pip, hiding its notes about the machine's unreachable local indexes;
  # three attempts: a registry hiccup must not fail every later `make test`
  local attempt status
  for attempt in 1 2 3; do
    status=0
    "$@" 2> >(grep -v '^WARNING: Location' >&2) || status=$?
    [ "$status" -eq 0 ] && return 0
    echo "omerofs: attempt $attempt of: ${*:1:4} ... failed ($status)" >&2
    sleep $((attempt * 5))
  done
  return "$status"
}

pip_quiet() {  # pip_quiet PYTHON ARGS...: `PYTHON -m pip ARGS` quietly, as above (and
  # without the build backends' Python warnings, e.g. setuptools' note on editable installs)
  local py=$1
  shift
  PYTHONWARNINGS=ignore quiet "$py" -m pip "$@" -q --disable-pip-version-check
}

python_tag() {  # python_tag PYTHON: the wheel tag of that interpreter, e.g. cp311
  "$1" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")'
}

cache_wheel() {  # cache_wheel BUILT_WHEEL DIR: copy into the cache, print the cached path.
  # Written under a temporary name first: an interrupted copy must not look like a wheel.
  mkdir -p "$2"
  cp "$1" "$2/.partial.whl"
  mv "$2/.partial.whl" "$2/$(basename "$1")"
  echo "$2/$(basename "$1")"
}

cache_lock() {  # cache_lock DIR NAME: hold DIR/.NAME.lock (fd 9) until this script ends.
  # Two installs at once (two checkouts, make run beside make test) build a wheel once:
  # the second waits here, then finds the first one's wheel in the cache.
  mkdir -p "$1"
  exec 9>"$1/.$2.lock"
  if ! flock -n 9; then
    echo "omerofs: another install is building $2 in $1; waiting for it" >&2
    flock 9
  fi
}

with_progress() {  # with_progress LOG WHAT CMD...: run CMD with its output in LOG and,
  # while it runs, one line every OMEROFS_PROGRESS_EVERY (30) seconds with its last line
  local log=$1 what=$2 every=${OMEROFS_PROGRESS_EVERY:-30}
  shift 2
  "$@" >"$log" 2>&1 &
  local pid=$! start=$SECONDS
  local next=$((SECONDS + every)) status=0
  trap 'kill "$pid" 2>/dev/null; exit 130' INT TERM
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ "$SECONDS" -ge "$next" ]; then
      echo "omerofs: still building $what ($((SECONDS - start)) s): $(tail -n 1 "$log" | cut -c1-100)" >&2
      next=$((SECONDS + every))
    fi
  done
  wait "$pid" || status=$?
  trap - INT TERM
  return "$status"
}

build_failed() {  # build_failed LOG WHAT: show the end of a kept build log, then fail
  tail -n 30 "$1" >&2
  echo "omerofs: building $2 failed; last 30 lines above, the whole log is kept at $1" >&2
  exit 1
}

apt_install_services() {  # apt_install_services WHAT LOG PKG...: install Debian packages
  # that bring a server the tests start themselves (smbd, ganesha.nfsd), without letting the
  # packages' scripts start the system's own: a policy-rc.d answering 101 is in place for the
  # install when none exists. apt-get update only when the first try fails (an old list).
  local what=$1 log=$2
  shift 2
  if [ "$(id -u)" -ne 0 ]; then
    echo "omerofs: $what (${*}) is missing; install it as root: apt-get install $*" >&2
    return 0  # the tests that need it skip with this reason; nothing else needs it
  fi
  local policy=/usr/sbin/policy-rc.d placed=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    placed=1
  fi
  echo "omerofs: installing $* (Debian packages, for the $what tests)"
  local status=0
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 || status=$?
  fi
  [ -n "$placed" ] && rm -f "$policy"
  if [ "$status" -ne 0 ]; then
    echo "omerofs: installing $what failed (log: $log)" >&2
    return 1
  fi
}
