"""OMERO's download policy: the rule (``omerofs.policy``, as BinaryAccessPolicy) and
where it is read from (the server's IConfig and each group's config)."""

from __future__ import annotations

from pathlib import Path

import omero.clients  # noqa: F401
import pytest
from omero.rtypes import rlong, rstring

from omerofs.backends.omero import records
from omerofs.backends.omero.cache import CatalogCache
from omerofs.backends.omero.catalog import OmeroCatalog
from omerofs.backends.omero.session import ServerConnection
from omerofs.backends.omero.settings import OmeroSettings
from omerofs.catalog.sqlite import Database
from omerofs.errors import CatalogUnavailable
from omerofs.identity import IdMap, PermissionLevel, make_viewer
from omerofs.policy import KEY, BinaryAccess, can_edit, download_allowed, parse


def allowed(server: str, group: str = "", *, name="a.tif", edit=False, plate=False) -> bool:
    access = BinaryAccess(parse(server), parse(group))
    return download_allowed(access, name=name, can_edit=edit, in_plate=plate)


@pytest.mark.parametrize(
    "server,group,edit,plate,name,expected",
    [
        ("+read,+write,+image", "", False, False, "a.tif", True),  # OMERO's default
        ("+read,+write,+image", "", False, True, "a.tif", False),  # ... keeps plates closed
        ("+read,+write,+image,+plate", "", False, True, "a.tif", True),
        ("+read,+write,+image,+plate", "-plate", False, True, "a.tif", False),  # group says no
        ("-read,+write,+image", "", False, False, "a.tif", False),  # only editors
        ("-read,+write,+image", "", True, False, "a.tif", True),
        ("+read,+write,+image", "-read", False, False, "a.tif", False),  # per group
        ("+read,-write,+image", "", True, False, "a.tif", False),  # nobody at all
        ("+read,-write,+image", "", True, False, "notes.txt", False),  # not even .txt
        ("+read,+write,-image", "", True, False, "a.tif", False),
        ("+read,+write,-image", "", False, False, "notes.txt", True),  # .txt short-cut
        ("+write,+image", "", False, False, "a.tif", False),  # +read missing restricts
        ("+write,+image", "+read", False, False, "a.tif", True),  # ... the group allows
        ("", "", True, False, "a.tif", False),  # nothing configured: nothing allowed
    ],
)
def test_binary_access_rule(server, group, edit, plate, name, expected) -> None:
    assert allowed(server, group, name=name, edit=edit, plate=plate) is expected


def test_who_may_edit() -> None:
    alice, olga, adam, bob = 2, 4, 6, 3
    owner_of_5 = make_viewer(olga, False, [(5, True)])
    member = make_viewer(bob, False, [(5, False), (8, False)])
    admin = make_viewer(adam, True, [])
    rw, ro = PermissionLevel.READ_WRITE, PermissionLevel.READ_ONLY
    assert can_edit(make_viewer(alice, False, [(5, False)]), alice, 5, ro)  # the owner
    assert can_edit(owner_of_5, alice, 5, ro) and can_edit(admin, alice, 5, ro)
    assert not can_edit(member, alice, 5, ro)
    assert can_edit(member, alice, 8, rw)  # read-write groups: every member


def test_group_config_rows() -> None:
    rows = records.rows(
        [
            [rlong(5), rstring(KEY), rstring("-read, +plate")],
            [rlong(5), rstring("omero.other"), rstring("x")],
            [rlong(5), rstring(KEY), rstring("-image")],  # several entries add up
            [rlong(6), rstring(KEY), None],
        ]
    )
    assert records.group_policies(rows, KEY) == {
        5: frozenset({"-read", "+plate", "-image"}),
        6: frozenset(),
    }


class ConfigServer:
    """The two calls the policy is read with: IConfig.getConfigValue and one projection."""

    def __init__(self) -> None:
        self.value = "+read,+write,+image,+plate"
        self.up = True

    def getSession(self):
        if not self.up:
            import Ice

            raise Ice.ConnectionRefusedException()
        return self

    def getConfigService(self):
        return self

    def getQueryService(self):
        return self

    def getConfigValue(self, key: str) -> str:
        assert key == KEY
        return self.value

    def projection(self, hql: str, params, ctx):
        assert "join g.config c" in hql
        return [[rlong(5), rstring(KEY), rstring("-plate")]]

    def closeSession(self) -> None:
        pass

    def __del__(self) -> None:
        pass


def test_policy_read_from_the_server_and_kept_for_outages(tmp_path: Path) -> None:
    server = ConfigServer()
    settings = OmeroSettings("127.0.0.1", 4064, tmp_path / "c.toml", tmp_path)
    db = Database(tmp_path / "state.db", "repository state")
    try:
        catalog = OmeroCatalog(
            settings, ServerConnection(settings, lambda s: server), IdMap({}, {}), CatalogCache(db)
        )
        assert catalog.binary_access(5) == BinaryAccess(
            frozenset({"+read", "+write", "+image", "+plate"}), frozenset({"-plate"})
        )
        assert catalog.binary_access(6).group == frozenset()
        # a new process during an outage: the persisted policy
        server.up = False
        later = OmeroCatalog(
            settings,
            ServerConnection(settings, lambda s: server.getSession()),
            IdMap({}, {}),
            CatalogCache(db),
        )
        assert later.binary_access(5).group == frozenset({"-plate"})
        empty = Database(tmp_path / "empty.db", "repository state")
        with pytest.raises(CatalogUnavailable):
            OmeroCatalog(
                settings,
                ServerConnection(settings, lambda s: server.getSession()),
                IdMap({}, {}),
                CatalogCache(empty),
            ).binary_access(5)
        empty.close()
    finally:
        db.close()


def test_the_embedded_settings() -> None:
    """``[view] binary_access_groups``: OMERO's per-group config entries, by group name."""
    from omerofs.errors import UsageError
    from omerofs.policy import BinaryAccessPolicy, check_tokens, parse_groups

    assert parse_groups("screening: -read, +plate; public:+plate;") == {
        "screening": frozenset({"-read", "+plate"}),
        "public": frozenset({"+plate"}),
    }
    assert parse_groups("") == {}
    for bad in ("screening +plate", ": +plate", "lab: +pixels"):
        with pytest.raises(UsageError):
            parse_groups(bad)
    check_tokens("+read, -write,+image,-plate")
    with pytest.raises(UsageError, match="read"):
        check_tokens("read")
    policy = BinaryAccessPolicy.of(parse("+read,+write,+image"), {5: frozenset({"+plate"})})
    assert not policy.for_group(5).denies("plate") and policy.for_group(6).denies("plate")
