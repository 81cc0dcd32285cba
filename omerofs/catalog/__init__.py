"""Catalog backends: what OMERO knows about users, groups, filesets and containers."""
