"""The ingest mount for real: users write with ordinary tools (as their own uid), and
closed filesets are imported as them, into the target their path names."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from omerofs.imports.transfer import sha1_file
from tests.conftest import as_user, make_tiff, needs_fuse, needs_root, run_cli, wait_for

pytestmark = [needs_fuse, needs_root]
UIDS = {"alice": 3001, "bob": 3002, "carol": 3003}


def sh(user: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        as_user(UIDS[user], ["/bin/sh", "-c", script]), capture_output=True, text=True, timeout=120
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{script!r} as {user} failed: {res.stderr}")
    return res


def xattr(path, name: str) -> str | None:
    try:
        return os.getxattr(path, f"user.omerofs.{name}").decode()
    except OSError:
        return None


def wait_state(path, state: str, timeout: float = 30) -> None:
    wait_for(
        lambda: xattr(path, "state") == state,
        timeout=timeout,
        what=f"{path} to become {state} (now {xattr(path, 'state')})",
    )


def set_ingest(repo, **keys) -> None:
    """Put ``[ingest]`` keys into the repository's omerofs.toml (before a mount starts)."""
    toml = repo.config.root / "omerofs.toml"
    text = toml.read_text()
    for key, value in keys.items():
        text = re.sub(rf"(?m)^{key} = .*\n", "", text)
        rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        text = text.replace("[ingest]\n", f"[ingest]\n{key} = {rendered}\n", 1)
    toml.write_text(text)


def filesets_from(repo, client_suffix: str) -> list:
    snap = repo.catalog.snapshot()
    return [
        fs
        for fs in snap.filesets.values()
        if any(e.client_path.endswith(client_suffix) for e in fs.entries)
    ]


@pytest.fixture
def ingest(populated, mount_view, world_dir):
    def start(transfer: str = "ln", settle: float = 0.5, name: str = "ingest", **keys):
        # run directories settle like files and rm-mode names go at once, unless a test
        # is about those rules
        set_ingest(populated, **{"run_settle": settle, "linger": 0, **keys})
        mounted = mount_view(
            populated,
            name,
            ("ingest", "--transfer", transfer, "--settle", str(settle), "--xattrs"),
        )
        started.append(mounted)
        return mounted.mountpoint

    started: list = []
    yield start
    for mounted in started:  # shown by pytest when the test failed
        print(f"--- {mounted.log}\n{mounted.log.read_text(errors='replace')}")


@pytest.fixture
def src(world_dir):
    """Source images every uid can read."""
    d = world_dir / "src"
    d.mkdir()
    return d


