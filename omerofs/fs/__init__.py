"""The FUSE side: inode table, view layout, operations and mount wiring."""
