"""Delivery of the outbox, each message at most once.

A sender (the trainer process every ``outbox.interval`` seconds, or ``ranker outbox send``) takes the pending
messages that are due, one at a time:

1. **claim**: one UPDATE marks the message ``sending`` (``WHERE state = 'pending'``, so of two senders only one
   gets it), committed before any byte leaves;
2. **send** it, by SMTP or webhook, with its idempotency key: the email's ``Message-ID`` is derived from it
   and ``X-Ranker-Idempotency-Key`` carries it; the webhook's POST has ``Idempotency-Key``;
3. **record**: ``sent``; or, when the receiver certainly did not take it (no connection, a refusal before the
   message was handed over, an error answer), ``pending`` again for a later attempt after ``backoff`` seconds,
   doubling, until ``max_attempts`` (then ``failed``; a permanent refusal fails at once).

A sender that dies between 2 and 3 (killed, the machine lost) leaves the message ``sending``. Nothing sends a
``sending`` message again by itself: it may have arrived. Neither does a send that broke off after the message
went out (a timeout or a dropped connection while waiting for the answer): it stays ``sending`` with the error.
Such messages are listed as needing a person's check (``ranker outbox list``, the outbox page): look for the
Message-ID / Idempotency-Key at the receiver, then ``ranker outbox resolve KEY --sent`` or ``--again``. So a
crash can delay a message, never send it twice; a receiver that drops repeated keys is protected even from a
person's mistaken ``--again``.

``RANKER_OUTBOX_PAUSE_AFTER_SEND`` (seconds) makes a sender wait between 2 and 3: the test that kills a
sender there uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from ..store import outbox as store
from ..store import timestamp
from .definitions import SMTP_PASSWORD_VARIABLE, WEBHOOK_SECRET_VARIABLE, OutboxSettings

log = logging.getLogger("ranker.outbox")

PAUSE_VARIABLE = "RANKER_OUTBOX_PAUSE_AFTER_SEND"
BATCH = 50  # messages one run takes at most


class Unsent(Exception):
    """The receiver certainly did not take the message; it may be tried again."""


class Refused(Unsent):
    """The receiver refused the message for good (e.g. an unknown recipient)."""


class Unknown(Exception):
    """The message may have reached the receiver: it must not be sent again without a person's check."""


def message_id(key: str, sender: str | None) -> str:
    """The email's Message-ID, the same for every attempt of one idempotency key."""
    domain = (sender or "").rpartition("@")[2] or "ranker.invalid"
    return f"<outbox.{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


def email_of(settings: OutboxSettings, message: Mapping[str, Any]) -> EmailMessage:
    email = EmailMessage()
    try:
        email["From"] = settings.from_address
        email["To"] = message["recipient"]
        email["Subject"] = " ".join(message["subject"].split())
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = message_id(message["key"], settings.from_address)
        email["X-Ranker-Idempotency-Key"] = message["key"]
    except (ValueError, IndexError) as exc:  # e.g. a recipient that is no address
        raise Refused(f"the message cannot be written as an email: {exc}") from exc
    email.set_content(message["body"])
    return email


