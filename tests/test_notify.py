"""Notifications end to end: jobs written through the real ingest queue, a real SMTP
server (aiosmtpd) and a real HTTP receiver on 127.0.0.1, the real SQLite outbox.

Most tests drive the notifier step by step with an injected clock (deterministic: no
waiting for digests or backoff); the loop tests run it as the ingest daemon does."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio

from omerofs.errors import NotFound, UsageError
from omerofs.imports.filesets import plan_fileset
from omerofs.imports.importer import ImportHooks, Target
from omerofs.ingest.paths import FilesetKey
from omerofs.ingest.queue import Job, JobQueue
from omerofs.notify import (
    DeliveryFailed,
    Notifier,
    NotifySettings,
    notify_status,
    send_test,
    set_email_preference,
)
from tests.conftest import (
    Repo,
    as_user,
    free_port,
    make_tiff,
    needs_fuse,
    needs_root,
    wait_for,
)

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult  # noqa: E402

SECRET = b"s3cret-for-hmac"


# -- real servers on loopback ------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler keeping what it received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], email.message.EmailMessage, object]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg, session))
        return "250 OK"

    def received(self) -> list[email.message.EmailMessage]:
        with self.lock:
            return [m for _, _, m, _ in self.messages]


class SmtpServers:
    """Starts aiosmtpd controllers (each a thread with its own loop); stops them all."""

    def __init__(self) -> None:
        self.controllers: list = []

    def start(self, port: int | None = None, **smtp_parameters) -> Inbox:
        inbox = Inbox()
        controller = aiosmtpd_controller.Controller(
            inbox, hostname="127.0.0.1", port=port or free_port(), **smtp_parameters
        )
        controller.start()
        inbox.port = controller.port  # type: ignore[attr-defined]
        self.controllers.append(controller)
        return inbox

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()
        self.controllers.clear()


@pytest.fixture
def smtp() -> Iterator[SmtpServers]:
    servers = SmtpServers()
    try:
        yield servers
    finally:
        servers.stop()


class Receiver:
    """An HTTP server that records every POST and answers ``status``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/token"

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


