"""Notifications: users are told by e-mail and webhooks what happened to their
filesets (failures at once, successes in a digest), from the ingest queue's table.

The ingest daemon runs ``run_notifier``; the CLI calls ``send_test``,
``set_email_preference`` and ``notify_status``. See docs/notifications.md."""

from omerofs.notify.delivery import DeliveryFailed
from omerofs.notify.runner import (
    Notifier,
    notify_status,
    run_notifier,
    send_test,
    set_email_preference,
)
from omerofs.notify.settings import NotifySettings, load_notify_settings

__all__ = [
    "DeliveryFailed",
    "Notifier",
    "NotifySettings",
    "load_notify_settings",
    "notify_status",
    "run_notifier",
    "send_test",
    "set_email_preference",
]
