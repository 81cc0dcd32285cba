"""``omerofs notify test|email|status`` against a real SMTP server (aiosmtpd) on
127.0.0.1 and the real SQLite outbox, on a repository built through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from omerofs.backends.local.catalog import LocalCatalog
from omerofs.config import load_config
from omerofs.ingest.queue import JobQueue
from omerofs.notify import Notifier, load_notify_settings
from omerofs.notify.outbox import NotifyStore
from tests.conftest import run_cli
from tests.test_notify import Clock, SmtpServers, deliver, failed_job, free_port, started

pytest.importorskip("aiosmtpd.controller")


@pytest.fixture
def smtp() -> Iterator[SmtpServers]:
    servers = SmtpServers()
    try:
        yield servers
    finally:
        servers.stop()


def notify_toml(port: int) -> str:
    return (
        '\n[notify]\nfacility = "Imaging Facility"\n\n[notify.email]\nhost = "127.0.0.1"\n'
        f'port = {port}\nsecurity = "none"\nsender = "omerofs@facility.example.org"\n'
    )


@pytest.fixture
def repo(world_dir: Path) -> Path:
    root = world_dir / "repo"
    r = ("-r", str(root))
    run_cli(*r, "init", check=True)
    run_cli(*r, "group", "add", "lab", "--perms", "read-only", check=True)
    run_cli(*r, "user", "add", "alice", "--uid", "3001", "--default-group", "lab",
            "--email", "alice@example.org", check=True)  # fmt: skip
    run_cli(*r, "user", "add", "bob", "--uid", "3002", "--default-group", "lab", check=True)
    return root


def with_relay(root: Path, port: int) -> None:
    toml = root / "omerofs.toml"
    toml.write_text(toml.read_text() + notify_toml(port))


def notify(root: Path, *args: str):
    return run_cli("-r", str(root), "notify", *args)


def test_a_test_message_reaches_the_user(repo: Path, smtp: SmtpServers) -> None:
    inbox = smtp.start()
    with_relay(repo, inbox.port)
    res = notify(repo, "test", "--user", "alice")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "email: sent to alice@example.org via 127.0.0.1\n"
    (mail,) = inbox.received()
    assert mail["To"] == "alice@example.org"
    assert mail["From"] == "omerofs@facility.example.org"


def test_test_failures_are_one_line(repo: Path, smtp: SmtpServers) -> None:
    res = notify(repo, "test", "--user", "alice")  # no [notify] yet
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("omerofs: ") and "no [notify] section" in res.stderr
    with_relay(repo, free_port())  # nothing listens there: the relay is down
    res = notify(repo, "test", "--user", "alice")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("omerofs: notify test: email to alice@example.org")
    res = notify(repo, "test", "--user", "bob")  # no address, no [notify.email] domain
    assert res.returncode == 1 and "no address for bob" in res.stderr
    res = notify(repo, "test", "--user", "zed")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "zed" in res.stderr
    res = notify(repo, "test")
    assert res.returncode == 2 and res.stderr.startswith("omerofs: notify test: ")


def test_email_choice_is_kept(repo: Path) -> None:
    res = notify(repo, "email", "--user", "alice", "failures")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "alice now receives by e-mail: failures only (no success digests)\n"
    assert notify(repo, "email", "--user", "bob", "none").returncode == 0
    store = NotifyStore(load_config(repo).catalog_path)
    try:
        assert (store.email_level("alice"), store.email_level("bob")) == ("failures", "none")
    finally:
        store.close()
    assert notify(repo, "email", "--user", "bob", "all").returncode == 0
    store = NotifyStore(load_config(repo).catalog_path)
    try:
        assert store.email_level("bob") is None  # the default again
    finally:
        store.close()
    for bad, code in ((("--user", "alice", "some"), 2), (("--user", "zed", "none"), 1)):
        res = notify(repo, "email", *bad)
        assert res.returncode == code and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("omerofs: ")


def test_status_shows_the_outbox(repo: Path, smtp: SmtpServers) -> None:
    inbox = smtp.start()
    with_relay(repo, inbox.port)
    assert notify(repo, "status").stdout == "(none)\n"
    config = load_config(repo)
    catalog = LocalCatalog(config.catalog_path)
    queue = JobQueue(config.catalog_path)
    clock = Clock()
    notifier = Notifier(config, catalog, load_notify_settings(config), clock)
    try:
        started(notifier, clock)
        job = failed_job(queue, "alice", "sample.tif", "sample.tif: unknown format")
        notifier.step()
        deliver(notifier)
    finally:
        notifier.close()
        queue.close()
        catalog.close()
    assert len(inbox.received()) == 1
    res = notify(repo, "status", "--json")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert (row["state"], row["channel"], row["user"], row["recipient"]) == (
        "sent",
        "email",
        "alice",
        "alice@example.org",
    )
    assert str(job.id) in row["key"]
    text = notify(repo, "status").stdout
    assert text.splitlines()[0].split()[:4] == ["ID", "STATE", "CHANNEL", "EVENT"]
    assert " sent " in text and "alice@example.org" in text
    assert notify(repo, "status", "--state", "dead").stdout == "(none)\n"