class Clock:
    """The notifier's clock, moved by the test (starts at the real time, as job rows do)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- jobs through the real ingest queue and importer -----------------------------------------


def failed_job(queue: JobQueue, user: str, name: str, error: str) -> Job:
    root = f"{user}/P/D/{name}"
    job = queue.enqueue(FilesetKey(user, None, "P", "D", root, False), "ln_rm", {root: (4096, 1)})
    queue.start(job.id)
    queue.fail(job.id, error)
    return queue.job(job.id)


def imported_job(repo: Repo, queue: JobQueue, source: Path, user: str, seed: int) -> Job:
    """A real import of a real TIFF whose job row flips to imported in the catalog's
    own transaction, as the ingest service does it."""
    make_tiff(source, seed=seed)
    root = f"{user}/P/D/{source.name}"
    job = queue.enqueue(
        FilesetKey(user, None, "P", "D", root, False), "cp", {root: (source.stat().st_size, 1)}
    )
    queue.start(job.id)
    owner, group = repo.importer.resolve_identity(user, None)
    repo.importer.import_fileset(
        plan_fileset(source),
        owner,
        group,
        "cp",
        Target("P", "D"),
        ImportHooks(on_commit=queue.commit_statements(job)),
    )
    return queue.job(job.id)


def settings(inbox_port: int, receiver: Receiver | None, **extra) -> NotifySettings:
    section: dict = {
        "email": {
            "host": "127.0.0.1",
            "port": inbox_port,
            "security": "none",
            "sender": "omerofs@facility.example.org",
            "domain": "example.org",
            "timeout": 60,
        },
        "retry_initial": 10,
        "retry_max": 100,
        "facility": "Imaging Facility",
    }
    if receiver is not None:
        secret = Path(os.environ.get("TMPDIR", "/tmp")) / f"omerofs-hook-{os.getpid()}.key"
        secret.write_bytes(SECRET + b"\n")
        secret.chmod(0o600)
        section["webhook"] = [{"name": "chat", "url": receiver.url, "secret_file": str(secret)}]
    for key, value in extra.items():
        if key.startswith("email_") and value is None:
            del section["email"][key[len("email_") :]]
        elif key.startswith("email_"):
            section["email"][key[len("email_") :]] = value
        else:
            section[key] = value
    return NotifySettings.parse(section, Path("/test/omerofs.toml"))


def deliver(notifier: Notifier) -> None:
    async def all_channels() -> None:
        for channel in notifier.settings.channels:
            await notifier.deliver_due(channel)

    trio.run(all_channels)


@pytest.fixture
def queue(populated: Repo) -> Iterator[JobQueue]:
    q = JobQueue(populated.config.catalog_path)
    try:
        yield q
    finally:
        q.close()


@pytest.fixture
def notifiers(populated: Repo) -> Iterator:
    made: list[Notifier] = []

    def make(s: NotifySettings, clock: Clock) -> Notifier:
        n = Notifier(populated.config, populated.catalog, s, clock)
        made.append(n)
        return n

    try:
        yield make
    finally:
        for n in made:
            n.close()


def started(notifier: Notifier, clock: Clock) -> None:
    """The first step sets the cursor (history before it is not told)."""
    notifier.step()
    clock.now += 1


# -- the tests ---------------------------------------------------------------------------


def test_failed_job_sends_one_email_and_one_webhook(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers
) -> None:
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, receiver), clock)
    started(notifier, clock)
    job = failed_job(queue, "alice", "sample.tif", "sample.tif: unknown or unreadable format")
    notifier.step()
    deliver(notifier)

    (mail,) = inbox.received()
    assert mail["To"] == "alice@example.org"  # [notify.email] domain: no catalog address
    assert mail["From"] == "omerofs@facility.example.org"
    assert mail["Subject"] == "[omerofs] Import failed: sample.tif"
    assert mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_content()
    assert "P/D/sample.tif failed" in text and "unknown or unreadable format" in text

    ((path, headers, raw),) = receiver.requests
    assert path == "/hooks/T000/B000/token"
    doc = json.loads(raw)
    assert doc["schema"] == "omerofs.notification/1"
    assert doc["event"] == "failed" and doc["user"] == "alice"
    assert doc["id"] == f"failed:{job.id}" == headers["X-Omerofs-Delivery"]
    assert doc["repository"] == str(populated.config.root)
    assert doc["text"].startswith("Imaging Facility: the import of P/D/sample.tif (alice) failed")
    (record,) = doc["jobs"]
    assert record["job"] == job.id and record["root"] == "alice/P/D/sample.tif"
    assert record["error"] == "sample.tif: unknown or unreadable format"
    assert (record["project"], record["dataset"], record["fileset"]) == ("P", "D", None)
    assert record["files"] == 1 and record["bytes"] == 4096
    assert headers["Content-Type"].startswith("application/json")
    expected = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    assert headers["X-Omerofs-Signature-256"] == expected

    for _ in range(3):  # more polls, later: nothing is told twice
        clock.now += 5000
        notifier.step()
        deliver(notifier)
    assert len(inbox.received()) == 1 and len(receiver.requests) == 1
    assert [d["state"] for d in notify_status(populated.config)] == ["sent", "sent"]


def test_history_before_the_first_start_is_not_told(
    populated: Repo, queue: JobQueue, receiver: Receiver, notifiers
) -> None:
    old = failed_job(queue, "alice", "old.tif", "damaged")
    clock = Clock()
    clock.now = queue.job(old.id).updated  # the notifier is switched on right after
    section = {"webhook": [{"name": "chat", "url": receiver.url}]}
    notifier = notifiers(NotifySettings.parse(section, Path("/t/omerofs.toml")), clock)
    started(notifier, clock)
    new = failed_job(queue, "alice", "new.tif", "damaged")
    notifier.step()
    deliver(notifier)
    assert [d["id"] for d in receiver.bodies()] == [f"failed:{new.id}"]


def test_imports_make_one_digest_per_user(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers, world_dir
) -> None:
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, receiver, digest_interval=3600), clock)
    started(notifier, clock)
    a1 = imported_job(populated, queue, world_dir / "acq" / "a1.tif", "alice", 1)
    a2 = imported_job(populated, queue, world_dir / "acq" / "a2.tif", "alice", 2)
    notifier.step()
    deliver(notifier)
    assert inbox.received() == [] and receiver.requests == []  # collected, not sent yet
    b1 = imported_job(populated, queue, world_dir / "acq" / "b1.tif", "bob", 3)
    clock.now += 3600  # alice's interval is over, bob's (started later) is not
    notifier.step()
    deliver(notifier)

    (mail,) = inbox.received()
    assert mail["To"] == "alice@example.org"
    assert mail["Subject"] == "[omerofs] 2 filesets imported"
    text = mail.get_content()
    for job in (a1, a2):
        assert f"{job.key.name} (fileset {job.fileset_id}, 1 file" in text
    (doc,) = receiver.bodies()
    assert doc["event"] == "digest" and doc["user"] == "alice"
    assert [j["job"] for j in doc["jobs"]] == [a1.id, a2.id]
    assert [j["fileset"] for j in doc["jobs"]] == [a1.fileset_id, a2.fileset_id]
    assert all(j["state"] == "imported" for j in doc["jobs"])
    assert doc["counts"]["filesets"] == 2
    assert doc["counts"]["bytes"] == a1.bytes_total + a2.bytes_total
    assert doc["text"].splitlines()[0] == "Imaging Facility: 2 filesets of alice imported"
    assert doc["period"]["from"] <= doc["period"]["to"]

    clock.now += 3600
    notifier.step()
    deliver(notifier)
    assert [m["To"] for m in inbox.received()] == ["alice@example.org", "bob@example.org"]
    assert [d["jobs"][0]["job"] for d in receiver.bodies()] == [a1.id, b1.id]
    clock.now += 7200  # nothing new: no empty digests
    notifier.step()
    deliver(notifier)
    assert len(inbox.received()) == 2 and len(receiver.requests) == 2


def test_mail_server_down_loses_nothing_and_blocks_nothing(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers, world_dir
) -> None:
    """The relay accepts the connection and then says nothing (the worst case: a hung
    server). Meanwhile the daemon's trio loop keeps running, webhooks are delivered,
    imports complete; the mail goes out once the relay is back."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    port = hung.getsockname()[1]
    accepted: list[socket.socket] = []
    acceptor = threading.Thread(target=lambda: accepted.append(hung.accept()[0]), daemon=True)
    acceptor.start()
    clock = Clock()
    notifier = notifiers(settings(port, receiver, poll_interval=0.02), clock)
    started(notifier, clock)
    loop = LoopThread(notifier)
    try:
        job = failed_job(queue, "alice", "bad.tif", "bad.tif: checksum mismatch")
        wait_for(lambda: accepted, timeout=30, what="the notifier connecting to the relay")
        # the notifier now waits inside smtplib for a greeting that never comes, and:
        wait_for(lambda: len(receiver.requests) == 1, timeout=30, what="the webhook")
        ticks = loop.ticks
        wait_for(lambda: loop.ticks > ticks + 3, timeout=30, what="the trio loop to run")
        done = imported_job(populated, queue, world_dir / "acq" / "ok.tif", "alice", 4)
        assert done.state == "imported"
        assert [d["state"] for d in notify_status(populated.config) if d["channel"] == "email"] == [
            "pending"
        ]
        hung.close()  # the relay gives up: the attempt fails, the message waits
        accepted[0].sendall(b"421 shutting down\r\n")
        accepted[0].recv(100)  # the notifier hangs up first (no TIME_WAIT on our port)
        accepted[0].close()
        wait_for(
            lambda: _email_rows(populated)[0]["attempts"] == 1, timeout=30, what="a failed try"
        )
        assert _email_rows(populated)[0]["last_error"]
        inbox = smtp.start(port)  # the relay is back
        clock.now += 100  # past the backoff
        wait_for(lambda: inbox.received(), timeout=30, what="the mail after the outage")
        wait_for(  # the relay has it: the outbox records it right after
            lambda: [d["state"] for d in notify_status(populated.config)] == ["sent", "sent"],
            timeout=30,
            what="the outbox to record the delivery",
        )
    finally:
        loop.stop()
    (mail,) = inbox.received()
    assert mail["Subject"] == "[omerofs] Import failed: bad.tif"
    assert json.loads(receiver.requests[0][2])["id"] == f"failed:{job.id}"


