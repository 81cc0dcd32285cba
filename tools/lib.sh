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
