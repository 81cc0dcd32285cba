"""``[notify]`` parsing: every bad key is a UsageError that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from omerofs.errors import UsageError
from omerofs.notify.settings import NotifySettings, load_notify_settings

WHERE = Path("/srv/repo/omerofs.toml")
EMAIL = {"host": "smtp.example.org", "sender": "omerofs@example.org"}
HOOK = {"url": "https://chat.example.org/hooks/abc"}


def parse(section: dict) -> NotifySettings:
    return NotifySettings.parse(section, WHERE)


def test_defaults_and_channels() -> None:
    s = parse({"email": dict(EMAIL), "webhook": [dict(HOOK, name="chat")]})
    assert s.email is not None and s.email.port == 587 and s.email.security == "starttls"
    assert s.digest_interval == 3600 and s.alert_states == ("failed", "incomplete")
    assert s.alert_delay == {"incomplete": 3600}  # a run being written is not a problem yet
    only_failed = parse({"email": EMAIL, "alert_states": ["failed"]})
    assert only_failed.alert_delay == {}
    assert s.channels == ("email", "webhook:chat")
    ssl = parse({"email": dict(EMAIL, security="ssl")})
    assert ssl.email is not None and ssl.email.port == 465  # the implicit-TLS port


def test_webhook_name_is_stable_without_one() -> None:
    # the name keys deliveries in the outbox: the same URL must give the same name
    assert (
        parse({"webhook": [HOOK]}).webhooks[0].name == parse({"webhook": [HOOK]}).webhooks[0].name
    )


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"digest_intervall": 60, "email": EMAIL}, "did you mean 'digest_interval'"),
        ({"email": dict(EMAIL, prot=25)}, "[notify.email] prot"),
        ({"email": dict(EMAIL, port=70000)}, "[notify.email] port"),
        ({"email": dict(EMAIL, port="25")}, "[notify.email] port"),
        ({"email": dict(EMAIL, timeout=True)}, "[notify.email] timeout"),
        ({"email": dict(EMAIL, security="tls")}, "[notify.email] security"),
        ({"email": dict(EMAIL, sender="nobody")}, "[notify.email] sender"),
        ({"email": {"sender": "a@b.org"}}, "needs 'host'"),
        ({"email": dict(EMAIL, opt_out="bob")}, "[notify.email] opt_out"),
        ({"email": dict(EMAIL, staff=["imaging"])}, "[notify.email] staff"),
        ({"email": dict(EMAIL, credentials="smtp.toml")}, "[notify.email] credentials"),
        ({"email": EMAIL, "digest_interval": -1}, "[notify] digest_interval"),
        ({"email": EMAIL, "poll_interval": 0}, "[notify] poll_interval"),
        ({"email": EMAIL, "retry_initial": 60, "retry_max": 10}, "[notify] retry_max"),
        ({"email": EMAIL, "alert_states": ["imported"]}, "[notify] alert_states"),
        (
            {"email": EMAIL, "alert_states": ["failed"], "alert_delay": {"incomplete": 5}},
            "incomplete",
        ),
        ({"email": EMAIL, "alert_delay": {"incomplete": -5}}, "[notify] alert_delay incomplete"),
        ({"email": EMAIL, "alert_delay": 5}, "[notify] alert_delay must be a table"),
        ({"webhook": [{"url": "ftp://x"}]}, "[[notify.webhook]] #1 url"),
        ({"webhook": [{}]}, "[[notify.webhook]] #1 url"),
        ({"webhook": [dict(HOOK, url_file="/etc/u")]}, "[[notify.webhook]] #1 url"),
        ({"webhook": [HOOK, dict(HOOK, events=["done"])]}, "[[notify.webhook]] #2 events"),
        ({"webhook": [dict(HOOK, format="slack")]}, "[[notify.webhook]] #1 format"),
        ({"webhook": [dict(HOOK, headers={"X-A": 1})]}, "[[notify.webhook]] #1 headers"),
        ({"webhook": [dict(HOOK, headers={"X-A": "a\nb"})]}, "[[notify.webhook]] #1 headers"),
        ({"webhook": [dict(HOOK, name="a b")]}, "[[notify.webhook]] #1 name"),
        ({"webhook": [dict(HOOK, secret="s")]}, "[[notify.webhook]] #1 secret"),
        ({"webhook": [HOOK, HOOK]}, "share the name"),
        ({"webhook": "https://x"}, "[notify] webhook"),
        ({}, "no channel"),
        ({"email": "smtp.example.org"}, "[notify.email] must be a table"),
    ],
)
def test_bad_settings_name_the_key(section: dict, named: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse(section)
    assert named in str(exc.value)
    assert str(WHERE) in str(exc.value)


def test_alert_states_are_the_queues_problem_states() -> None:
    from omerofs.ingest import queue

    if not hasattr(queue, "STATES"):
        pytest.skip("this ingest queue does not list its states")
    with pytest.raises(UsageError, match="'faild' is not a problem state"):
        parse({"email": EMAIL, "alert_states": ["faild"]})
    assert parse({"email": EMAIL, "alert_states": ["retrying"]}).alert_states == ("retrying",)


def test_settings_read_from_omerofs_toml(tmp_path: Path) -> None:
    class Config:  # what load_notify_settings needs of a RepoConfig
        root = tmp_path

    (tmp_path / "omerofs.toml").write_text("[repository]\nbackend = 'local'\n")
    assert load_notify_settings(Config()) is None  # no [notify]: notifications off
    (tmp_path / "omerofs.toml").write_text(
        "[notify]\ndigest_interval = 60\n[notify.email]\nhost = 'mx'\nsender = 'a@b.org'\n"
        "[[notify.webhook]]\nurl = 'http://127.0.0.1:9/x'\nevents = ['failed']\n"
    )
    settings = load_notify_settings(Config())
    assert settings is not None and settings.digest_interval == 60
    assert settings.webhooks[0].events == ("failed",)
    (tmp_path / "omerofs.toml").write_text("[notify]\ndigest = 60\n")
    with pytest.raises(UsageError, match="digest"):
        load_notify_settings(Config())
