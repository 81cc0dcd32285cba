"""The import rules and transfers every backend shares; they know no backend."""
