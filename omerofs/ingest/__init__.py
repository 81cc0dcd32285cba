"""Getting files into the repository: fileset grouping, image metadata, transfers, import."""
