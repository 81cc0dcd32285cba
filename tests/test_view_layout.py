"""The view's tree without FUSE: who sees what, where, under which names and ids."""

from omerofs.fs.layout import suffixed
from omerofs.fs.mount import fileset_loader
from omerofs.fs.view import RepositoryView, fetch_all
from tests.conftest import make_tiff


def _paths(view: RepositoryView, user: str) -> set[str]:
    home = view.table.child(view.table.root, user)
    view.materialize(home)
    return {n.path() for n in view.table.traverse(home) if n.source is not None}


def _view(repo) -> RepositoryView:
    return RepositoryView(repo.catalog.snapshot_people(), 1, fileset_loader(repo.catalog))


def _follow(view: RepositoryView, catalog):
    """What the mount's catalog follower does, synchronously."""
    changes = catalog.changes(view.event_id)
    targets = view.rebuild_targets(changes)
    return view.apply(
        changes, {e: fetch_all(view.loader, v, changes.snapshot) for e, v in targets.items()}
    )


def _files(repo, world_dir):
    """One fileset per (owner, group); returns {label: fileset}."""
    made = {}
    for i, (user, group) in enumerate(
        [("alice", "priv"), ("alice", "ro"), ("alice", "ra"), ("alice", "rw"), ("bob", "priv")]
    ):
        src = make_tiff(world_dir / "src" / f"{user}-{group}.tif", seed=i)
        made[f"{user}-{group}"] = repo.import_file(
            src, user, group, "cp", f"Project:name:P-{group}/Dataset:name:D"
        )
    return made


def _visible(view, user) -> set[str]:
    return {
        p.rsplit("/", 1)[1].removesuffix(".tif")
        for p in _paths(view, user)
        if "/ManagedRepository/" in p
    }


def test_each_user_sees_exactly_what_omero_shows(populated, world_dir) -> None:
    _files(populated, world_dir)
    view = _view(populated)
    everything = {"alice-priv", "alice-ro", "alice-ra", "alice-rw", "bob-priv"}
    assert _visible(view, "alice") == {"alice-priv", "alice-ro", "alice-ra", "alice-rw"}
    assert _visible(view, "bob") == {"bob-priv", "alice-ro", "alice-ra", "alice-rw"}
    assert _visible(view, "carol") == {"alice-ro"}  # member of ro only (default group)
    assert _visible(view, "olga") == {"alice-priv", "bob-priv"}  # owner of the private group
    assert _visible(view, "adam") == everything  # admin
    assert _visible(view, "root") == everything


def test_both_layouts_and_attributes(populated, world_dir) -> None:
    fs = _files(populated, world_dir)["alice-ro"]
    view = _view(populated)
    paths = _paths(view, "carol")
    managed = f"/carol/ManagedRepository/{fs.template_prefix}alice-ro.tif"
    named = "/carol/Groups/ro/Projects/P-ro/D/alice-ro.tif"
    assert {managed, named} <= paths
    home = view.table.child(view.table.root, "carol")
    assert (home.uid, oct(home.mode & 0o777)) == (3003, "0o500")
    node = view.table.child(
        view.table.child(
            view.table.child(
                view.table.child(
                    view.table.child(view.table.child(home, "Groups"), "ro"), "Projects"
                ),
                "P-ro",
            ),
            "D",
        ),
        "alice-ro.tif",
    )
    assert (node.uid, node.gid, oct(node.mode & 0o777)) == (3001, 71002, "0o444")
    root_owned = view.table.child(view.table.child(home, "ManagedRepository"), "alice_2")
    assert root_owned.uid == 0  # OMERO: directories before // belong to root


def test_different_users_get_different_inodes(populated, world_dir) -> None:
    _files(populated, world_dir)
    view = _view(populated)
    view.materialize(view.table.child(view.table.root, "alice"))
    view.materialize(view.table.child(view.table.root, "bob"))
    a = {n.inode for n in view.table.traverse(view.table.child(view.table.root, "alice"))}
    b = {n.inode for n in view.table.traverse(view.table.child(view.table.root, "bob"))}
    assert a and b and not a & b