def test_user_dirs_and_isolation(populated, ingest) -> None:
    mp = ingest()
    st = os.stat(mp / "alice")
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (3001, "0o700")
    res = sh("bob", f"echo x > {mp}/alice/x.tif", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = sh("bob", f"ls {mp}/alice", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = sh("bob", f"mkdir {mp}/newuser", check=False)
    assert res.returncode != 0
    sh("bob", f"mkdir -p {mp}/bob/P/D && echo hello > {mp}/bob/P/D/notes.part")
    assert os.stat(mp / "bob/P/D/notes.part").st_uid == 3002  # writer owns what they make


def test_big_file_written_in_1mib_chunks(populated, ingest, src) -> None:
    big = make_tiff(src / "big.tif", shape=(24, 1024, 1024), axes="ZYX", dtype="uint8")
    mp = ingest("cp")
    target = mp / "alice/Proj/Day1/big.tif"
    sh("alice", f"mkdir -p {target.parent} && dd if={big} of={target} bs=1M status=none")
    wait_state(target, "imported")
    (fs,) = filesets_from(populated, "Proj/Day1/big.tif")
    assert fs.entries[0].hash == sha1_file(big) == sha1_file(target)
    snap = populated.catalog.snapshot()
    assert snap.experimenters[fs.owner_id].name == "alice"
    assert snap.groups[fs.group_id].name == "priv"  # alice's default group
    (dataset_id,) = fs.dataset_ids
    assert snap.datasets[dataset_id].name == "Day1"
    assert [snap.projects[p].name for p, d in snap.project_dataset if d == dataset_id] == ["Proj"]


def test_growing_file_reopened_to_append_is_imported_once_whole(populated, ingest, src) -> None:
    whole = make_tiff(src / "grow.tif", shape=(8, 256, 256), dtype="uint8")
    size = whole.stat().st_size
    third = size // 3 + 1
    mp = ingest("cp", settle=2)
    target = mp / "alice/D/grow.tif"
    sh("alice", f"mkdir -p {target.parent}")
    for i in range(3):  # three separate open/append/close cycles within the window
        sh(
            "alice",
            f"dd if={whole} of={target} bs={third} skip={i} seek={i} count=1 "
            "conv=notrunc status=none",
        )
    wait_state(target, "imported")
    (fs,) = filesets_from(populated, "D/grow.tif")
    assert fs.entries[0].size == size and fs.entries[0].hash == sha1_file(whole)


def test_temp_name_then_rename(populated, ingest, src) -> None:
    img = make_tiff(src / "r.tif")
    mp = ingest("ln")
    d = mp / "alice/P/D"
    sh(
        "alice",
        f"mkdir -p {d} && cp {img} {d}/.r.tif.XYZ123 && sleep 1 && mv {d}/.r.tif.XYZ123 {d}/r.tif",
    )
    wait_state(d / "r.tif", "imported")
    assert len(filesets_from(populated, "P/D/r.tif")) == 1
    assert not filesets_from(populated, "XYZ123")


def test_directory_written_in_parallel_is_one_fileset(populated, ingest, src) -> None:
    main = make_tiff(src / "main.ome.tif", seed=5)
    for i in range(20):
        (src / f"c{i:02d}.txt").write_text(f"companion {i}\n" * 100)
    mp = ingest("ln_rm")
    run = mp / "alice/P/D/run7"
    script = f"mkdir -p {run}/sub; cp {main} {run}/main.ome.tif & "
    script += " ".join(f"cp {src}/c{i:02d}.txt {run}/sub/ & " for i in range(20)) + " wait"
    sh("alice", script)
    wait_for(lambda: not run.exists(), timeout=30, what="the fileset to move in (ln_rm)")
    (fs,) = filesets_from(populated, "run7/main.ome.tif")
    names = [e.repo_path[len(fs.template_prefix) :] for e in fs.entries]
    assert names[0] == "run7/main.ome.tif" and len(names) == 21


@pytest.mark.parametrize("mode", ["ln", "ln_s", "ln_rm", "cp", "cp_rm", "upload", "upload_rm"])
def test_every_transfer_mode(populated, ingest, src, mode) -> None:
    img = make_tiff(src / f"{mode}.tif", seed=7)
    mp = ingest(mode)
    target = mp / f"alice/{mode}.tif"
    sh("alice", f"cp {img} {target}")
    if mode.endswith("_rm"):
        wait_for(lambda: not target.exists(), timeout=30, what="the staged copy to go")
        assert not (populated.config.staging_dir / f"alice/{mode}.tif").exists()
    else:
        wait_state(target, "imported")
        res = sh("alice", f"echo more >> {target}", check=False)
        assert res.returncode != 0 and "Operation not permitted" in res.stderr
        for cmd in (
            f"rm {target}",
            f"mv {target} {target}.x",
            f"chmod 600 {target}",
            f"truncate -s 0 {target}",
        ):
            assert sh("alice", cmd, check=False).returncode != 0, cmd
        assert sha1_file(target) == sha1_file(img)
    (fs,) = filesets_from(populated, f"alice/{mode}.tif")
    placed = populated.config.managed_dir / fs.entries[0].repo_path
    assert sha1_file(placed) == sha1_file(img) and fs.transfer == mode


def test_corrupt_tiff_fails_visibly_and_retry_works(populated, ingest, src) -> None:
    good = make_tiff(src / "good.tif", seed=9)
    bad = src / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 200)
    mp = ingest("ln_rm")
    target = mp / "alice/P/D/sample.tif"
    sh("alice", f"mkdir -p {target.parent} && cp {bad} {target}")
    wait_state(target, "failed")
    assert "unknown or unreadable" in xattr(target, "error")
    report = target.parent / "sample.tif.import-error.txt"
    assert "setfattr -n user.omerofs.commit" in report.read_text()
    assert sha1_file(target) == sha1_file(bad)  # untouched
    status = json.loads(
        run_cli("-r", str(populated.config.root), "status", "--json", check=True).stdout
    )
    assert status["users"]["alice"]["failed"] == 1
    failure = status["failures"][0]
    assert failure.get("path", failure.get("fileset")) == "alice/P/D/sample.tif"
    human = run_cli("-r", str(populated.config.root), "status", check=True).stdout
    assert "FAILED" in human and "sample.tif" in human
    # the fix: replace the file the way rsync would; it is retried once it settles
    sh(
        "alice",
        f"cp {good} {target.parent}/.sample.tif.new && mv {target.parent}/.sample.tif.new {target}",
    )
    wait_for(lambda: not target.exists(), timeout=30, what="the fixed fileset to import")
    assert not report.exists()
    (fs,) = filesets_from(populated, "P/D/sample.tif")
    assert fs.entries[0].hash == sha1_file(good)


def test_explicit_commit_skips_the_settle_time(populated, ingest, src) -> None:
    img = make_tiff(src / "c.tif")
    mp = ingest("cp", settle=3600)
    target = mp / "alice/c.tif"
    sh("alice", f"cp {img} {target}")
    assert xattr(target, "state") == "settling"
    sh(
        "alice",
        f"/usr/bin/python3 -c \"import os; os.setxattr('{target}', 'user.omerofs.commit', b'1')\"",
    )
    wait_state(target, "imported", timeout=10)


def test_group_chosen_by_at_directory(populated, ingest, src) -> None:
    img = make_tiff(src / "g.tif")
    mp = ingest("cp")
    res = sh("carol", f"mkdir {mp}/carol/@rw", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr  # carol is not in rw
    sh("alice", f"mkdir -p {mp}/alice/@rw/P/D && cp {img} {mp}/alice/@rw/P/D/g.tif")
    wait_state(mp / "alice/@rw/P/D/g.tif", "imported")
    (fs,) = filesets_from(populated, "@rw/P/D/g.tif")
    assert populated.catalog.snapshot().groups[fs.group_id].name == "rw"


def test_ingested_files_appear_in_the_view(populated, ingest, mount_view, src) -> None:
    img = make_tiff(src / "v.tif")
    view = mount_view(populated, "view")
    mp = ingest("ln_rm")
    sh("alice", f"mkdir -p {mp}/alice/@ro/Live/Now && cp {img} {mp}/alice/@ro/Live/Now/v.tif")
    seen = view.mountpoint / "carol/Groups/ro/Projects/Live/Now/v.tif"
    wait_for(
        lambda: sh("carol", f"ls {seen.parent}", check=False).stdout.strip() == "v.tif",
        timeout=30,
        what="the import in carol's view",
    )
    assert sh("carol", f"sha1sum {seen}").stdout.split()[0] == sha1_file(img)


def test_slow_temp_file_holds_its_directory_fileset_open(populated, ingest, src) -> None:
    """A writer that keeps a .part file open past the settle time, then renames it:
    the directory must be imported once, with the late file in it."""
    main = make_tiff(src / "m.tif")
    mp = ingest("ln_rm", settle=0.3)
    run = mp / "alice/P/D/slow"
    sh(
        "alice",
        f"mkdir -p {run} && cp {main} {run}/m.tif && exec 3> {run}/.late.dat.part "
        f"&& sleep 1.5 && echo late >&3 && exec 3>&- && mv {run}/.late.dat.part "
        f"{run}/late.dat",
    )
    wait_for(lambda: not run.exists(), timeout=30, what="the directory fileset to move in")
    (fs,) = filesets_from(populated, "slow/m.tif")
    assert sorted(e.name for e in fs.entries) == ["late.dat", "m.tif"]
    assert len(populated.catalog.snapshot().filesets) == 1


def test_default_no_xattrs_still_commits_and_reports(populated, mount_view, src) -> None:
    """With --no-xattrs state is not readable as xattrs (so the kernel stops asking before
    every write, where it does not grant KILLPRIV_V2), but the commit action and the
    error report still work."""
    img = make_tiff(src / "nx.tif")
    bad = src / "nxbad.tif"
    bad.write_bytes(b"garbage")
    daemon = mount_view(
        populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "3600", "--no-xattrs")
    )
    mp = daemon.mountpoint
    wait_for(lambda: "readable xattrs: off (forced" in daemon.log.read_text(), what="the log")
    sh("alice", f"cp {img} {mp}/alice/nx.tif && cp {bad} {mp}/alice/nxbad.tif")
    with pytest.raises(OSError):
        os.getxattr(mp / "alice/nx.tif", "user.omerofs.state")
    for name in ("nx.tif", "nxbad.tif"):
        sh(
            "alice",
            f"/usr/bin/python3 -c \"import os; os.setxattr('{mp}/alice/{name}', "
            "'user.omerofs.commit', b'1')\"",
        )
    wait_for(lambda: filesets_from(populated, "alice/nx.tif"), timeout=30, what="the commit")
    report = mp / "alice/nxbad.tif.import-error.txt"
    wait_for(report.exists, timeout=30, what="the error report")
    assert "unknown or unreadable" in report.read_text()


def test_xattrs_auto_follows_the_kernels_killpriv_v2(populated, mount_view, src) -> None:
    """The default ([ingest] xattrs = "auto"): readable state xattrs where the kernel
    granted KILLPRIV_V2 at INIT (they then cost a capability query per file, not per
    write: docs/shares.md), none where it did not; the start-up log says which and why."""
    import pyfuse3

    if not hasattr(pyfuse3, "killpriv_v2_enabled"):
        pytest.skip("pyfuse3 without omerofs's patch (tools/pyfuse3-passthrough)")
    assert '\nxattrs = "auto"\n' in (populated.config.root / "omerofs.toml").read_text()
    img = make_tiff(src / "auto.tif")
    daemon = mount_view(populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.3"))
    mp = daemon.mountpoint

    def logged() -> str | None:
        return next((x for x in daemon.log.read_text().splitlines() if "killpriv_v2: " in x), None)

    line = wait_for(logged, what="the killpriv_v2 line in the log")
    granted = "killpriv_v2: granted" in line
    assert ("readable xattrs: on (auto)" if granted else "readable xattrs: off (auto)") in line
    sh("alice", f"cp {img} {mp}/alice/auto.tif")
    if not granted:  # an older kernel: as --no-xattrs
        with pytest.raises(OSError):
            os.getxattr(mp / "alice/auto.tif", "user.omerofs.state")
        return
    wait_state(mp / "alice/auto.tif", "imported")
    read = f"import os; print(os.getxattr('{mp}/alice/auto.tif', 'user.omerofs.state'))"
    assert "imported" in sh("alice", f'/usr/bin/python3 -c "{read}"').stdout  # as the user


def test_staging_elsewhere(populated, mount_view, src, tmpfs) -> None:
    """``[ingest] staging`` puts written files on another filesystem (with an OMERO backend,
    the one the server's repository lives on); imports and the rules stay the same."""
    staging = tmpfs("staging-fs", "64m") / "omerofs-staging"
    toml = populated.config.root / "omerofs.toml"
    toml.write_text(toml.read_text().replace("[ingest]\n", f'[ingest]\nstaging = "{staging}"\n', 1))
    img = make_tiff(src / "elsewhere.tif")
    mp = mount_view(
        populated, "ingest", ("ingest", "--transfer", "cp", "--settle", "0.5", "--xattrs")
    )
    target = mp.mountpoint / "alice/Elsewhere/elsewhere.tif"
    sh("alice", f"mkdir -p {target.parent} && cp {img} {target}")
    assert (staging / "alice/Elsewhere/elsewhere.tif").exists()  # written there, not in REPO
    assert not (populated.config.root / "staging/alice/Elsewhere").exists()
    wait_state(target, "imported")
    (fs,) = filesets_from(populated, "Elsewhere/elsewhere.tif")
    assert fs.entries[0].hash == sha1_file(img)
    assert oct(os.stat(staging / "alice").st_mode & 0o777) == "0o700"
