"""What a notification says: the versioned JSON document (what webhooks receive, and
what the outbox stores) and the human texts made from it (the ``text`` field of the
document, e-mail subject and body). Pure functions: no I/O."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from omerofs.notify.outbox import Event
from omerofs.notify.settings import DIGEST, EmailSettings

SCHEMA = "omerofs.notification/1"
TEXT_LINES = 20  # filesets named in the chat text of a digest; the rest are counted
MAX_JOBS = 1000  # jobs listed in one document (``counts`` covers all of them)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_record(event: Event) -> dict[str, Any]:
    """One job as the document lists it (names fixed by the schema, not the queue)."""
    job = event.job
    root = str(job.get("root") or "")
    return {
        "job": event.job_id,
        "state": event.kind,
        "root": root,
        "name": root.rsplit("/", 1)[-1],
        "group": job.get("grp"),
        "project": job.get("project"),
        "dataset": job.get("dataset"),
        "fileset": job.get("fileset_id"),
        "files": job.get("files"),
        "bytes": job.get("bytes_total"),
        "error": job.get("error"),
        "attempts": job.get("attempts"),
        "transfer": job.get("transfer"),
        "at": iso(job.get("updated")),
    }


def document(
    event: str,
    key: str,
    user: str,
    events: list[Event],
    now: float,
    facility: str,
    repository: str,
) -> dict[str, Any]:
    """The notification document for ``events`` of one user (one alert, one digest)."""
    jobs = [job_record(e) for e in events]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "id": key,
        "event": event,
        "facility": facility,
        "repository": repository,
        "user": user,
        "created": iso(now),
        "period": None,
        "counts": {
            "filesets": len(jobs),
            "files": sum(j["files"] or 0 for j in jobs),
            "bytes": sum(j["bytes"] or 0 for j in jobs),
        },
        "jobs": jobs[:MAX_JOBS],
        "jobs_omitted": max(0, len(jobs) - MAX_JOBS),
    }
    if event == DIGEST and events:
        doc["period"] = {"from": iso(min(e.seen for e in events)), "to": iso(now)}
    doc["text"] = chat_escape(summary(doc))
    return doc


def chat_escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as entities, as Slack requires of ``text`` (a file named
    ``<!channel>.tif`` must not page a whole channel); Mattermost shows them as the
    characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_document(user: str, now: float, facility: str, repository: str) -> dict[str, Any]:
    key = f"test:{user}:{int(now)}"
    doc = document("test", key, user, [], now, facility, repository)
    return doc


def shown_path(job: dict[str, Any]) -> str:
    """The fileset's path as its user wrote it, below their own directory."""
    root = job["root"]
    return root.split("/", 1)[1] if "/" in root else root


def summary(doc: dict[str, Any]) -> str:
    """The human text: first line the news, then details (Slack/Mattermost ``text``)."""
    who, jobs, n = doc["user"], doc["jobs"], doc["counts"]["filesets"]
    head = doc["facility"] + ": "
    if doc["event"] == "test":
        return head + f"test notification for {who}: this channel works."
    if doc["event"] == DIGEST:
        lines = [head + f"{n} {_plural(n, 'fileset')} of {who} imported"]
        lines += [f"• {shown_path(j)}{_fileset_note(j)}" for j in jobs[:TEXT_LINES]]
        if n > TEXT_LINES:
            lines.append(f"… and {n - TEXT_LINES} more")
        return "\n".join(lines)
    job = jobs[0]
    lines = [head + f"the import of {shown_path(job)} ({who}) {_what(doc['event'])}"]
    if job["error"]:
        lines.append(f"Reason: {job['error']}")
    lines.append(_advice(doc["event"]))
    return "\n".join(lines)


COMMIT = "setfattr -n user.omerofs.commit -v 1 PATH"


def _what(event: str) -> str:
    return {"failed": "failed", "incomplete": "is held back as incomplete"}.get(
        event, f"is {event}"
    )


def _advice(event: str) -> str:
    if event == "failed":
        return (
            "The files are untouched. Fix the cause, then replace the file or commit again "
            f"({COMMIT}) to retry."
        )
    if event == "incomplete":
        return (
            "Nothing was imported and nothing deleted. If the acquisition is still running "
            "this resolves itself; if it ended, rewrite the missing or damaged parts, or "
            f"commit ({COMMIT}) to import it as it is."
        )
    return "The files are untouched; `omerofs status` and the report beside them say more."