def _email_rows(repo: Repo) -> list[dict]:
    return [d for d in notify_status(repo.config) if d["channel"] == "email"]


class LoopThread:
    """The notifier's loops in a trio loop of their own, with a heartbeat task standing
    in for the FUSE handlers that share the daemon's loop."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.ticks = 0
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise AssertionError(f"notifier loop did not start: {self.failure!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self.failure = exc
            self.ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stopping = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.notifier.run)
            nursery.start_soon(self._tick)
            self.ready.set()
            await self.stopping.wait()
            nursery.cancel_scope.cancel()

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await trio.sleep(0.005)

    def stop(self) -> None:
        if self.thread.is_alive():
            trio.from_thread.run_sync(self.stopping.set, trio_token=self.token)
        self.thread.join(30)
        assert not self.thread.is_alive(), "notifier loop did not stop"
        assert self.failure is None, repr(self.failure)


NOTIFIER_SCRIPT = """
import logging, sys, trio
from pathlib import Path
from omerofs.backend import open_backend
from omerofs.config import load_config
from omerofs.notify import run_notifier
logging.basicConfig(level=logging.INFO)
config = load_config(Path(sys.argv[1]))
backend = open_backend(config)
trio.run(run_notifier, config, backend.catalog)
"""


def test_killed_notifier_neither_loses_nor_repeats(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver
) -> None:
    """run_notifier in a process of its own (settings from omerofs.toml), kill -9 while a
    mail is pending; a failure happens while no notifier runs; the next notifier sends
    each message exactly once."""
    port = free_port()  # nothing listens yet: the relay is down
    secret = populated.config.root / "hook.key"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    with open(populated.config.root / "omerofs.toml", "a") as toml:
        toml.write(
            "\n[notify]\npoll_interval = 0.02\nretry_initial = 0.05\nretry_max = 0.2\n"
            "[notify.email]\nhost = '127.0.0.1'\n"
            f"port = {port}\nsecurity = 'none'\nsender = 'omerofs@example.org'\n"
            "domain = 'example.org'\ntimeout = 10\n"
            f"[[notify.webhook]]\nname = 'chat'\nurl = '{receiver.url}'\n"
            f"secret_file = '{secret}'\n"
        )
    log = populated.config.root / "logs" / "notifier.log"
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", NOTIFIER_SCRIPT, str(populated.config.root)],
                stdout=out,
                stderr=out,
            )
        procs.append(proc)
        return proc

    def alive(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            raise AssertionError(f"notifier died: {log.read_text()}")

    db = populated.config.catalog_path
    try:
        first = start()
        wait_for(lambda: alive(first) or _cursor(db), timeout=60, what="the notifier's cursor")
        one = failed_job(queue, "alice", "one.tif", "one.tif: damaged")
        wait_for(
            lambda: (
                alive(first)
                or [
                    (d["channel"], d["state"], d["attempts"] >= 1)
                    for d in notify_status(populated.config)
                ]
                == [("email", "pending", True), ("webhook:chat", "sent", True)]
            ),
            timeout=30,
            what="webhook one sent and a failed mail attempt",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        two = failed_job(queue, "bob", "two.tif", "two.tif: damaged")  # nobody is watching
        inbox = smtp.start(port)
        second = start()
        wait_for(lambda: alive(second) or len(inbox.received()) == 2, timeout=60, what="both mails")
        wait_for(
            lambda: alive(second) or not notify_status_pending(populated),
            timeout=30,
            what="an empty outbox",
        )
        second.terminate()
        second.wait(10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(m["Subject"] for m in inbox.received()) == [
        "[omerofs] Import failed: one.tif",
        "[omerofs] Import failed: two.tif",
    ]
    assert sorted(d["id"] for d in receiver.bodies()) == sorted(
        [f"failed:{one.id}", f"failed:{two.id}"]
    )
    assert len(receiver.requests) == 2


def notify_status_pending(repo: Repo) -> list[dict]:
    return [d for d in notify_status(repo.config) if d["state"] == "pending"]


def _cursor(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        try:
            return bool(conn.execute("SELECT 1 FROM notify_state").fetchone())
        except sqlite3.OperationalError:  # the notifier has not made its tables yet
            return False


def test_opt_out_is_respected(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers, world_dir
) -> None:
    inbox = smtp.start()
    clock = Clock()
    s = settings(inbox.port, receiver, email_opt_out=["carol"], digest_interval=0)
    notifier = notifiers(s, clock)
    started(notifier, clock)
    set_email_preference(populated.config, populated.catalog, "bob", "none")
    set_email_preference(populated.config, populated.catalog, "alice", "failures")
    with pytest.raises(UsageError):
        set_email_preference(populated.config, populated.catalog, "alice", "some")
    with pytest.raises(NotFound):
        set_email_preference(populated.config, populated.catalog, "zed", "none")
    failed_job(queue, "bob", "b.tif", "b.tif: damaged")
    failed_job(queue, "carol", "c.tif", "c.tif: damaged")
    failed_job(queue, "alice", "a.tif", "a.tif: damaged")
    imported_job(populated, queue, world_dir / "acq" / "a_ok.tif", "alice", 5)
    notifier.step()
    deliver(notifier)

    # alice asked for failures only; bob for nothing; the admin opted carol out
    assert [m["To"] for m in inbox.received()] == ["alice@example.org"]
    assert inbox.received()[0]["Subject"] == "[omerofs] Import failed: a.tif"
    skipped = {d["user"]: d for d in _email_rows(populated) if d["state"] == "skipped"}
    assert set(skipped) == {"alice", "bob", "carol"}  # alice: her digest
    assert skipped["alice"]["event"] == "digest"
    assert "receives none" in skipped["bob"]["last_error"]
    # webhooks are the facility's channel: every event still goes there
    assert sorted((d["user"], d["event"]) for d in receiver.bodies()) == [
        ("alice", "digest"),
        ("alice", "failed"),
        ("bob", "failed"),
        ("carol", "failed"),
    ]
    set_email_preference(populated.config, populated.catalog, "bob", "all")  # back on
    failed_job(queue, "bob", "b2.tif", "b2.tif: damaged")
    notifier.step()
    deliver(notifier)
    assert [m["To"] for m in inbox.received()][-1] == "bob@example.org"


def test_staff_get_a_copy_of_every_problem(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, notifiers, world_dir
) -> None:
    inbox = smtp.start()
    clock = Clock()
    staff = ["imaging@facility.example.org", "lead@facility.example.org"]
    notifier = notifiers(settings(inbox.port, None, email_staff=staff, digest_interval=0), clock)
    started(notifier, clock)
    set_email_preference(populated.config, populated.catalog, "bob", "none")
    failed_job(queue, "bob", "b.tif", "b.tif: damaged")
    imported_job(populated, queue, world_dir / "acq" / "a.tif", "alice", 7)
    notifier.step()
    deliver(notifier)
    with inbox.lock:
        envelopes = [(rcpt, msg["Subject"]) for _, rcpt, msg, _ in inbox.messages]
    # bob opted out, his failure still reaches the staff; digests are the users' own
    assert envelopes == [
        (staff, "[omerofs] Import failed: b.tif"),
        (["alice@example.org"], "[omerofs] 1 fileset imported"),
    ]
    text = inbox.received()[0].get_content()
    assert text.startswith("Hello,\r\n") and "the import of bob's P/D/b.tif failed" in text


def test_webhook_errors_retry_or_give_up(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers
) -> None:
    """5xx and 429 are retried with backoff; other 4xx will never work and are given up
    (with the reason in the outbox) instead of blocking the channel."""
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, receiver), clock)
    started(notifier, clock)
    receiver.status = 503
    failed_job(queue, "alice", "x.tif", "x.tif: damaged")
    notifier.step()
    deliver(notifier)
    (hook,) = [d for d in notify_status(populated.config) if d["channel"] == "webhook:chat"]
    assert hook["state"] == "pending" and "503" in hook["last_error"]
    assert "B000" not in hook["last_error"]  # the URL's secret path stays out of the outbox
    deliver(notifier)  # paused: not tried again before the backoff
    assert len(receiver.requests) == 1
    receiver.status = 200
    clock.now += 10
    deliver(notifier)
    assert len(receiver.requests) == 2
    receiver.status = 404
    failed_job(queue, "alice", "y.tif", "y.tif: damaged")
    notifier.step()
    deliver(notifier)
    states = [d["state"] for d in notify_status(populated.config) if d["channel"] != "email"]
    assert states == ["sent", "dead"]
    assert len(inbox.received()) == 2  # e-mail was never held up


def test_incomplete_fileset_is_told_when_still_held_an_hour_later(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers
) -> None:
    """A held fileset (a crashed writer's half file, a run missing parts) may just be a
    run still being written: told once it is still held an hour after its job was made;
    one that settles before then is never told."""
    hold = getattr(queue, "hold", None)
    if hold is None:
        pytest.skip("this ingest queue cannot hold incomplete filesets")
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, receiver), clock)
    started(notifier, clock)

    def held(name: str, reason: str) -> Job:
        root = f"alice/P/D/{name}"
        return hold(
            FilesetKey("alice", None, "P", "D", root, False), "ln_rm", {root: (9, 1)}, reason
        )

    stuck = held("stack.tif", "2 of 3 planes present")
    settled = held("run.tif", "1 of 2 planes present")
    notifier.step()
    deliver(notifier)
    assert inbox.received() == [] and receiver.requests == []
    queue.supersede(settled.id)  # the writer finished it: a newer job stands for it
    clock.now += 3600
    notifier.step()
    deliver(notifier)
    (mail,) = inbox.received()
    assert mail["Subject"] == "[omerofs] Not imported, incomplete: stack.tif"
    assert "2 of 3 planes present" in mail.get_content()
    (doc,) = receiver.bodies()
    assert doc["event"] == "incomplete" and doc["jobs"][0]["job"] == stuck.id
    assert doc["text"].startswith("Imaging Facility: the import of P/D/stack.tif (alice) is held")
    clock.now += 3600
    notifier.step()
    deliver(notifier)
    assert len(inbox.received()) == 1 and len(receiver.requests) == 1


def test_odd_file_names_do_not_break_mail(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, notifiers
) -> None:
    """A name with a newline (legal in POSIX) must not become a header injection or a
    message that blocks the channel."""
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, None), clock)
    started(notifier, clock)
    failed_job(queue, "alice", "two\nlines\r.tif", "damaged")
    failed_job(queue, "alice", "plain.tif", "damaged")
    notifier.step()
    deliver(notifier)
    subjects = [m["Subject"] for m in inbox.received()]
    assert subjects == [
        "[omerofs] Import failed: two?lines?.tif",
        "[omerofs] Import failed: plain.tif",
    ]


def test_chat_text_cannot_mention_a_channel(
    populated: Repo, queue: JobQueue, receiver: Receiver, notifiers
) -> None:
    section = {"webhook": [{"name": "chat", "url": receiver.url}]}
    clock = Clock()
    notifier = notifiers(NotifySettings.parse(section, Path("/t/omerofs.toml")), clock)
    started(notifier, clock)
    failed_job(queue, "alice", "<!channel> & co.tif", "damaged")
    notifier.step()
    deliver(notifier)
    (doc,) = receiver.bodies()
    assert "the import of P/D/&lt;!channel&gt; &amp; co.tif (alice) failed" in doc["text"]
    assert doc["jobs"][0]["name"] == "<!channel> & co.tif"  # the data stays as it is


def test_removed_channel_does_not_leave_messages_pending(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers
) -> None:
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, receiver), clock)
    started(notifier, clock)
    receiver.status = 500
    failed_job(queue, "alice", "x.tif", "damaged")
    notifier.step()
    deliver(notifier)
    notifier.close()
    notifiers(settings(inbox.port, None), clock)  # restarted without the webhook
    states = {d["channel"]: (d["state"], d["last_error"]) for d in notify_status(populated.config)}
    assert states == {
        "email": ("sent", None),
        "webhook:chat": ("dead", "its channel was removed from [notify]"),
    }


def test_failure_being_retried_is_not_told_until_final(
    populated: Repo, queue: JobQueue, receiver: Receiver, notifiers
) -> None:
    """A passing failure (the server down) is retried by the ingest service: not a
    problem to tell; the same job failing for good afterwards is told once."""
    retry_later = getattr(queue, "retry_later", None)
    if retry_later is None:
        pytest.skip("this ingest queue does not retry failures by itself")
    clock = Clock()
    section = {"webhook": [{"name": "chat", "url": receiver.url}]}
    notifier = notifiers(NotifySettings.parse(section, Path("/t/omerofs.toml")), clock)
    started(notifier, clock)
    root = "alice/P/D/r.tif"
    job = queue.enqueue(FilesetKey("alice", None, "P", "D", root, False), "ln", {root: (5, 1)})
    for _ in range(2):
        queue.start(job.id)
        retry_later(job.id, "catalog unavailable", time.time() + 60)
        notifier.step()
        deliver(notifier)
        queue.requeue(job.id)
    assert receiver.requests == []
    queue.start(job.id)
    queue.fail(job.id, "r.tif: unknown format")
    for _ in range(2):
        notifier.step()
        deliver(notifier)
    (doc,) = receiver.bodies()
    assert doc["id"] == f"failed:{job.id}" and doc["jobs"][0]["attempts"] == 3


def test_damaged_job_row_is_still_told(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, notifiers
) -> None:
    """A row this version cannot fully read (a manifest that is not JSON) is told without
    the file count rather than stopping the notifier."""
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, None), clock)
    started(notifier, clock)
    job = failed_job(queue, "alice", "odd.tif", "odd.tif: damaged")
    with sqlite3.connect(populated.config.catalog_path) as conn:  # no public way to damage
        conn.execute("UPDATE ingest_jobs SET manifest='{not json' WHERE id=?", (job.id,))
    notifier.step()
    deliver(notifier)
    (mail,) = inbox.received()
    assert "odd.tif" in mail["Subject"]


def server_tls(where: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1 (the client trusts it as its ca_file)."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


def test_implicit_tls_relay_and_certificate_check(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, notifiers, world_dir: Path
) -> None:
    """security = "ssl" (TLS from the first byte, port 465 style); a relay whose
    certificate the client does not trust is a failure to retry, not a send in clear."""
    cert, context = server_tls(world_dir)
    inbox = smtp.start(ssl_context=context)
    clock = Clock()
    untrusted = notifiers(settings(inbox.port, None, email_security="ssl"), clock)
    started(untrusted, clock)
    failed_job(queue, "alice", "a.tif", "damaged")
    untrusted.step()
    deliver(untrusted)
    assert inbox.received() == []
    (row,) = _email_rows(populated)
    assert row["state"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in row["last_error"]
    untrusted.close()
    trusted = notifiers(
        settings(inbox.port, None, email_security="ssl", email_ca_file=str(cert)), clock
    )
    clock.now += 100
    deliver(trusted)
    (mail,) = inbox.received()
    assert mail["Subject"] == "[omerofs] Import failed: a.tif"


def test_message_failing_for_a_week_is_given_up(
    populated: Repo, queue: JobQueue, receiver: Receiver, notifiers
) -> None:
    section = {"give_up_after": 86400, "webhook": [{"name": "chat", "url": receiver.url}]}
    clock = Clock()
    notifier = notifiers(NotifySettings.parse(section, Path("/t/omerofs.toml")), clock)
    started(notifier, clock)
    receiver.status = 502
    failed_job(queue, "alice", "a.tif", "damaged")
    notifier.step()
    deliver(notifier)
    clock.now += 86401
    deliver(notifier)
    (row,) = notify_status(populated.config)
    assert row["state"] == "dead" and "give_up_after" in row["last_error"]
    assert len(receiver.requests) == 1  # not tried again once too old


def test_send_test_with_starttls_and_auth(
    populated: Repo, smtp: SmtpServers, receiver: Receiver, world_dir: Path
) -> None:
    """``omerofs notify test``: a real STARTTLS relay that requires AUTH, its certificate
    from a private CA file; the webhook gets the test document."""
    cert, context = server_tls(world_dir)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"pw", handled=False)

    inbox = smtp.start(
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    credentials = world_dir / "smtp.toml"
    credentials.write_text('username = "relayuser"\npassword = "pw"\n')
    credentials.chmod(0o600)
    section = (
        "\n[notify]\n[notify.email]\nhost = '127.0.0.1'\n"
        f"port = {inbox.port}\nsecurity = 'starttls'\nsender = 'omerofs@example.org'\n"
        f"domain = 'example.org'\ncredentials = '{credentials}'\nca_file = '{cert}'\n"
        f"[[notify.webhook]]\nname = 'chat'\nurl = '{receiver.url}'\nformat = 'teams'\n"
    )
    with open(populated.config.root / "omerofs.toml", "a") as toml:
        toml.write(section)

    lines = send_test(populated.config, populated.catalog, "alice")
    assert lines == [
        "email: sent to alice@example.org via 127.0.0.1",
        "webhook chat: accepted (200)",
    ]
    assert logins == [(b"relayuser", b"pw")]
    (mail,) = inbox.received()
    assert mail["Subject"] == "[omerofs] Test notification"
    (doc,) = receiver.bodies()
    assert doc["event"] == "test" and doc["user"] == "alice"
    assert doc["type"] == "message"  # the Teams Workflows envelope, fields beside it
    card = doc["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and card["body"][0]["text"] == doc["text"]

    with pytest.raises(NotFound):
        send_test(populated.config, populated.catalog, "nobody")
    credentials.write_text('username = "relayuser"\npassword = "wrong"\n')
    with pytest.raises(DeliveryFailed, match="535"):
        send_test(populated.config, populated.catalog, "alice")
    credentials.chmod(0o644)  # a readable password file is refused, like ssh keys
    with pytest.raises(DeliveryFailed, match="must be private"):
        send_test(populated.config, populated.catalog, "alice")


def test_address_comes_from_the_catalog(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, notifiers
) -> None:
    """Experimenter.email first; the [notify.email] domain only for users without one."""
    modify = getattr(populated.catalog, "modify_experimenter", None)
    if modify is None:
        pytest.skip("the embedded catalog cannot store e-mail addresses yet")
    modify("alice", email="alice.liddell@lab.example.net")
    inbox = smtp.start()
    clock = Clock()
    notifier = notifiers(settings(inbox.port, None), clock)
    started(notifier, clock)
    failed_job(queue, "alice", "a.tif", "a.tif: damaged")
    failed_job(queue, "bob", "b.tif", "b.tif: damaged")
    notifier.step()
    deliver(notifier)
    assert sorted(m["To"] for m in inbox.received()) == [
        "alice.liddell@lab.example.net",
        "bob@example.org",
    ]


def test_user_without_any_address_is_skipped(
    populated: Repo, queue: JobQueue, smtp: SmtpServers, receiver: Receiver, notifiers
) -> None:
    inbox = smtp.start()
    clock = Clock()
    s = settings(inbox.port, receiver, email_domain=None)
    notifier = notifiers(s, clock)
    started(notifier, clock)
    failed_job(queue, "carol", "c.tif", "c.tif: damaged")
    notifier.step()
    deliver(notifier)
    assert inbox.received() == []
    (row,) = _email_rows(populated)
    assert row["state"] == "skipped" and "no e-mail address for carol" in row["last_error"]
    assert len(receiver.requests) == 1  # the facility still hears of it


def test_webhook_filters_and_text_format(
    populated: Repo, queue: JobQueue, receiver: Receiver, world_dir: Path, notifiers
) -> None:
    section = {
        "digest_interval": 0,
        "webhook": [
            {"name": "problems", "url": receiver.url + "/p", "events": ["failed"]},
            {"name": "bob-only", "url": receiver.url + "/b", "users": ["bob"], "format": "text"},
        ],
    }
    clock = Clock()
    notifier = notifiers(NotifySettings.parse(section, Path("/t/omerofs.toml")), clock)
    started(notifier, clock)
    failed_job(queue, "alice", "a.tif", "a.tif: damaged")
    failed_job(queue, "bob", "b.tif", "b.tif: damaged")
    imported_job(populated, queue, world_dir / "acq" / "b_ok.tif", "bob", 6)
    notifier.step()
    deliver(notifier)
    got = sorted(
        (path.rsplit("/", 1)[-1], json.loads(body).get("event"))
        for path, _, body in receiver.requests
    )
    # problems: both failures, no digest; bob-only: bob's failure and digest, text only
    assert got == [("b", None), ("b", None), ("p", "failed"), ("p", "failed")]
    texts = sorted(
        json.loads(body)["text"] for path, _, body in receiver.requests if path.endswith("/b")
    )
    assert all(
        set(json.loads(body)) == {"text"}
        for path, _, body in receiver.requests
        if path.endswith("/b")
    )
    assert texts[0].startswith("omerofs: 1 fileset of bob imported")
    assert texts[1].startswith("omerofs: the import of P/D/b.tif (bob) failed")


def test_run_notifier_without_or_with_bad_settings(
    populated: Repo, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither takes the ingest daemon down: no [notify] is "off"; a bad one is an error
    in the log naming the key (and load_notify_settings raises it, for a daemon that
    wants to refuse to start)."""
    from omerofs.notify import load_notify_settings, run_notifier

    async def start() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_notifier, populated.config, populated.catalog)

    trio.run(start)  # no [notify]: reports started and ends
    with open(populated.config.root / "omerofs.toml", "a") as toml:
        toml.write("\n[notify]\nretry = 5\n[notify.email]\nhost = 'mx'\nsender = 'a@b.org'\n")
    with caplog.at_level("ERROR", logger="omerofs.notify"):
        trio.run(start)
    assert "[notify] retry: unknown key (did you mean" in caplog.text
    with pytest.raises(UsageError, match=r"\[notify\] retry: unknown key"):
        load_notify_settings(populated.config)


