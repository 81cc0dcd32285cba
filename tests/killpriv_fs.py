"""A one-file pyfuse3 file system that counts how often the kernel asks for
security.capability (run as a script by tests/test_samba_xattrs.py).

Usage: python -m tests.killpriv_fs MOUNTPOINT COUNT_FILE 0|1 (KILLPRIV_V2 asked or not)
It serves /f (in memory) until unmounted, then writes the count and whether the kernel
granted KILLPRIV_V2 to COUNT_FILE.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1


class CountingFS(pyfuse3.Operations):
    def __init__(self, killpriv: bool) -> None:
        super().__init__()
        self.handle_killpriv_v2 = killpriv  # read by the patched pyfuse3's init()
        self.data = bytearray()
        self.capability_queries = 0

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = (
            (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o666)
        )
        attr.st_size = len(self.data) if inode == FILE_INODE else 0
        attr.attr_timeout = attr.entry_timeout = 60
        return attr

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def write(self, fh, off, buf):
        self.data[off : off + len(buf)] = buf
        return len(buf)

    async def getxattr(self, inode, name, ctx):
        if name == b"security.capability":
            self.capability_queries += 1
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)


def main() -> None:
    mountpoint, count_file, killpriv = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    fs = CountingFS(killpriv)
    pyfuse3.init(fs, mountpoint, set(pyfuse3.default_options) | {"fsname=killpriv-test"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    granted = bool(getattr(pyfuse3, "killpriv_v2_enabled", lambda: False)())
    with open(count_file, "w") as f:
        f.write(f"{fs.capability_queries} {int(granted)}\n")
    os._exit(0)


if __name__ == "__main__":
    main()
