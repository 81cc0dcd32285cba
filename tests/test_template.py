"""ManagedRepository template expansion and OMERO's name rules."""

from datetime import datetime

import pytest

from omerofs.errors import UsageError
from omerofs.template import (
    DEFAULT_TEMPLATE,
    TemplateContext,
    expand,
    expand_root_depth,
    resolve_increment,
    sanitize_name,
    validate_template,
)

CTX = TemplateContext("alice", 2, "lab", 5, "rwr---", datetime(2026, 3, 7, 9, 4, 5, 123456))


@pytest.mark.parametrize(
    "template,prefix,root_depth",
    [
        (DEFAULT_TEMPLATE, "alice_2/2026-03/07/09-04-05.123/", 1),
        ("%group%/%user%//%year%/%monthname%", "lab/alice/2026/March/", 2),
        ("%groupId%-%perms%/%day%", "5-rwr---/07/", 0),
        ("%user%/%increment%", "alice/%increment%/", 0),
    ],
)
def test_expand(template: str, prefix: str, root_depth: int) -> None:
    validate_template(template)
    assert expand(template, CTX) == prefix
    assert expand_root_depth(template) == root_depth


@pytest.mark.parametrize(
    "template,message",
    [
        ("", "empty"),
        ("/abs/%user%", "relative"),
        ("%user%//a//b", "at most once"),
        ("%user%/%hash%", "not supported"),
        ("%nope%", "unknown template token"),
        ("%user%/../x", "'..'"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        validate_template(template)


def test_increment_picks_first_free() -> None:
    assert resolve_increment("run-%increment%", {"run-1", "run-2", "run-4"}) == "run-3"


@pytest.mark.parametrize(
    "name,clean",
    [
        ("a:b*c?.tif", "a_b_c_.tif"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("trailing. ", "trailing_"),
        ("..", "_"),
        ("", "_"),
        ("ok name.tif", "ok name.tif"),
    ],
)
def test_sanitize(name: str, clean: str) -> None:
    assert sanitize_name(name) == clean
