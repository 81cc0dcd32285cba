"""The ``[notify]`` section of ``omerofs.toml``: who is told what, through which relay
or webhook, how often successes are summed up and how long failed deliveries are
retried. Every key is checked here, once, so a typo is an error at start-up naming the
key, never a silently dead notification channel."""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omerofs.errors import UsageError
from omerofs.ingest import queue
from omerofs.tomlfile import read_toml

DIGEST = "digest"  # the event name of a success digest (the others are job states)
EMAIL_LEVELS = ("all", "failures", "none")  # what a user may choose to receive by e-mail
SECURITY = ("starttls", "ssl", "none")
_DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
WEBHOOK_FORMATS = ("json", "text", "teams")
# A fileset held back as incomplete may be a run still being written: tell its user only
# if it is still held an hour after its job was made.
DEFAULT_ALERT_DELAY = {"incomplete": 3600.0}
# States of ingest_jobs that are not problems (the queue may know more states than this
# version: everything else it lists may be an alert state).
_NOT_PROBLEMS = ("queued", "importing", "imported", "superseded")


def _problem_states() -> tuple[str, ...]:
    """The queue's problem states, when the queue names its states (else anything goes:
    this version cannot tell a typo from a state it does not know)."""
    states = getattr(queue, "STATES", None)
    if not states:
        return ()
    return tuple(s for s in states if s not in _NOT_PROBLEMS)


class _Section:
    """Typed reads of one TOML table; each error names the table and the key."""

    def __init__(self, data: Any, title: str, where: Path) -> None:
        if not isinstance(data, dict):
            raise UsageError(f"{where}: {title} must be a table")
        self.data, self.title, self.where = data, title, where

    def fail(self, key: str, problem: str) -> UsageError:
        return UsageError(f"{self.where}: {self.title} {key}: {problem}")

    def reject_unknown(self, known: set[str]) -> None:
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                options = ", ".join(sorted(known))
                raise self.fail(key, f"unknown key{hint}; known keys: {options}")

    def need(self, key: str) -> Any:
        if key not in self.data:
            raise UsageError(f"{self.where}: {self.title} needs {key!r}")
        return self.data[key]

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.need(key) if required else self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def string(self, key: str, default: str) -> str:
        """Any single-line string, the empty one included."""
        value = self.data.get(key, default)
        if not isinstance(value, str) or any(c in value for c in "\r\n"):
            raise self.fail(key, f"must be a one-line string, not {value!r}")
        return value

    def number(self, key: str, default: float, minimum: float, maximum: float | None = None):
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.fail(key, f"must be {bound}, not {value!r}")
        return value

    def integer(self, key: str, default: int | None, minimum: int, maximum: int) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {value!r}")
        if not minimum <= value <= maximum:
            raise self.fail(key, f"must be between {minimum} and {maximum}, not {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def names(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"must be a list of non-empty strings, not {value!r}")
        return tuple(value)

    def addresses(self, key: str) -> tuple[str, ...]:
        found = self.names(key)
        for address in found:
            local, at, domain = address.partition("@")
            if not (local and at and domain) or any(c.isspace() or c in ",<>" for c in address):
                raise self.fail(key, f"{address!r} is not an e-mail address")
        return found

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute():
            raise self.fail(key, f"must be an absolute path, not {value!r}")
        return path

    def headers(self, key: str) -> dict[str, str]:
        value = self.data.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
        ):
            raise self.fail(key, f'must be a table of header = "value" strings, not {value!r}')
        for name, text in value.items():
            if any(c in name + text for c in "\r\n") or ":" in name:
                raise self.fail(key, f"header {name!r} has a forbidden character")
        return dict(value)


def read_secret_file(path: Path, what: str) -> str:
    """A secret (password, webhook URL, HMAC key) from a file only its owner may read,
    refused otherwise, like ssh refuses a readable private key: omerofs.toml itself is
    readable by every user of the repository."""
    try:
        st = os.stat(path)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: {what} must be UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"{path}: {what} must be private (chmod 600)")
    return text