def _fileset_note(job: dict[str, Any]) -> str:
    parts = []
    if job["fileset"] is not None:
        parts.append(f"fileset {job['fileset']}")
    if job["files"]:
        parts.append(f"{job['files']} {_plural(job['files'], 'file')}")
    if job["bytes"]:
        parts.append(human_bytes(job["bytes"]))
    return f" ({', '.join(parts)})" if parts else ""


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def subject(doc: dict[str, Any], prefix: str) -> str:
    n = doc["counts"]["filesets"]
    if doc["event"] == "test":
        text = "Test notification"
    elif doc["event"] == DIGEST:
        text = f"{n} {_plural(n, 'fileset')} imported"
    else:
        name = doc["jobs"][0]["name"]
        text = {
            "failed": f"Import failed: {name}",
            "incomplete": f"Not imported, incomplete: {name}",
        }.get(doc["event"], f"{name}: {doc['event']}")
    return f"{prefix} {text}".strip()


def email_message(
    doc: dict[str, Any], settings: EmailSettings, to: str, staff: bool = False
) -> EmailMessage:
    """The e-mail for one document (``staff``: the facility's copy of a problem). Its
    Message-ID is derived from the document id, so a message resent after a crash is
    recognisably the same one."""
    msg = EmailMessage()
    msg["From"] = settings.sender
    msg["To"] = to
    msg["Subject"] = one_line(subject(doc, settings.subject_prefix))
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    created = datetime.fromisoformat(doc["created"].replace("Z", "+00:00")).timestamp()
    msg["Date"] = formatdate(created, localtime=False, usegmt=True)
    domain = settings.sender.rsplit("@", 1)[1]
    ident = re.sub(r"[^A-Za-z0-9.-]", ".", doc["id"] + (".staff" if staff else ""))
    msg["Message-ID"] = f"<{ident}.omerofs@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to us
    msg["X-Omerofs-Event"] = doc["event"]
    msg.set_content(email_text(doc, settings.list_limit, staff))
    return msg


def one_line(text: str) -> str:
    """A header value: file names may hold control characters, headers may not."""
    return "".join(c if c.isprintable() else "?" for c in text)


def email_text(doc: dict[str, Any], limit: int, staff: bool = False) -> str:
    lines = ["Hello," if staff else f"Hello {doc['user']},", ""]
    jobs = doc["jobs"]
    if doc["event"] == "test":
        lines.append("this is a test message: notifications from this repository reach you.")
    elif doc["event"] == DIGEST:
        n = doc["counts"]["filesets"]
        lines.append(
            f"{n} {_plural(n, 'fileset')} of yours {'was' if n == 1 else 'were'} imported:"
        )
        lines.append("")
        for job in jobs[:limit]:
            target = "/".join(p for p in (job["project"], job["dataset"]) if p) or "(orphaned)"
            lines.append(f"  {shown_path(job)}{_fileset_note(job)}")
            lines.append(f"      into {target}, at {job['at']}")
        if n > limit:
            lines.append(f"  … and {n - limit} more")
        total = doc["counts"]
        lines += ["", f"In all: {total['files']} files, {human_bytes(total['bytes'])}."]
    else:
        job = jobs[0]
        what = _what(doc["event"])
        whose = f"{doc['user']}'s " if staff else ""
        lines.append(
            f"the import of {whose}{shown_path(job)} {what} (job {job['job']}, {job['at']})."
        )
        if job["error"]:
            lines += ["", f"Reason: {job['error']}"]
        lines += ["", _advice(doc["event"])]
    lines += [
        "",
        "-- ",
        f"{doc['facility']} (omerofs, {doc['repository']})",
        "You get a copy of every problem as the facility's staff ([notify.email] staff)."
        if staff
        else "You get this because notifications are on for your account; ask your "
        "facility to change what you receive.",
    ]
    return "\n".join(lines) + "\n"


def teams_body(doc: dict[str, Any]) -> dict[str, Any]:
    """The document inside the envelope Teams Workflows expect (an Adaptive Card); the
    omerofs fields stay beside it for flows that use them."""
    first, *rest = html.unescape(doc["text"]).split("\n")
    blocks: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": first, "weight": "Bolder", "wrap": True}
    ]
    blocks += [
        {"type": "TextBlock", "text": line, "wrap": True, "spacing": "None"} for line in rest
    ]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": blocks,
    }
    return {
        **doc,
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }
