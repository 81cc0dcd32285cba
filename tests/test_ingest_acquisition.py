"""Acquisitions as they really happen (issue #14): runs written over minutes, writers that
come back, writers killed mid-file, multi-file sets arriving in any order, passing
failures, desktop clutter and second copies. Real mounts, real writers as their users."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from omerofs.imports.transfer import sha1_file
from omerofs.ingest.queue import JobQueue
from tests import test_ingest_mount as mount_tests
from tests.conftest import SHARED_DATA, Repo, as_user, make_tiff, needs_fuse, needs_root, wait_for
from tests.test_ingest_mount import UIDS, filesets_from, set_ingest, sh, wait_state, xattr

pytestmark = [needs_fuse, needs_root]
ingest = mount_tests.ingest  # the fixtures: an ingest mount with [ingest] keys, sources
src = mount_tests.src
MULTIFILE = SHARED_DATA / "ome-tiff-multifile/master"
KILLED_WRITER = """
import os, signal, sys
data = open(sys.argv[1], "rb").read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, data[: len(data) // 2])
os.kill(os.getpid(), signal.SIGKILL)  # cut off: the kernel closes the handle
"""


def jobs(repo, *states: str) -> list:
    queue = JobQueue(repo.config.catalog_path)
    try:
        return queue.in_state(*states)
    finally:
        queue.close()


def latest(repo, root: str):
    queue = JobQueue(repo.config.catalog_path)
    try:
        return queue.latest_for(root)
    finally:
        queue.close()


def filesets(repo) -> list:
    return sorted(repo.catalog.snapshot().filesets.values(), key=lambda f: f.id)


def drained(repo) -> bool:
    return not jobs(repo, "queued", "importing")


# -- 1. runs split and pulled from under the writer ---------------------------------


def test_run_written_with_pauses_is_one_fileset_and_its_directory_stays(
    populated, ingest, src
) -> None:
    """Files of a run 1 s apart (5x the single-file settle time) are one fileset; after
    the ln_rm import the run directory stays, and a late file becomes a follow-up."""
    images = [make_tiff(src / f"t{i}.tif", seed=i) for i in range(3)]
    mp = ingest("ln_rm", settle=0.2, run_settle=4, linger=60)
    run = mp / "alice/P/D/run2"
    sh("alice", f"mkdir -p {run} && " + " && sleep 1 && ".join(f"cp {i} {run}/" for i in images))
    wait_for(lambda: filesets(populated), timeout=30, what="the run's import")
    wait_for(lambda: drained(populated), timeout=30, what="the queue to drain")
    (fs,) = filesets(populated)
    assert sorted(e.name for e in fs.entries) == ["t0.tif", "t1.tif", "t2.tif"]
    assert run.is_dir() and (run / "t0.tif").exists()  # still there for the microscope
    late = make_tiff(src / "t3.tif", seed=3)
    sh("alice", f"cp {late} {run}/t3.tif")  # never "Not a directory"
    wait_for(lambda: len(filesets(populated)) == 2, timeout=30, what="the follow-up import")
    follow = filesets(populated)[1]
    assert [e.name for e in follow.entries] == ["t3.tif"]
    assert "/run2.followup-1/" in "/" + follow.entries[0].repo_path
    assert follow.entries[0].hash == sha1_file(late)


def test_a_late_file_in_a_run_imported_in_place_is_a_follow_up(populated, ingest, src) -> None:
    """Non-rm modes keep the run (read-only): a new file beside the imported ones is
    allowed and becomes the follow-up; the imported files stay untouchable."""
    first = make_tiff(src / "f0.tif", seed=30)
    late = make_tiff(src / "f1.tif", seed=31)
    mp = ingest("cp", settle=0.2, run_settle=0.3)
    run = mp / "alice/P/D/run3"
    sh("alice", f"mkdir -p {run} && cp {first} {run}/")
    wait_state(run / "f0.tif", "imported")
    assert sh("alice", f"echo x >> {run}/f0.tif", check=False).returncode != 0  # frozen
    sh("alice", f"cp {late} {run}/")  # a new name in the imported run: fine
    wait_for(lambda: len(filesets(populated)) == 2, timeout=30, what="the follow-up import")
    follow = filesets(populated)[1]
    assert [e.name for e in follow.entries] == ["f1.tif"]
    assert "/run3.followup-1/" in "/" + follow.entries[0].repo_path
    assert sha1_file(run / "f0.tif") == sha1_file(first)


def test_file_reopened_to_append_after_its_import_is_not_pulled(populated, ingest, src) -> None:
    """A writer that comes back after the settle time finds its file (ln_rm): it appends
    to a copy of its own, the import it already had stays intact, and the grown file
    is imported again."""
    img = make_tiff(src / "grow.tif", shape=(2, 64, 64), seed=4)
    mp = ingest("ln_rm", settle=0.2, linger=60)
    target = mp / "alice/D/grow.tif"
    sh("alice", f"mkdir -p {target.parent} && cp {img} {target}")
    wait_state(target, "imported")
    (first,) = filesets(populated)
    managed = populated.config.managed_dir / first.entries[0].repo_path
    sh("alice", f"head -c 1000 /dev/urandom >> {target}")
    assert target.stat().st_size == img.stat().st_size + 1000
    assert sha1_file(managed) == sha1_file(img) == first.entries[0].hash  # untouched
    wait_for(lambda: len(filesets(populated)) == 2, timeout=30, what="the grown file's import")
    second = filesets(populated)[1]
    assert second.entries[0].size == img.stat().st_size + 1000
    assert second.entries[0].hash == sha1_file(target)


def test_reopened_imported_file_is_the_writers_own_on_disk(populated, ingest, src) -> None:
    """ln_rm seals the staged inode (it is the original's); a writer who reopens the
    lingering name gets a copy that is theirs on disk (owner of staging/alice, owner
    write bit), not root's 0444: with attributes fresh from the daemon (drop_caches)
    they still may write it, and its next import takes what they wrote."""
    img = make_tiff(src / "again.tif", shape=(2, 32, 32), seed=6)
    mp = ingest("ln_rm", settle=3600, linger=60)  # nothing closes unless committed
    target = mp / "alice/D/again.tif"
    staged = populated.config.staging_dir / "alice/D/again.tif"
    sh("alice", f"mkdir -p {target.parent} && cp {img} {target}")
    os.setxattr(target, "user.omerofs.commit", b"1")
    wait_state(target, "imported")
    assert os.stat(staged).st_uid == 0  # sealed: the ManagedRepository's inode
    sh("alice", f"head -c 1000 /dev/urandom >> {target}")
    st = os.stat(staged)
    assert st.st_uid == UIDS["alice"] and st.st_mode & stat.S_IWUSR, (st.st_uid, oct(st.st_mode))
    Path("/proc/sys/vm/drop_caches").write_text("2")  # attributes fresh from the daemon
    sh("alice", f"test -w {target} && echo more >> {target}")
    os.setxattr(target, "user.omerofs.commit", b"1")
    wait_for(lambda: len(filesets(populated)) == 2, timeout=30, what="the reopened file's import")
    assert filesets(populated)[1].entries[0].size == img.stat().st_size + 1000 + 5


def test_commit_only_waits_for_a_commit(populated, ingest, src) -> None:
    """Commit-only users: nothing closes by time alone; a ``run.done`` marker, the
    ``.omerofs-commit`` file, the xattr or ``request_commit`` (omerofs commit) closes."""
    a, b, c = (make_tiff(src / f"{n}.tif", seed=i) for i, n in enumerate("abc"))
    mp = ingest("ln_rm", settle=0.2, run_settle=0.2, linger=60, commit_only_users=["alice"])
    run = mp / "alice/P/D/run5"
    sh("alice", f"mkdir -p {run} && cp {a} {run}/")
    wait_state(run / "a.tif", "waiting")  # closed by the settle rules, yet not imported
    sh("alice", f"cp {b} {run}/")
    wait_state(run / "b.tif", "waiting")
    assert not filesets(populated)
    (waiting,) = jobs(populated, "waiting")  # in the queue: omerofs status shows it
    assert waiting.key.root == "alice/P/D/run5" and len(waiting.manifest) == 2
    sh("alice", f"touch {run}.done")
    wait_for(lambda: filesets(populated), timeout=30, what="the committed run")
    (fs,) = filesets(populated)
    assert sorted(e.name for e in fs.entries) == ["a.tif", "b.tif"]
    wait_for(lambda: not (run.parent / "run5.done").exists(), what="the marker used up")
    single = mp / "alice/P/D/c.tif"
    sh("alice", f"cp {c} {single}")
    wait_state(single, "waiting")
    cli = [sys.executable, "-m", "omerofs.cli", "commit", str(single)]  # as alice, no repo
    done = subprocess.run(as_user(3001, cli), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"committed {single}\n", done.stderr
    wait_state(single, "imported")
    # a directory marker makes bob's area commit-only too (bob is not in the config)
    d = make_tiff(src / "d.tif", seed=9)
    sh("bob", f"touch {mp}/bob/.omerofs-commit-only && mkdir -p {mp}/bob/D && cp {d} {mp}/bob/D/")
    wait_state(mp / "bob/D/d.tif", "waiting")
    sh("bob", f"touch {mp}/bob/D/.omerofs-commit")  # commits every fileset in D
    wait_for(lambda: filesets_from(populated, "bob/D/d.tif"), timeout=30, what="bob's commit")


# -- 2. crashed or cut-off writers ---------------------------------------------------


@pytest.mark.parametrize("kind", ["imagej", "multipage"])
def test_writer_killed_at_half_is_held_not_imported(populated, ingest, src, world_dir, kind):
    data = np.random.default_rng(3).integers(0, 200, (8, 64, 64)).astype("uint8")
    whole = src / f"{kind}.tif"
    if kind == "imagej":  # ImageJ's description announces images=8
        tifffile.imwrite(whole, data, imagej=True, metadata={"axes": "ZYX"})
    else:  # a plain multi-page TIFF: its description (shape) announces 8 pages
        tifffile.imwrite(whole, data, photometric="minisblack")
    script = world_dir / "killed.py"
    script.write_text(KILLED_WRITER)
    mp = ingest("ln_rm", settle=0.2, linger=0)
    target = mp / f"alice/P/D/{kind}.tif"
    sh("alice", f"mkdir -p {target.parent}")
    res = subprocess.run(as_user(3001, ["/usr/bin/python3", str(script), str(whole), str(target)]))
    assert res.returncode == -9
    wait_state(target, "incomplete")
    assert "4 of 8 planes present" in xattr(target, "error")
    report = target.parent / f"{kind}.tif.import-error.txt"
    wait_for(report.exists, what="the report (written right after the queue row)")
    assert "4 of 8 planes present" in report.read_text()
    assert not filesets(populated)  # never imported as good
    assert target.stat().st_size == whole.stat().st_size // 2  # and never deleted
    sh("alice", f"cp {whole} {target}")  # the rewrite retries
    wait_for(lambda: filesets(populated), timeout=30, what="the rewritten file's import")
    (fs,) = filesets(populated)
    assert fs.entries[0].hash == sha1_file(whole)
    wait_for(lambda: not report.exists(), what="the report to go")


@pytest.mark.parametrize("where", ["alice/P/D", "alice/P/D/run9"], ids=["dataset", "run"])
def test_multifile_ome_tiff_in_random_order_is_one_fileset(populated, ingest, src, where):
    """The five files of the OME sample "binaryonly" fileset (Z1 holds the OME-XML naming
    all five; Z2..Z5 are BinaryOnly), written one by one in random order, each pause
    lasting until the partial set was looked at and held: one import, complete."""
    names = sorted(p.name for p in MULTIFILE.glob("*.ome.tiff"))
    assert len(names) == 5
    for name in names:
        shutil.copy(MULTIFILE / name, src / name)
    order = random.Random(11).sample(names, len(names))
    mp = ingest("ln_rm", settle=0.2, run_settle=0.2, linger=60)
    target = mp / where
    sh("alice", f"mkdir -p {target}")
    for count, name in enumerate(order[:-1], start=1):
        sh("alice", f"cp {src / name} {target}/{name}")

        def held(count: int = count, name: str = name) -> bool:
            return any(
                len(j.manifest) == count and any(p.endswith(name) for p in j.manifest)
                for j in jobs(populated, "incomplete")
            )

        wait_for(held, timeout=30, what=f"{count} files to be held as incomplete")
        assert not filesets(populated)
    (reason,) = [j.error for j in jobs(populated, "incomplete")]
    assert "files present; waiting for" in reason
    sh("alice", f"cp {src / order[-1]} {target}/{order[-1]}")
    wait_for(lambda: filesets(populated), timeout=30, what="the complete set's import")
    wait_for(lambda: drained(populated), timeout=30, what="the queue to drain")
    (fs,) = filesets(populated)
    assert [e.name for e in fs.entries][0] == "multifile-Z1.ome.tiff"  # the main file first
    assert sorted(e.name for e in fs.entries) == names
    assert fs.image_count == 1  # Z1's OME-XML has one Image (5 Z planes, one per file)
    assert not jobs(populated, "incomplete", "failed")
    assert not list(Path(target).glob("*.import-error.txt"))


def test_explicit_commit_imports_a_partial_set_as_it_is(populated, ingest, src) -> None:
    names = sorted(p.name for p in MULTIFILE.glob("*.ome.tiff"))
    for name in names[:3]:
        shutil.copy(MULTIFILE / name, src / name)
        (src / name).chmod(0o644)  # (the shared data is read-only; setxattr needs write)
    mp = ingest("cp", settle=0.2)
    d = mp / "alice/P/D"
    sh("alice", f"mkdir -p {d} && cp {' '.join(str(src / n) for n in names[:3])} {d}/")
    wait_state(d / names[0], "incomplete")
    assert "3 of 5 files present" in xattr(d / names[0], "error")
    commit = f"import os; os.setxattr({str(d / names[0])!r}, 'user.omerofs.commit', b'1')"
    subprocess.run(as_user(3001, ["/usr/bin/python3", "-c", commit]), check=True)
    wait_for(
        lambda: xattr(d / names[0], "state") in ("imported", "failed"),
        timeout=30,
        what="the commit to be taken",
    )
    job = latest(populated, f"alice/P/D/{names[0]}")
    assert sorted(job.manifest) == [f"alice/P/D/{n}" for n in names[:3]]


# -- 3. transient vs permanent failures ----------------------------------------------


def test_full_managed_repository_is_retried_by_itself(world_dir, mount_view, src) -> None:
    repo = Repo(world_dir / "repo").populate()
    managed = repo.config.managed_dir
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(managed)], check=True)
    try:
        filler = managed / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        img = make_tiff(src / "e.tif", shape=(4, 256, 256), dtype="uint8")
        set_ingest(repo, retry_initial=0.3, retry_max=1.0, linger=0)
        mp = mount_view(repo, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.2"))
        sh("alice", f"cp {img} {mp.mountpoint}/alice/e.tif")

        def retrying():
            found = jobs(repo, "retrying")
            return found[0] if found else None

        job = wait_for(retrying, timeout=30, what="a transient failure")
        assert job.failure == "transient" and "No space left on device" in job.error
        assert job.next_try is not None and job.next_try >= job.updated
        report = repo.config.staging_dir / "alice/e.tif.import-error.txt"
        wait_for(report.exists, what="the report (written right after the queue row)")
        assert "tries again by itself" in report.read_text()
        status = subprocess.run(
            [sys.executable, "-m", "omerofs.cli", "-r", str(repo.config.root), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0
        filler.unlink()  # the disk has room again: nobody retries by hand
        wait_for(lambda: repo.catalog.snapshot().filesets, timeout=30, what="the retry")
        (fs,) = repo.catalog.snapshot().filesets.values()
        assert fs.entries[0].hash == sha1_file(img)
        assert latest(repo, "alice/e.tif").state == "imported"
    finally:
        subprocess.run(["umount", "-l", str(managed)], capture_output=True)
        repo.catalog.close()


# -- 4. clutter, and failures whose files are gone -----------------------------------

CLUTTER = [
    "Thumbs.db",
    "desktop.ini",
    "ehthumbs.db",
    "~$report.docx",
    "._img.tif",
    ".DS_Store",
    "Icon\r",
    "$RECYCLE.BIN/INFO2",
    ".Trashes/501/x",
    ".Spotlight-V100/Store-V2/y",
    ".fseventsd/fseventsd-uuid",
]


def test_desktop_clutter_is_never_imported_and_gone_failures_leave_status(
    populated, ingest, src
) -> None:
    good = make_tiff(src / "good.tif", seed=1)
    mp = ingest("ln_rm", settle=0.2, linger=0)
    d = mp / "alice/P/D"
    code = (
        "import os, sys\n"
        "d = sys.argv[1]\n"
        f"for name in {CLUTTER!r}:\n"
        "    path = os.path.join(d, name)\n"
        "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "    open(path, 'wb').write(b'clutter')\n"
    )
    sh("alice", f"mkdir -p {d}")
    subprocess.run(as_user(3001, ["/usr/bin/python3", "-c", code, str(d)]), check=True)
    sh("alice", f"printf garbage > {d}/bad.tif && cp {good} {d}/good.tif")
    wait_for(lambda: filesets_from(populated, "P/D/good.tif"), timeout=30, what="the good file")
    wait_state(d / "bad.tif", "failed")
    wait_for(lambda: drained(populated), timeout=30, what="the queue to drain")
    roots = {j.key.root for j in jobs(populated, *JOB_STATES)}
    assert roots == {"alice/P/D/good.tif", "alice/P/D/bad.tif"}  # clutter: no job at all
    sh("alice", f"rm {d}/bad.tif")
    wait_for(lambda: latest(populated, "alice/P/D/bad.tif").state == "gone", what="gone")
    assert not (d / "bad.tif.import-error.txt").exists()
    status = subprocess.run(
        [sys.executable, "-m", "omerofs.cli", "-r", str(populated.config.root), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["failures"] == []


JOB_STATES = ("queued", "importing", "imported", "failed", "incomplete", "retrying", "duplicate")


# -- 5. duplicates --------------------------------------------------------------------


@pytest.mark.parametrize("policy,expected", [("link", 2), ("skip", 2), ("import", 4)])
def test_second_copy_of_the_same_directory(populated, ingest, src, policy, expected) -> None:
    """A second copy (an rsync run again) into an ln_rm area: the same content at the
    same paths for the same user is not imported again unless asked for."""
    a = make_tiff(src / "a.tif", seed=21)
    b = make_tiff(src / "b.tif", seed=22)
    mp = ingest("ln_rm", settle=0.2, linger=0, duplicates=policy)
    d = mp / "alice/P/D"
    for _ in range(2):
        sh("alice", f"mkdir -p {d} && cp {a} {b} {d}/")
        wait_for(
            lambda: not (d / "a.tif").exists() and not (d / "b.tif").exists(),
            timeout=30,
            what="both files imported (or found again) and their names gone",
        )
        wait_for(lambda: drained(populated), timeout=30, what="the queue to drain")
    assert len(filesets(populated)) == expected
    if policy != "import":
        first = {fs.entries[0].name: fs.id for fs in filesets(populated)}
        for name in ("a.tif", "b.tif"):
            job = latest(populated, f"alice/P/D/{name}")
            assert job.state == "duplicate" and job.duplicate_of is not None
            assert job.fileset_id == (first[name] if policy == "link" else None)


# -- the queue written by an older omerofs --------------------------------------------


def test_a_queue_of_the_previous_schema_is_upgraded(world_dir) -> None:
    import sqlite3

    path = world_dir / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE ingest_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, root TEXT NOT NULL, "
        "user TEXT NOT NULL, grp TEXT, project TEXT, dataset TEXT, is_dir INTEGER NOT NULL, "
        "transfer TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('queued','importing',"
        "'imported','failed','superseded')), manifest TEXT NOT NULL, "
        "bytes_total INTEGER NOT NULL DEFAULT 0, bytes_done INTEGER NOT NULL DEFAULT 0, "
        "prefix TEXT, fileset_id INTEGER, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
        "created REAL NOT NULL, updated REAL NOT NULL, handed_off INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE ingest_files (path TEXT PRIMARY KEY, job_id INTEGER NOT NULL "
        "REFERENCES ingest_jobs(id), size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
        "removed INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO ingest_jobs (root, user, is_dir, transfer, state, manifest, created, "
        "updated) VALUES ('alice/x.tif', 'alice', 0, 'cp', 'imported', "
        "'{\"alice/x.tif\": [5, 1]}', 1, 1);"
        "INSERT INTO ingest_files VALUES ('alice/x.tif', 1, 5, 1, 0);"
    )
    db.commit()
    db.close()
    queue = JobQueue(path)
    try:
        (job,) = queue.in_state("imported")
        assert job.key.root == "alice/x.tif" and job.failure is None
        queue.retry_later(job.id, "catalog unavailable", 123.0)  # a state the old CHECK refused
        assert queue.job(job.id).state == "retrying" and queue.job(job.id).next_try == 123.0
        queue.set_hashes({"alice/x.tif": "ab" * 20})  # ingest_files still references jobs
        assert queue.earlier_imports(["alice/x.tif"]) == {}  # (its job is no longer imported)
        queue.mark_gone("alice/x.tif")
        assert queue.job(job.id).state == "gone"
    finally:
        queue.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    check.close()


@pytest.mark.parametrize("oif_first", [False, True], ids=["parts-first", "oif-first"])
def test_oif_with_its_files_directory_in_a_dataset_directory_is_one_fileset(
    populated, ingest, src, oif_first
) -> None:
    """An Olympus OIF (``X.oif`` + ``X.oif.files/``, 13 files) written into a Dataset
    directory: the .oif names the files of its directory, so they are ONE fileset with
    the .oif first — not a file fileset plus a run directory of their own."""
    oif_src = SHARED_DATA / "oif"
    shutil.copytree(oif_src, src / "oif")
    (oif,) = (src / "oif").glob("*.oif")
    parts = src / "oif" / (oif.name + ".files")
    assert parts.is_dir()
    expected = 1 + sum(1 for p in parts.rglob("*") if p.is_file())
    mp = ingest("ln_rm", settle=0.2, run_settle=0.2, linger=0)
    d = mp / "alice/P/D"
    first, then = (oif, parts) if oif_first else (parts, oif)
    sh("alice", f"mkdir -p {d} && cp -r '{first}' {d}/")
    held = f"alice/P/D/{first.name}"
    wait_for(
        lambda: any(j.key.root == held for j in jobs(populated, "incomplete")),
        timeout=30,
        what=f"{first.name} to wait for the rest",
    )
    assert not filesets(populated)
    sh("alice", f"cp -r '{then}' {d}/")
    wait_for(lambda: filesets(populated), timeout=30, what="the OIF's import")
    wait_for(lambda: drained(populated), timeout=30, what="the queue to drain")
    wait_for(lambda: not (d / parts.name).exists(), timeout=30, what="the names to go (ln_rm)")
    fs_list = filesets(populated)
    assert len(fs_list) == 1, [[e.name for e in f.entries] for f in fs_list]
    (fs,) = fs_list
    assert fs.entries[0].name == oif.name and len(fs.entries) == expected
    assert fs.image_count == 1  # the FluoView set holds one series (CYX 3x256x256)