@dataclass(frozen=True)
class EmailSettings:
    """``[notify.email]``: the facility's SMTP relay and what the messages look like."""

    host: str
    sender: str  # From:
    port: int = 587
    security: str = "starttls"  # starttls | ssl | none
    credentials: Path | None = None  # TOML with username/password, private
    ca_file: Path | None = None  # a private CA for the relay's certificate
    timeout: float = 30.0  # seconds for connecting and for every SMTP reply
    reply_to: str | None = None
    subject_prefix: str = "[omerofs]"
    domain: str | None = None  # user@domain when the catalog has no address
    opt_out: tuple[str, ...] = ()  # users never e-mailed, whatever they chose
    staff: tuple[str, ...] = ()  # addresses that get a copy of every problem message
    list_limit: int = 200  # filesets listed by name in one digest e-mail

    KEYS = frozenset(
        [
            "host",
            "sender",
            "port",
            "security",
            "credentials",
            "ca_file",
            "timeout",
            "reply_to",
            "subject_prefix",
            "domain",
            "opt_out",
            "staff",
            "list_limit",
        ]
    )

    @classmethod
    def parse(cls, data: Any, where: Path) -> EmailSettings:
        s = _Section(data, "[notify.email]", where)
        s.reject_unknown(set(cls.KEYS))
        security = s.choice("security", "starttls", SECURITY)
        sender = s.text("sender", required=True)
        if "@" not in sender or any(c in sender for c in "\r\n"):
            raise s.fail("sender", f"must be an e-mail address, not {sender!r}")
        domain = s.text("domain")
        if domain is not None and ("@" in domain or " " in domain):
            raise s.fail("domain", f"must be a bare domain such as 'example.org', not {domain!r}")
        return cls(
            host=s.text("host", required=True),
            sender=sender,
            port=s.integer("port", _DEFAULT_PORTS[security], 1, 65535),
            security=security,
            credentials=s.path("credentials"),
            ca_file=s.path("ca_file"),
            timeout=float(s.number("timeout", 30, 0.1, 3600)),
            reply_to=s.text("reply_to"),
            subject_prefix=s.string("subject_prefix", "[omerofs]"),
            domain=domain,
            opt_out=s.names("opt_out"),
            staff=s.addresses("staff"),
            list_limit=s.integer("list_limit", 200, 1, 100_000),
        )

    def login(self) -> tuple[str, str] | None:
        """Username and password for SMTP AUTH, or None for an open relay."""
        if self.credentials is None:
            return None
        text = read_secret_file(self.credentials, "SMTP credentials")
        try:
            data = tomllib.loads(text)
            return str(data["username"]), str(data["password"])
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{self.credentials}: {exc}") from None
        except KeyError as exc:
            raise UsageError(f"{self.credentials}: missing {exc.args[0]!r}") from None


@dataclass(frozen=True)
class WebhookSettings:
    """One ``[[notify.webhook]]``: an HTTP endpoint that gets every event it asks for."""

    name: str  # the channel's stable name: deliveries are remembered under it
    url: str | None = None
    url_file: Path | None = None  # the URL in a private file (Slack/Teams URLs are secrets)
    events: tuple[str, ...] = ()  # empty: every alert state and the digest
    format: str = "json"  # json (Slack, Mattermost, generic) | text (only text) | teams
    secret_file: Path | None = None  # HMAC-SHA256 key: X-Omerofs-Signature-256
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a shared-secret header
    timeout: float = 10.0  # seconds for connecting and for the answer
    users: tuple[str, ...] = ()  # empty: everyone's events

    KEYS = frozenset(
        [
            "name",
            "url",
            "url_file",
            "events",
            "format",
            "secret_file",
            "headers",
            "timeout",
            "users",
        ]
    )

    @classmethod
    def parse(cls, data: Any, where: Path, index: int, alert_states: tuple[str, ...]):
        s = _Section(data, f"[[notify.webhook]] #{index + 1}", where)
        s.reject_unknown(set(cls.KEYS))
        url, url_file = s.text("url"), s.path("url_file")
        if (url is None) == (url_file is None):
            raise s.fail("url", "give exactly one of 'url' and 'url_file'")
        if url is not None:
            check_url(url, lambda problem: s.fail("url", problem))
        events = s.names("events")
        for event in events:
            if event != DIGEST and event not in alert_states:
                known = ", ".join((*alert_states, DIGEST))
                raise s.fail("events", f"unknown event {event!r} (known: {known})")
        default_name = "webhook-" + hashlib.sha256(str(url or url_file).encode()).hexdigest()[:10]
        name = s.text("name", default_name)
        if not all(c.isalnum() or c in "-_." for c in name):
            raise s.fail("name", f"may hold letters, digits, '-', '_' and '.', not {name!r}")
        return cls(
            name=name,
            url=url,
            url_file=url_file,
            events=events,
            format=s.choice("format", "json", WEBHOOK_FORMATS),
            secret_file=s.path("secret_file"),
            headers=s.headers("headers"),
            timeout=float(s.number("timeout", 10, 0.1, 600)),
            users=s.names("users"),
        )

    @property
    def channel(self) -> str:
        return f"webhook:{self.name}"

    def wants(self, event: str, user: str) -> bool:
        return (not self.events or event in self.events) and (not self.users or user in self.users)

    def target(self) -> str:
        """The URL to POST to (read from ``url_file`` at every delivery: rotating it
        needs no restart)."""
        if self.url is not None:
            return self.url
        assert self.url_file is not None
        url = read_secret_file(self.url_file, "webhook URL").strip()
        check_url(url, lambda problem: UsageError(f"{self.url_file}: {problem}"))
        return url

    def secret(self) -> bytes | None:
        if self.secret_file is None:
            return None
        return read_secret_file(self.secret_file, "webhook secret").strip().encode()


