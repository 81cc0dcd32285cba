"""Model-based test: random POSIX operations on the ingest mount (before any import
kicks in: the settle time is an hour) must behave exactly like a plain directory."""

from __future__ import annotations

import itertools
import os
import shutil
import stat

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import needs_fuse, needs_root

pytestmark = [needs_fuse, needs_root]
NAMES = st.sampled_from(["a.tif", "b.tif", "c", "d.dat", "sub"])
DATA = st.binary(max_size=3000)
_counter = itertools.count()


def _outcome(func, *args):
    try:
        func(*args)
        return None
    except OSError as exc:
        return exc.errno


def snapshot(root: str) -> dict[str, tuple]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISDIR(st_.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                with open(path, "rb") as f:
                    found[rel] = ("file", stat.S_IMODE(st_.st_mode), f.read())
    return found


class PosixModel(RuleBasedStateMachine):
    mount_root: str = ""
    ref_root: str = ""

    @initialize()
    def fresh_dirs(self) -> None:
        n = next(_counter)
        self.real = os.path.join(self.mount_root, f"m{n}")
        self.ref = os.path.join(self.ref_root, f"m{n}")
        os.mkdir(self.real)
        os.mkdir(self.ref)

    def both(self, func, *rels: str):
        real = _outcome(func, *(os.path.join(self.real, r) for r in rels))
        ref = _outcome(func, *(os.path.join(self.ref, r) for r in rels))
        assert real == ref, (func, rels, real, ref)

    @rule(name=NAMES, data=DATA)
    def write(self, name, data):
        def op(path):
            with open(path, "wb") as f:
                f.write(data)

        self.both(op, name)

    @rule(name=NAMES, data=DATA)
    def append(self, name, data):
        def op(path):
            with open(path, "ab") as f:
                f.write(data)

        self.both(op, name)

    @rule(name=NAMES, offset=st.integers(0, 4000), data=DATA)
    def overwrite(self, name, offset, data):
        def op(path):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(op, name)

    @rule(name=NAMES, size=st.integers(0, 5000))
    def truncate(self, name, size):
        self.both(lambda p: os.truncate(p, size), name)

    @rule(a=NAMES, b=NAMES)
    def rename(self, a, b):
        self.both(os.rename, a, b)

    @rule(name=NAMES)
    def unlink(self, name):
        self.both(os.unlink, name)

    @rule(name=NAMES)
    def mkdir(self, name):
        self.both(os.mkdir, name)

    @rule(name=NAMES, inner=NAMES, data=DATA)
    def write_inside(self, name, inner, data):
        def op(path):
            with open(path, "wb") as f:
                f.write(data)

        self.both(op, f"{name}/{inner}")

    @rule(name=NAMES)
    def rmdir(self, name):
        self.both(os.rmdir, name)

    @rule(name=NAMES, mode=st.sampled_from([0o600, 0o644, 0o640, 0o755]))
    def chmod(self, name, mode):
        self.both(lambda p: os.chmod(p, mode), name)

    @invariant()
    def same_tree(self) -> None:
        if hasattr(self, "real"):
            assert snapshot(self.real) == snapshot(self.ref)


def test_posix_model(populated, mount_view, world_dir) -> None:
    mounted = mount_view(populated, "ingest", ("ingest", "--settle", "3600", "--transfer", "cp"))
    ref = world_dir / "reference"
    ref.mkdir()
    PosixModel.mount_root = str(mounted.mountpoint / "alice")
    PosixModel.ref_root = str(ref)
    try:
        run_state_machine_as_test(
            PosixModel,
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        shutil.rmtree(ref, ignore_errors=True)
