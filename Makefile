# omerofs — two commands do everything on a fresh Debian machine (as root):
#   make run    install what the embedded backend needs, build a demo repository, mount it
#   make test   install everything (with the OMERO extra), lint, run the whole test suite
#   make bench  measure omerofs against the native filesystem -> docs/performance.md
#   make omero  add the OMERO extra (omero-py; zeroc-ice is built once, ~6-9 min)
#   make install-units  install the systemd units and mount.fuse.omerofs (docs/service.md)
VENV ?= .venv
PY := $(VENV)/bin/python
REPO ?= var/repo
VIEW ?= mnt/view

.PHONY: run test test-services deps omero lint bench clean install-units

# what the embedded backend needs (pyfuse3 patched and built once into a cache)
deps:
	@bash tools/install-deps.sh $(VENV)

# the OMERO backend's omero-py; the offline OMERO tests need it, so `make test` too
omero: deps
	@bash tools/install-omero.sh $(VENV)

run: deps
	$(PY) -m omerofs.demo --repo $(REPO) --mount $(VIEW)

lint: deps
	$(PY) -m ruff check omerofs tests tools

# the real servers the share tests start on loopback (smbd, ganesha.nfsd): Debian packages
test-services:
	@bash tools/install-samba.sh
	@bash tools/install-ganesha.sh

test: deps omero lint test-services
	$(PY) -m pytest -q tests

# Benchmarks against the native filesystem (root, FUSE, ~15 min, several GB in /var/tmp).
bench: deps
	$(PY) tools/bench.py --out docs/performance.md

install-units: deps
	$(PY) -m omerofs.units install

clean:
	-@for m in $(VIEW); do fusermount3 -u $$m 2>/dev/null || true; done
	rm -rf var mnt .pytest_cache