def check_url(url: str, fail: Callable[[str], Exception]) -> None:
    if not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
        raise fail(f"must be an http:// or https:// URL, not {url!r}")


@dataclass(frozen=True)
class NotifySettings:
    """``[notify]``: events, timing and channels."""

    email: EmailSettings | None = None
    webhooks: tuple[WebhookSettings, ...] = ()
    digest_interval: float = 3600.0  # seconds a success digest collects imports
    alert_states: tuple[str, ...] = ("failed", "incomplete")  # job states told at once...
    alert_delay: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_ALERT_DELAY)
    )  # ...or once a job has been in them this long (a run still being written)
    poll_interval: float = 2.0  # seconds between reads of the ingest queue
    retry_initial: float = 30.0  # first retry of a failed delivery, then doubling...
    retry_max: float = 3600.0  # ...up to this
    give_up_after: float = 7 * 86400.0  # a delivery still failing then is marked dead
    facility: str = "omerofs"  # how messages name the sender

    KEYS = frozenset(
        [
            "email",
            "webhook",
            "digest_interval",
            "alert_states",
            "alert_delay",
            "poll_interval",
            "retry_initial",
            "retry_max",
            "give_up_after",
            "facility",
        ]
    )

    @classmethod
    def parse(cls, section: dict[str, Any], where: Path) -> NotifySettings:
        s = _Section(section, "[notify]", where)
        s.reject_unknown(set(cls.KEYS))
        alert_states = s.names("alert_states", ("failed", "incomplete"))
        known = _problem_states()
        for state in alert_states:
            if state in ("imported", DIGEST, "test") or (known and state not in known):
                hint = f" (problem states: {', '.join(known)})" if known else ""
                raise s.fail("alert_states", f"{state!r} is not a problem state{hint}")
        given = "alert_delay" in section
        delays = section.get("alert_delay", DEFAULT_ALERT_DELAY)
        delay_section = _Section(delays, "[notify] alert_delay", where)
        alert_delay: dict[str, float] = {}
        for state in delays:
            if state in alert_states:
                alert_delay[state] = float(delay_section.number(state, 0, 0))
            elif given:
                raise delay_section.fail(state, "is not one of alert_states")
        hooks = section.get("webhook", [])
        if isinstance(hooks, dict):  # [notify.webhook] written for [[notify.webhook]]
            hooks = [hooks]
        if not isinstance(hooks, list):
            raise s.fail("webhook", "must be one or more [[notify.webhook]] tables")
        webhooks = tuple(
            WebhookSettings.parse(h, where, i, alert_states) for i, h in enumerate(hooks)
        )
        names = [w.name for w in webhooks]
        for name in names:
            if names.count(name) > 1:
                raise s.fail("webhook", f"two webhooks share the name {name!r}")
        retry_initial = float(s.number("retry_initial", 30, 0.01))
        retry_max = float(s.number("retry_max", 3600, 0.01))
        if retry_max < retry_initial:
            raise s.fail("retry_max", f"must be >= retry_initial ({retry_initial})")
        email = EmailSettings.parse(section["email"], where) if "email" in section else None
        settings = cls(
            email=email,
            webhooks=webhooks,
            digest_interval=float(s.number("digest_interval", 3600, 0)),
            alert_states=alert_states,
            alert_delay=alert_delay,
            poll_interval=float(s.number("poll_interval", 2, 0.01, 3600)),
            retry_initial=retry_initial,
            retry_max=retry_max,
            give_up_after=float(s.number("give_up_after", 7 * 86400, 1)),
            facility=s.text("facility", "omerofs"),
        )
        if settings.email is None and not settings.webhooks:
            raise UsageError(
                f"{where}: [notify] has no channel: add [notify.email] or [[notify.webhook]]"
            )
        return settings

    @property
    def channels(self) -> tuple[str, ...]:
        return (("email",) if self.email else ()) + tuple(w.channel for w in self.webhooks)


def load_notify_settings(config: Any) -> NotifySettings | None:
    """The repository's notification settings, or None when ``[notify]`` is absent.
    Accepts what the config layer hands over (parsed settings, the raw table, or
    nothing: then ``omerofs.toml`` is read here)."""
    where = config.root / "omerofs.toml"
    given = getattr(config, "notify", None)
    if isinstance(given, NotifySettings):
        return given
    if isinstance(given, dict):
        return NotifySettings.parse(given, where)
    data = read_toml(where)
    section = data.get("notify")
    return NotifySettings.parse(section, where) if section is not None else None
