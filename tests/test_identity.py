"""OMERO's visibility rules, every permission level x role."""

import pytest

from omerofs.errors import UsageError
from omerofs.identity import PermissionLevel, can_see, make_viewer

GROUP = 7
OWNER = 1  # owns the fileset
LEVELS = list(PermissionLevel)

VIEWERS = {
    "self": make_viewer(OWNER, False, [(GROUP, False)]),
    "member": make_viewer(2, False, [(GROUP, False)]),
    "group owner": make_viewer(3, False, [(GROUP, True)]),
    "non-member": make_viewer(4, False, [(99, True)]),
    "admin": make_viewer(5, True, []),
}
# role -> which levels let that role see another member's fileset
EXPECTED = {
    "self": set(LEVELS),
    "member": {
        PermissionLevel.READ_ONLY,
        PermissionLevel.READ_ANNOTATE,
        PermissionLevel.READ_WRITE,
    },
    "group owner": set(LEVELS),
    "non-member": set(),
    "admin": set(LEVELS),
}


@pytest.mark.parametrize("level", LEVELS, ids=lambda lv: lv.label)
@pytest.mark.parametrize("role", list(VIEWERS))
def test_visibility_matrix(role: str, level: PermissionLevel) -> None:
    assert can_see(VIEWERS[role], OWNER, GROUP, level) == (level in EXPECTED[role])


def test_own_data_stays_visible_after_leaving_group() -> None:
    former = make_viewer(OWNER, False, [])
    assert can_see(former, OWNER, GROUP, PermissionLevel.PRIVATE)


@pytest.mark.parametrize(
    "text,level",
    [
        ("private", PermissionLevel.PRIVATE),
        ("READ-ONLY", PermissionLevel.READ_ONLY),
        ("read_annotate", PermissionLevel.READ_ANNOTATE),
        ("rwrw--", PermissionLevel.READ_WRITE),
        ("readonly", PermissionLevel.READ_ONLY),
        ("rwr---", PermissionLevel.READ_ONLY),
    ],
)
def test_parse_levels(text: str, level: PermissionLevel) -> None:
    assert PermissionLevel.parse(text) is level


@pytest.mark.parametrize(
    "perms,level",
    [
        ("rw----", PermissionLevel.PRIVATE),
        ("rwr---", PermissionLevel.READ_ONLY),
        ("rwra--", PermissionLevel.READ_ANNOTATE),
        ("rwrw--", PermissionLevel.READ_WRITE),
        ("rwrwrw", PermissionLevel.READ_WRITE),
    ],
)
def test_levels_from_omero_perms(perms: str, level: PermissionLevel) -> None:
    assert PermissionLevel.from_perms(perms) is level


def test_bad_level_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="unknown permission level 'public'"):
        PermissionLevel.parse("public")


@pytest.mark.parametrize(
    "text,words",
    [
        ("[users]\nalice = 99999999999\n", "uid 99999999999 is outside"),
        ("[groups]\nlab = -5\n", "gid -5 is outside"),
        ("[users]\nalice = true\n", "uid True is not a number"),
        ('[users]\nalice = ""\n', "is not a number"),
        ("users = 3\n", "[users] must be a table"),
    ],
)
def test_idmap_refuses_ids_a_mount_cannot_serve(tmp_path, text, words) -> None:
    """An OMERO name mapped to an impossible id would end the view (pyfuse3 cannot encode
    it), so the id map refuses it when it is loaded."""
    from omerofs.identity import IdMap

    path = tmp_path / "idmap.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        IdMap.load(path)
    assert words in str(info.value) and str(path) in str(info.value)
