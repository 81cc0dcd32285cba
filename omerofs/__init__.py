"""omerofs: FUSE views and ingest workflows for OMERO's ManagedRepository."""

__version__ = "0.1.0"