def test_orphans_datasets_and_name_collisions(populated, world_dir) -> None:
    first = populated.import_file(make_tiff(world_dir / "a" / "img.tif", seed=1), "alice", "ro")
    second = populated.import_file(make_tiff(world_dir / "b" / "img.tif", seed=2), "alice", "ro")
    populated.import_file(
        make_tiff(world_dir / "c" / "solo.tif"), "alice", "ro", target="Dataset:name:Loose"
    )
    view = _view(populated)
    paths = _paths(view, "alice")
    assert "/alice/Groups/ro/Orphans/img.tif" in paths
    assert f"/alice/Groups/ro/Orphans/img~fs{second.id}.tif" in paths
    assert "/alice/Groups/ro/Datasets/Loose/solo.tif" in paths
    assert first.id < second.id


def test_duplicate_container_names(populated, world_dir) -> None:
    populated.import_file(make_tiff(world_dir / "x.tif"), "alice", "rw", target="Dataset:name:D")
    populated.import_file(make_tiff(world_dir / "y.tif"), "bob", "rw", target="Dataset:name:D")
    paths = _paths(_view(populated), "alice")
    ds = populated.catalog.snapshot().datasets
    bob_ds = max(ds)
    assert "/alice/Groups/rw/Datasets/D/x.tif" in paths
    assert f"/alice/Groups/rw/Datasets/D~{bob_ds}/y.tif" in paths


def test_suffixed_names() -> None:
    assert suffixed("img.ome.tif", "fs7", False) == "img~fs7.ome.tif"
    assert suffixed("run", "fs7", True) == "run~fs7"
    assert suffixed(".hidden", "fs7", False) == ".hidden~fs7"


def test_incremental_equals_full_build(populated, world_dir) -> None:
    """Following the catalog must give the same tree a fresh mount would build."""
    _files(populated, world_dir)
    live = _view(populated)
    for user in ("alice", "bob", "olga"):
        _paths(live, user)
    for i in range(4):
        populated.import_file(
            make_tiff(world_dir / "more" / f"m{i}.tif", seed=9 + i),
            "bob",
            "ro" if i % 2 else "priv",
            "cp",
            f"Dataset:name:New{i % 2}",
        )
    populated.import_file(
        make_tiff(world_dir / "more" / "dup" / "alice-ro.tif"),
        "alice",
        "ro",
        "cp",
        "Project:name:P-ro/Dataset:name:D",
    )
    inval = _follow(live, populated.catalog)
    assert inval.inodes and not inval.entries
    fresh = _view(populated)
    for user in ("alice", "bob", "olga"):
        assert _paths(live, user) == _paths(fresh, user)


def test_membership_change_rebuilds_one_user_keeping_inodes(populated, world_dir) -> None:
    _files(populated, world_dir)
    live = _view(populated)
    _paths(live, "carol")
    before = {
        n.path(): n.inode for n in live.table.traverse(live.table.child(live.table.root, "carol"))
    }
    populated.catalog.add_member("rw", "carol")
    _follow(live, populated.catalog)
    after = {
        n.path(): n.inode for n in live.table.traverse(live.table.child(live.table.root, "carol"))
    }
    assert "/carol/Groups/rw/Projects/P-rw/D/alice-rw.tif" in after
    assert all(after[p] == ino for p, ino in before.items())  # surviving paths keep inodes


def test_new_users_get_homes(populated) -> None:
    live = _view(populated)
    populated.catalog.add_experimenter("newbie", 4444, default_group="ro")
    inval = _follow(live, populated.catalog)
    home = live.table.child(live.table.root, "newbie")
    assert home is not None and home.uid == 4444 and live.table.root.inode in inval.inodes


