# omerofs — two commands do everything on a fresh Debian machine (as root):
#   make run    install what is missing, build a demo repository, mount its view
#   make test   install what is missing, lint, run the whole test suite
#   make bench  measure omerofs against the native filesystem -> docs/performance.md
VENV ?= .venv
PY := $(VENV)/bin/python
REPO ?= var/repo
VIEW ?= mnt/view

.PHONY: run test deps lint bench clean

deps:
	@bash tools/install-deps.sh $(VENV)
	@bash tools/install-pyfuse3.sh $(VENV)
	@bash tools/install-omero.sh $(VENV)

run: deps
	$(PY) -m omerofs.demo --repo $(REPO) --mount $(VIEW)

lint: deps
	$(PY) -m ruff check omerofs tests tools

test: deps lint
	$(PY) -m pytest -q tests

# Benchmarks against the native filesystem (root, FUSE, ~15 min, several GB in /var/tmp).
bench: deps
	$(PY) tools/bench.py --out docs/performance.md

clean:
	-@for m in $(VIEW); do fusermount3 -u $$m 2>/dev/null || true; done
	rm -rf var mnt .pytest_cache
