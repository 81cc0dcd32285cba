"""Webhooks: one HTTP POST of the notification document as JSON, with the standard
library's urllib (a single POST needs no client library; urllib honours the usual
https_proxy/no_proxy variables). Blocking: callers run it in a worker thread.

Receivers can check ``X-Omerofs-Signature-256: sha256=<hex>``, an HMAC-SHA256 of the
exact body under the shared secret, and drop repeats by ``X-Omerofs-Delivery`` (the
document id, the same on every retry)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from omerofs import __version__
from omerofs.notify.delivery import DeliveryFailed
from omerofs.notify.messages import teams_body
from omerofs.notify.settings import WebhookSettings

# Answers worth retrying: the receiver is busy, restarting or rate-limiting us.
_TRANSIENT = {408, 425, 429}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect turns a POST into a GET: refuse it and say where it pointed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _shown(url: str) -> str:
    """Where a URL points, for messages: Slack and Teams URLs carry their token in the
    path and query, which must stay out of logs and the outbox."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def webhook_body(settings: WebhookSettings, doc: dict[str, Any]) -> bytes:
    if settings.format == "teams":
        body = teams_body(doc)
    elif settings.format == "text":  # for a chat service that rejects unknown fields
        body = {"text": doc["text"]}
    else:
        body = doc
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def post_webhook(settings: WebhookSettings, doc: dict[str, Any]) -> int:
    """POST ``doc``; returns the HTTP status (2xx). Raises DeliveryFailed, permanent for
    answers a retry cannot change (4xx other than 408/425/429, redirects)."""
    url = settings.target()
    body = webhook_body(settings, doc)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"omerofs/{__version__}",
        "X-Omerofs-Event": doc["event"],
        "X-Omerofs-Delivery": doc["id"],
        **settings.headers,
    }
    secret = settings.secret()
    if secret is not None:
        headers["X-Omerofs-Signature-256"] = signature(secret, body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    shown = _shown(url)
    try:
        with _opener.open(request, timeout=settings.timeout) as response:
            response.read(65536)
            return response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
        detail = exc.read(300).decode(errors="replace").strip() if exc.fp else ""
        exc.close()
        if 300 <= code < 400:
            raise DeliveryFailed(
                f"webhook {settings.name}: {shown} redirects ({code}) to "
                f"{exc.headers.get('Location')}: configure the final URL",
                permanent=True,
            ) from None
        raise DeliveryFailed(
            f"webhook {settings.name}: {shown} answered {code} {exc.reason} {detail}".strip(),
            permanent=400 <= code < 500 and code not in _TRANSIENT,
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"webhook {settings.name}: cannot reach {shown}: {reason}") from None