def send_smtp(settings: OutboxSettings, message: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    email = email_of(settings, message)
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        raise Unsent(f"cannot connect to the SMTP server {where}: {exc}") from exc
    try:
        try:
            client.ehlo()
            if settings.smtp_starttls:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if settings.smtp_username:
                client.login(settings.smtp_username, environ.get(SMTP_PASSWORD_VARIABLE, ""))
        except (OSError, smtplib.SMTPException) as exc:  # nothing of the message was sent yet
            raise Unsent(f"SMTP server {where}: {exc}") from exc
        try:
            client.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            raise Refused(f"SMTP server {where} refused the recipient: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:  # an answer refusing the sender or the data: not taken
            error = Refused if 500 <= exc.smtp_code < 600 else Unsent
            raise error(f"SMTP server {where} answered {exc.smtp_code} {exc.smtp_error!r}") from exc
        except (OSError, smtplib.SMTPException) as exc:  # cut off mid-way: it may have been taken
            raise Unknown(f"SMTP server {where}: {exc}") from exc
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def webhook_body(message: Mapping[str, Any]) -> bytes:
    fields = ("key", "source", "recipient", "subject", "body", "created_at")
    return json.dumps({name: message[name] for name in fields}).encode()


def signature(secret: str, stamp: str, body: bytes) -> str:
    """``X-Ranker-Signature``: HMAC-SHA256 of ``<X-Ranker-Timestamp>.<body>`` with the webhook secret."""
    return "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def send_webhook(settings: OutboxSettings, message: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    url = urlsplit(settings.webhook_url or "")
    body = webhook_body(message)
    headers = {"Content-Type": "application/json", "Idempotency-Key": message["key"], "User-Agent": "ranker-outbox"}
    secret = environ.get(WEBHOOK_SECRET_VARIABLE)
    if secret:
        stamp = str(int(time.time()))
        headers.update({"X-Ranker-Timestamp": stamp, "X-Ranker-Signature": signature(secret, stamp, body)})
    kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    connection = kind(url.hostname or "", url.port, timeout=settings.timeout)
    try:
        try:
            connection.connect()
        except OSError as exc:
            raise Unsent(f"cannot connect to {url.netloc}: {exc}") from exc
        try:
            connection.request("POST", (url.path or "/") + (f"?{url.query}" if url.query else ""), body, headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unknown(f"{url.netloc}: no answer after the message was sent: {exc}") from exc
    finally:
        connection.close()
    if 200 <= response.status < 300:
        return
    error = Unsent if response.status in (408, 425, 429) or response.status >= 500 else Refused
    raise error(f"{url.netloc} answered HTTP {response.status}")


SENDERS = {"smtp": send_smtp, "webhook": send_webhook}


def send_due(
    settings: OutboxSettings, conn, now: datetime | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Send the messages due now (see the module docstring); how many were sent, retried later, failed, or
    left for a person's check. Nothing when no delivery is set."""
    counts = {"sent": 0, "retry": 0, "failed": 0, "check": 0}
    if settings.delivery is None:
        return counts
    environ = os.environ if environ is None else environ
    send = SENDERS[settings.delivery]
    moment = now or datetime.now(UTC)
    for message in store.due(conn, timestamp(moment), BATCH):
        if not store.claim(conn, message["id"], timestamp(datetime.now(UTC))):
            continue  # another sender took it
        attempts = message["attempts"] + 1
        try:
            send(settings, message, environ)
        except Unknown as exc:
            log.error("outbox %s: %s; not sent again until a person checks", message["key"], exc)
            store.mark_unknown(conn, message["id"], str(exc))
            counts["check"] += 1
            continue
        except Unsent as exc:
            if isinstance(exc, Refused) or attempts >= settings.max_attempts:
                log.error("outbox %s: %s; failed after %d attempts", message["key"], exc, attempts)
                store.mark_failed(conn, message["id"], str(exc))
                counts["failed"] += 1
            else:
                later = datetime.now(UTC) + timedelta(seconds=settings.backoff * 2 ** (attempts - 1))
                log.warning("outbox %s: %s; next attempt at %s", message["key"], exc, timestamp(later))
                store.mark_retry(conn, message["id"], str(exc), timestamp(later))
                counts["retry"] += 1
            continue
        pause = environ.get(PAUSE_VARIABLE)
        if pause:
            time.sleep(float(pause))
        store.mark_sent(conn, message["id"], timestamp(datetime.now(UTC)))
        counts["sent"] += 1
    return counts


class Sender:
    """The trainer process's sender: a thread with its own connection to ``database`` (an engine of
    :func:`ranker.store.open_database`) that sends what is due every ``outbox.interval`` seconds until ``stop``
    is set, while ``leading()`` (the trainer holds its leadership: on several nodes, the leader's sends)."""

    def __init__(
        self,
        settings: OutboxSettings,
        database: Any,
        stop: threading.Event,
        leading: Callable[[], bool] = lambda: True,
    ):
        self.settings, self.database, self.stop, self.leading = settings, database, stop, leading
        self.thread = threading.Thread(target=self._run, name="ranker-outbox", daemon=True)

    def start(self) -> Sender:
        self.thread.start()
        return self

    def _run(self) -> None:
        conn = None
        while not self.stop.wait(self.settings.interval):
            if not self.leading():
                continue
            try:
                conn = conn or self.database.open_log()
                send_due(self.settings, conn)
            except Exception:  # the trainer goes on; the next run tries again, on a new connection
                log.exception("outbox delivery run failed")
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
        if conn is not None:
            conn.close()