def test_shutdown_does_not_wait_for_a_hung_relay(
    populated: Repo, queue: JobQueue, notifiers
) -> None:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    accepted: list[socket.socket] = []
    acceptor = threading.Thread(target=lambda: accepted.append(hung.accept()[0]), daemon=True)
    acceptor.start()
    clock = Clock()
    s = settings(hung.getsockname()[1], None, poll_interval=0.02, email_timeout=3000)
    notifier = notifiers(s, clock)
    started(notifier, clock)
    loop = LoopThread(notifier)
    try:
        failed_job(queue, "alice", "a.tif", "a.tif: damaged")
        wait_for(lambda: accepted, timeout=30, what="the notifier connecting to the relay")
    finally:
        loop.stop()  # returns although the relay would keep it waiting for 3000 s
        hung.close()
        for conn in accepted:
            conn.close()
    assert [d["state"] for d in _email_rows(populated)] == ["pending"]  # sent next time


def _mount_runs_the_notifier() -> bool:
    import omerofs.fs.mount

    return "run_notifier" in Path(omerofs.fs.mount.__file__).read_text()


@needs_fuse
@needs_root
def test_ingest_mount_tells_its_users(
    populated: Repo, smtp: SmtpServers, receiver: Receiver, mount_view, world_dir: Path
) -> None:
    """The whole chain: alice writes a damaged and a good TIFF into the ingest mount
    with cp, as her own uid; the ingest daemon's notifier mails her the failure and
    then the digest of the good one, and posts both to the webhook."""
    if not _mount_runs_the_notifier():
        pytest.skip("the ingest daemon does not start the notifier yet (fs/mount.py)")
    inbox = smtp.start()
    with open(populated.config.root / "omerofs.toml", "a") as toml:
        toml.write(
            "\n[notify]\npoll_interval = 0.05\ndigest_interval = 0\n"
            f"[notify.email]\nhost = '127.0.0.1'\nport = {inbox.port}\nsecurity = 'none'\n"
            "sender = 'omerofs@example.org'\ndomain = 'example.org'\n"
            f"[[notify.webhook]]\nname = 'chat'\nurl = '{receiver.url}'\n"
        )
    src = world_dir / "src"
    good = make_tiff(src / "good.tif", seed=11)
    bad = src / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 200)  # a TIFF header and nothing else
    src.chmod(0o755)
    mp = mount_view(populated, "ingest", ("ingest", "--transfer", "ln", "--settle", "0.3"))
    target = mp.mountpoint / "alice/P/D"
    script = f"mkdir -p {target} && cp {bad} {target}/bad.tif && cp {good} {target}/good.tif"
    subprocess.run(as_user(3001, ["/bin/sh", "-c", script]), check=True, timeout=60)
    try:
        wait_for(lambda: len(inbox.received()) == 2, timeout=90, what="two mails to alice")
    except AssertionError:
        print(mp.log.read_text())  # the daemon's log, shown with the failure
        raise
    subjects = sorted(m["Subject"] for m in inbox.received())
    assert subjects == ["[omerofs] 1 fileset imported", "[omerofs] Import failed: bad.tif"]
    assert {m["To"] for m in inbox.received()} == {"alice@example.org"}
    wait_for(lambda: len(receiver.requests) == 2, timeout=30, what="two webhook posts")
    events = {d["event"]: d for d in receiver.bodies()}
    assert set(events) == {"failed", "digest"}
    assert events["failed"]["jobs"][0]["root"] == "alice/P/D/bad.tif"
    imported = events["digest"]["jobs"][0]
    assert imported["root"] == "alice/P/D/good.tif" and imported["fileset"] is not None
