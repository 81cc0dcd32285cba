"""Patch an unpacked pyfuse3 3.5.0 sdist for FUSE passthrough and KILLPRIV_V2 (see
passthrough.h).

Every edit must match exactly once, so a different pyfuse3 fails loudly here instead
of building something half-patched. Usage: python apply.py SDIST_DIR
"""

import shutil
import sys
from pathlib import Path

EDITS = {
    "src/pyfuse3/__init__.pyx": [
        (
            "cdef int session_fd\n",
            "cdef int session_fd\n\n"
            'cdef extern from "passthrough.h" nogil:\n'
            "    int pt_install(fuse_session *se, int fd, int passthrough, int killpriv_v2)\n"
            "    int pt_backing_open(int session_fd, int fd)\n"
            "    int pt_backing_close(int session_fd, uint32_t backing_id)\n"
            "    void pt_set_reply_backing_id(int backing_id)\n"
            "    int pt_is_enabled()\n"
            "    int pt_is_offered()\n"
            "    int pt_killpriv_v2_is_enabled()\n",
        ),
        (
            "    cdef public bint nonseekable\n\n"
            "    def __cinit__(self, fh=0, direct_io=0, keep_cache=1, nonseekable=0):\n",
            "    cdef public bint nonseekable\n"
            "    cdef public int backing_id\n\n"
            "    def __cinit__(self, fh=0, direct_io=0, keep_cache=1, nonseekable=0,\n"
            "                  backing_id=0):\n"
            "        self.backing_id = backing_id\n",
        ),
        (
            "def init(ops, mountpoint, options=default_options):\n",
            "def init(ops, mountpoint, options=default_options, passthrough=False):\n",
        ),
        (
            "    session_fd = fuse_session_fd(session)\n",
            "    session_fd = fuse_session_fd(session)\n"
            "    killpriv_v2 = bool(getattr(ops, 'handle_killpriv_v2', False))\n"
            "    if passthrough or killpriv_v2:\n"
            "        res = pt_install(session, session_fd, passthrough, killpriv_v2)\n"
            "        if res != 0:\n"
            "            raise OSError(-res, 'fuse_session_custom_io failed')\n\n\n"
            "def killpriv_v2_enabled():\n"
            "    '''True once FUSE_HANDLE_KILLPRIV_V2 was granted in FUSE_INIT: the kernel\n"
            "    then asks for security.capability once per inode, not before every write.'''\n"
            "    return bool(pt_killpriv_v2_is_enabled())\n\n\n"
            "def passthrough_enabled():\n"
            "    '''True once the kernel was granted FUSE passthrough (after FUSE_INIT).'''\n"
            "    return bool(pt_is_enabled())\n\n\n"
            "def passthrough_offered():\n"
            "    '''True if the kernel offered FUSE passthrough in its INIT request.'''\n"
            "    return bool(pt_is_offered())\n\n\n"
            "def backing_open(int fd):\n"
            "    '''Register open file *fd* as a backing file; returns its backing id.'''\n"
            "    cdef int res = pt_backing_open(session_fd, fd)\n"
            "    if res < 0:\n"
            "        raise OSError(-res, 'FUSE_DEV_IOC_BACKING_OPEN: ' + strerror(-res))\n"
            "    return res\n\n\n"
            "def backing_close(int backing_id):\n"
            "    '''Forget a backing id; files opened with it keep their backing file.'''\n"
            "    cdef int res = pt_backing_close(session_fd, <uint32_t> backing_id)\n"
            "    if res < 0:\n"
            "        raise OSError(-res, 'FUSE_DEV_IOC_BACKING_CLOSE: ' + strerror(-res))\n",
        ),
    ],
    "src/pyfuse3/handlers.pxi": [
        (
            "        fi._copy_to_fuse(&c.fi)\n        ret = fuse_reply_open(c.req, &c.fi)\n",
            "        fi._copy_to_fuse(&c.fi)\n"
            "        pt_set_reply_backing_id(fi.backing_id)\n"
            "        ret = fuse_reply_open(c.req, &c.fi)\n"
            "        pt_set_reply_backing_id(0)\n",
        ),
        (
            "        fi._copy_to_fuse(&c.fi)\n"
            "        ret = fuse_reply_create(c.req, &entry.fuse_param, &c.fi)\n",
            "        fi._copy_to_fuse(&c.fi)\n"
            "        pt_set_reply_backing_id(fi.backing_id)\n"
            "        ret = fuse_reply_create(c.req, &entry.fuse_param, &c.fi)\n"
            "        pt_set_reply_backing_id(0)\n",
        ),
    ],
}


def main(root: Path) -> None:
    for name, edits in EDITS.items():
        path = root / name
        text = path.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                sys.exit(f"apply.py: {name}: expected one match of {old.splitlines()[0]!r}")
            text = text.replace(old, new)
        path.write_text(text)
    shutil.copy(Path(__file__).with_name("passthrough.h"), root / "src/pyfuse3/passthrough.h")
    # the generated C must be rebuilt from the patched .pyx
    (root / "src/pyfuse3/__init__.c").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
