"""One folder per backend: its catalog and its import writer (a backend never imports
the ingest pipeline; the shared import rules live in omerofs.imports)."""
