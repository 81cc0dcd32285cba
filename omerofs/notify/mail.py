"""E-mail through the facility's SMTP relay, with the standard library's smtplib (no
dependency, and it speaks STARTTLS, implicit TLS and AUTH). Blocking: callers run it in
a worker thread. Every connection has a timeout, for connecting and for each reply."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from omerofs.notify.delivery import DeliveryFailed
from omerofs.notify.settings import EmailSettings


def send_email(settings: EmailSettings, message: EmailMessage) -> None:
    """Hand ``message`` to the relay; raises DeliveryFailed (permanent when the relay
    refused the recipient or the message for good)."""
    where = f"{settings.host}:{settings.port}"
    login = settings.login()  # a missing credentials file is the admin's to fix: retried
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        if settings.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with smtp:
            if settings.security == "starttls":
                smtp.starttls(context=context)
            if login is not None:
                smtp.login(*login)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{to}: {code} {_text(msg)}" for to, (code, msg) in exc.recipients.items()
        )
        raise DeliveryFailed(
            f"{where} refused the recipient: {detail}", permanent=all(c >= 500 for c in codes)
        ) from None
    except smtplib.SMTPDataError as exc:  # the message itself (size, policy)
        raise DeliveryFailed(
            f"{where} refused the message: {exc.smtp_code} {_text(exc.smtp_error)}",
            permanent=exc.smtp_code >= 500,
        ) from None
    except smtplib.SMTPResponseException as exc:  # auth, sender, TLS: the setup, retried
        raise DeliveryFailed(f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except (smtplib.SMTPException, OSError) as exc:  # down, timeout, TLS handshake
        raise DeliveryFailed(
            f"cannot deliver through {where}: {exc or type(exc).__name__}"
        ) from None


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
