"""The notifier: a task of the ingest daemon that follows the ingest queue in the
repository's SQLite file and tells users what happened to their filesets.

Three loops, none of which can stop an import: one reads new job transitions into the
outbox (alerts at once, imports into per-user digests); one per channel (e-mail, each
webhook) delivers what is due. Network and SQLite work runs in worker threads with
timeouts; a channel that is down is paused with backoff while the others go on; every
error is logged and retried, never raised into the daemon's nursery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from omerofs.catalog.protocol import Catalog
from omerofs.config import RepoConfig
from omerofs.errors import NotFound, OmerofsError, UsageError
from omerofs.notify.delivery import DeliveryFailed, backoff
from omerofs.notify.mail import send_email
from omerofs.notify.messages import document, email_message, test_document
from omerofs.notify.outbox import Delivery, Event, NotifyStore
from omerofs.notify.settings import (
    DIGEST,
    EMAIL_LEVELS,
    EmailSettings,
    NotifySettings,
    load_notify_settings,
)
from omerofs.notify.webhook import post_webhook

log = logging.getLogger("omerofs.notify")

PRUNE_AFTER = 90 * 86400.0  # finished outbox rows are kept this long (for status)
PRUNE_EVERY = 3600.0
STAFF = ">staff"  # the key suffix of the facility staff's copy of a problem message


@dataclass
class _Pause:
    """A channel that failed: not tried again before ``until``."""

    failures: int = 0
    until: float = 0.0


class _Quiet:
    """Logs a repeating problem once, then again only when it changes or every ten
    minutes: a relay down for a day must not fill the log."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, float]] = {}

    def warn(self, source: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(source)
        if last is None or last[0] != message or now - last[1] > 600:
            self._last[source] = (message, now)
            log.warning("%s", message)

    def clear(self, source: str) -> None:
        self._last.pop(source, None)


def email_address(catalog: Catalog, settings: EmailSettings, user: str) -> str | None:
    """Where ``user``'s mail goes: the catalog's address (OMERO: Experimenter.email),
    else ``user@domain`` when ``[notify.email] domain`` is set, else nowhere."""
    try:
        found = getattr(catalog.experimenter_by_name(user), "email", None)
    except NotFound:
        found = None
    if isinstance(found, str) and "@" in found and not any(c in found for c in "\r\n, "):
        return found.strip()
    if settings.domain:
        return f"{user}@{settings.domain}"
    return None


class Notifier:
    """The state of one running notifier. ``clock`` is injected (seconds, like
    time.time) so the digest and retry rules can be driven without waiting."""

    def __init__(
        self,
        config: RepoConfig,
        catalog: Catalog,
        settings: NotifySettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.catalog, self.settings, self.clock = config, catalog, settings, clock
        self.store = NotifyStore(config.catalog_path)
        self._hooks = {hook.channel: hook for hook in settings.webhooks}
        self._pauses = {channel: _Pause() for channel in settings.channels}
        self._quiet = _Quiet()
        self._pruned = 0.0
        dropped = self.store.abandon_channels(settings.channels, clock())
        if dropped:
            log.warning("notify: %d pending messages of removed channels marked dead", dropped)

    def close(self) -> None:
        self.store.close()

    # -- events to messages (worker thread) ------------------------------------------

    def step(self) -> int:
        """Read new transitions, route alerts, close due digests; returns the number of
        messages routed. Safe to repeat after a crash at any point."""
        now = self.clock()
        self.store.capture(self.settings.alert_states, now, self.settings.alert_delay)
        routed = 0
        for event in self.store.unrouted(imported=False):
            routed += self._route(event.user, [event], lambda e=event: self._alert(e, now), now)
        by_user: dict[str, list[Event]] = {}
        for event in self.store.unrouted(imported=True, limit=1_000_000):
            by_user.setdefault(event.user, []).append(event)
        for user, events in by_user.items():
            if now >= min(e.seen for e in events) + self.settings.digest_interval:
                routed += self._route(
                    user, events, lambda u=user, e=events: self._digest(u, e, now), now
                )
        if now - self._pruned > PRUNE_EVERY:
            self._pruned = now
            self.store.prune(now - PRUNE_AFTER)
        return routed

    def _route(
        self, user: str, events: list[Event], make: Callable[[], list[Delivery]], now: float
    ) -> int:
        """Turn ``events`` into messages; when the catalog cannot say where ``user``'s
        mail goes (an OMERO outage), they wait for the next poll and the others go on."""
        try:
            deliveries = make()
        except OmerofsError as exc:
            self._quiet.warn(f"route:{user}", f"notify: {user}'s messages wait: {exc}")
            return 0
        self.store.route(events, deliveries, now)
        self._quiet.clear(f"route:{user}")
        return len(deliveries)

    def _alert(self, event: Event, now: float) -> list[Delivery]:
        key = f"{event.kind}:{event.job_id}"
        doc = document(event.kind, key, event.user, [event], now, *self._names())
        return self._deliveries(key, event.kind, event.user, doc)

    def _digest(self, user: str, events: list[Event], now: float) -> list[Delivery]:
        key = f"{DIGEST}:{user}:{min(e.job_id for e in events)}"
        doc = document(DIGEST, key, user, events, now, *self._names())
        return self._deliveries(key, DIGEST, user, doc)

    def _names(self) -> tuple[str, str]:
        return self.settings.facility, str(self.config.root)

    def _deliveries(self, key: str, event: str, user: str, doc: dict[str, Any]) -> list[Delivery]:
        out = [
            Delivery(key, hook.channel, event, user, doc)
            for hook in self.settings.webhooks
            if hook.wants(event, user)
        ]
        email = self.settings.email
        if email is not None:
            out.insert(0, self._email(key, event, user, doc))
            if email.staff and event != DIGEST:
                staff = ", ".join(email.staff)
                out.insert(1, Delivery(key + STAFF, "email", event, user, doc, recipient=staff))
        return out

    def _email(self, key: str, event: str, user: str, doc: dict[str, Any]) -> Delivery:
        email = self.settings.email
        assert email is not None
        level = "none" if user in email.opt_out else self.store.email_level(user) or "all"
        if level == "none" or (level == "failures" and event == DIGEST):
            reason = f"{user} receives {level} by e-mail"
            return Delivery(key, "email", event, user, doc, state="skipped", reason=reason)
        address = email_address(self.catalog, email, user)
        if address is None:
            self._quiet.warn(f"address:{user}", f"notify: no e-mail address for {user}")
            reason = f"no e-mail address for {user} in the catalog (and no [notify.email] domain)"
            return Delivery(key, "email", event, user, doc, state="skipped", reason=reason)
        return Delivery(key, "email", event, user, doc, recipient=address)

    # -- delivering (worker thread for the I/O) --------------------------------------

    def send(self, delivery: Delivery) -> None:
        """One attempt at one message; raises DeliveryFailed or OmerofsError."""
        if delivery.channel == "email":
            email = self.settings.email
            if email is None or delivery.recipient is None:
                raise DeliveryFailed("e-mail is no longer configured", permanent=True)
            staff = delivery.key.endswith(STAFF)
            send_email(email, email_message(delivery.body, email, delivery.recipient, staff))
            return
        hook = self._hooks.get(delivery.channel)
        if hook is None:
            raise DeliveryFailed(f"{delivery.channel} is no longer configured", permanent=True)
        post_webhook(hook, delivery.body)

    async def deliver_due(self, channel: str) -> int:
        """Send what is due on ``channel`` until it is all sent or the channel fails."""
        pause = self._pauses[channel]
        if self.clock() < pause.until:
            return 0
        sent = 0
        for delivery in await trio.to_thread.run_sync(self.store.due, channel, self.clock()):
            now = self.clock()
            if delivery.attempts and now - delivery.created > self.settings.give_up_after:
                await trio.to_thread.run_sync(
                    self.store.give_up,
                    delivery.id,
                    "gave up: still failing after give_up_after",
                    now,
                )
                log.error("notify: gave up %s to %s (%s)", delivery.key, channel, delivery.user)
                continue
            try:
                # abandon_on_cancel: a shutdown does not wait for a relay's timeout (the
                # message stays pending and is sent again by the next daemon).
                await trio.to_thread.run_sync(self.send, delivery, abandon_on_cancel=True)
            except DeliveryFailed as exc:
                if exc.permanent:
                    await trio.to_thread.run_sync(
                        self.store.give_up, delivery.id, str(exc), self.clock()
                    )
                    log.error("notify: %s to %s refused for good: %s", delivery.key, channel, exc)
                    continue
                self._failed(channel, str(exc))
                await trio.to_thread.run_sync(
                    self.store.postpone, delivery.id, str(exc), pause.until
                )
                return sent
            except OmerofsError as exc:  # e.g. an unreadable secret file: the admin's to fix
                self._failed(channel, str(exc))
                await trio.to_thread.run_sync(
                    self.store.postpone, delivery.id, str(exc), pause.until
                )
                return sent
            except Exception as exc:  # a message this version cannot send: never retried,
                log.exception("notify: cannot send %s to %s", delivery.key, channel)
                await trio.to_thread.run_sync(  # so it cannot block the channel
                    self.store.give_up, delivery.id, f"internal error: {exc!r}", self.clock()
                )
                continue
            await trio.to_thread.run_sync(self.store.delivered, delivery.id, self.clock())
            if pause.failures:
                log.info("notify: %s works again", channel)
            pause.failures = 0
            self._quiet.clear(channel)
            sent += 1
            log.info("notify: sent %s to %s (%s)", delivery.key, channel, delivery.user)
        return sent

    def _failed(self, channel: str, error: str) -> None:
        pause = self._pauses[channel]
        pause.failures += 1
        delay = backoff(pause.failures, self.settings.retry_initial, self.settings.retry_max)
        pause.until = self.clock() + delay
        self._quiet.warn(channel, f"notify: {channel} failed ({error}); retrying in {delay:.0f} s")

    # -- the loops -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow)
            for channel in self.settings.channels:
                nursery.start_soon(self._deliver, channel)

    async def _follow(self) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(self.step)
                self._quiet.clear("queue")
            except Exception as exc:  # one bad row or a catalog outage: retried next poll
                self._quiet.warn("queue", f"notify: reading the ingest queue failed: {exc!r}")
            await trio.sleep(self.settings.poll_interval)

    async def _deliver(self, channel: str) -> None:
        while True:
            try:
                await self.deliver_due(channel)
            except Exception as exc:
                self._quiet.warn(f"loop:{channel}", f"notify: delivering to {channel}: {exc!r}")
            await trio.sleep(self.settings.poll_interval)


async def run_notifier(
    config: RepoConfig,
    catalog: Catalog,
    *,
    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """The ingest daemon's notification task. It never takes the daemon down: without
    ``[notify]``, or with a bad one (logged as an error naming the key), it reports
    started and returns; imports go on either way. To refuse to start on a bad
    ``[notify]`` instead, call ``load_notify_settings(config)`` before mounting."""
    try:
        settings = await trio.to_thread.run_sync(load_notify_settings, config)
    except UsageError as exc:
        log.error("notifications off: %s", exc)
        task_status.started()
        return
    if settings is None:
        log.info("notifications off (no [notify] in omerofs.toml)")
        task_status.started()
        return
    task_status.started()
    while True:
        try:
            notifier = await trio.to_thread.run_sync(Notifier, config, catalog, settings)
            break
        except OmerofsError as exc:  # e.g. the SQLite file locked or unwritable for now
            log.error("notify: cannot open the outbox (%s); trying again in a minute", exc)
            await trio.sleep(60)
    log.info("notifications on: %s", ", ".join(settings.channels))
    try:
        await notifier.run()
    finally:
        notifier.close()


def send_test(config: RepoConfig, catalog: Catalog, user: str) -> list[str]:
    """``omerofs notify test --user NAME``: send a test message to ``user`` on every
    channel now (bypassing the outbox and the user's opt-out). Returns one line per
    channel; raises DeliveryFailed naming every channel that failed."""
    settings = load_notify_settings(config)
    if settings is None:
        raise UsageError(
            f"{config.root / 'omerofs.toml'} has no [notify] section (see docs/notifications.md)"
        )
    catalog.experimenter_by_name(user)  # NotFound for a user the catalog does not know
    doc = test_document(user, time.time(), settings.facility, str(config.root))
    lines, failed = [], False
    if settings.email is not None:
        address = email_address(catalog, settings.email, user)
        if address is None:
            lines.append(f"email: no address for {user} in the catalog")
            failed = True
        else:
            try:
                send_email(settings.email, email_message(doc, settings.email, address))
                lines.append(f"email: sent to {address} via {settings.email.host}")
            except OmerofsError as exc:
                lines.append(f"email to {address}: {exc}")
                failed = True
    for hook in settings.webhooks:
        try:
            status = post_webhook(hook, doc)
            lines.append(f"webhook {hook.name}: accepted ({status})")
        except OmerofsError as exc:
            lines.append(f"webhook {hook.name}: {exc}")
            failed = True
    if failed:
        raise DeliveryFailed("notify test: " + "; ".join(lines))
    return lines


def set_email_preference(config: RepoConfig, catalog: Catalog, user: str, level: str) -> None:
    """``omerofs notify email --user NAME all|failures|none``: what ``user`` receives by
    e-mail (``failures``: no success digests). Kept in the repository's SQLite file."""
    if level not in EMAIL_LEVELS:
        raise UsageError(f"e-mail level must be one of {', '.join(EMAIL_LEVELS)}, not {level!r}")
    catalog.experimenter_by_name(user)
    store = NotifyStore(config.catalog_path)
    try:
        store.set_email_level(user, None if level == "all" else level, time.time())
    finally:
        store.close()


def notify_status(config: RepoConfig) -> list[dict[str, Any]]:
    """Outbox rows (pending, sent, skipped, dead), oldest first, for ``omerofs notify
    status``: each with key, channel, event, user, recipient, state, attempts,
    next_attempt, last_error, created, done."""
    store = NotifyStore(config.catalog_path)
    try:
        return store.deliveries()
    finally:
        store.close()