def test_a_tree_loaded_in_chunks_is_the_same_tree(populated, world_dir) -> None:
    """Trees are fetched in chunks (an admin's at 1M filesets would not fit at once):
    chunk boundaries must not change a single path, for any viewer."""
    _files(populated, world_dir)
    snap = populated.catalog.snapshot_people()
    whole = RepositoryView(snap, 1, fileset_loader(populated.catalog))
    chunked = RepositoryView(snap, 1, fileset_loader(populated.catalog, chunk=2))
    loader = fileset_loader(populated.catalog, chunk=2)
    adam = next(e for e in snap.experimenters.values() if e.name == "adam")
    assert [len(c) for c in loader(chunked.viewer_of(adam.id, snap), snap)] == [2, 2, 1]
    for user in ("alice", "bob", "olga", "adam"):
        home = chunked.table.child(chunked.table.root, user)
        exp_id, viewer = chunked.build_request(home)
        chunks = chunked.loader(viewer, snap)
        chunked.build(exp_id, next(chunks, []))
        for chunk in chunks:
            chunked.extend(exp_id, chunk)
        built = {n.path() for n in chunked.table.traverse(home) if n.source is not None}
        assert built == _paths(whole, user), user


def test_fileset_directories_make_their_nodes_when_looked_into(populated, world_dir) -> None:
    """A fileset's own directory keeps its files as a pending tuple (no nodes, no inode
    numbers) until it is looked up or listed; then it shows exactly what it held."""
    fs = _files(populated, world_dir)["alice-ro"]
    run = world_dir / "run"
    (run / "sub").mkdir(parents=True)
    make_tiff(run / "main.tif")
    (run / "sub" / "notes.txt").write_text("n")
    multi = populated.import_file(run, "alice", "ro", "ln")
    view = _view(populated)
    table = view.table
    home = table.child(table.root, "carol")
    view.materialize(home)
    day = table.child(table.child(home, "ManagedRepository"), "alice_2")
    for part in fs.template_prefix.rstrip("/").split("/")[1:-1]:
        day = table.child(day, part)
    time_dir = day.children[fs.template_prefix.rstrip("/").rsplit("/", 1)[1]]
    assert time_dir.pending is not None and time_dir.children is None and time_dir.is_dir
    count = len(table)
    assert table.holds(time_dir, "alice-ro.tif") and not table.holds(time_dir, "x.tif")
    assert time_dir.pending is not None and len(table) == count  # asking made no nodes
    carol = next(e for e in view.snapshot.experimenters.values() if e.name == "carol")
    view.extend(carol.id, [fs])  # a catalog reporting it twice
    assert time_dir.pending is not None and len(table) == count
    node = table.child(time_dir, "alice-ro.tif")
    assert time_dir.pending is None and len(table) == count + 1
    assert (node.source, node.size, node.uid, node.gid) == (
        fs.entries[0].repo_path,
        fs.entries[0].size,
        3001,
        71002,
    )
    assert node.inode > time_dir.inode and [n.name for n in table.listing(time_dir, 0)] == [
        "alice-ro.tif"
    ]
    # a multi-file fileset in the named tree: a pending directory with a subdirectory
    paths = _paths(view, "carol")
    top = multi.template_prefix
    assert f"/carol/ManagedRepository/{top}run/sub/notes.txt" in paths
    assert "/carol/Groups/ro/Orphans/run/sub/notes.txt" in paths
    assert "/carol/Groups/ro/Orphans/run/main.tif" in paths


def test_deferred_files_keep_their_owner_under_root_owned_directories(populated, world_dir):
    """With every template directory root's (``//`` at the end), the files still belong
    to the fileset's owner: the pending tuple carries their ids."""
    fs = _files(populated, world_dir)["alice-ro"]
    parts = fs.template_prefix.rstrip("/").split("/")
    view = RepositoryView(
        populated.catalog.snapshot_people(), len(parts), fileset_loader(populated.catalog)
    )
    home = view.table.child(view.table.root, "carol")
    view.materialize(home)
    node = view.table.child(view.table.child(home, "ManagedRepository"), parts[0])
    for part in parts[1:]:
        assert node.uid == 0
        node = view.table.child(node, part)
    assert node.uid == 0 and isinstance(node.pending[1], int)  # ids stored explicitly
    leaf = view.table.child(node, "alice-ro.tif")
    assert (leaf.uid, leaf.gid, leaf.mtime_ns) == (3001, 71002, int(fs.created * 1e9))
