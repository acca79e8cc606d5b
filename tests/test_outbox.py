"""Delivery of the outbox to real receivers on 127.0.0.1: an SMTP sink (aiosmtpd) and an HTTP sink; retries,
refusals, and at most once, also when the sender process is killed between sending and recording."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from click.testing import CliRunner

from ranker.cli import cli
from ranker.harness import free_port
from ranker.outbox.definitions import OutboxSettings
from ranker.outbox.delivery import message_id, send_due
from ranker.store import connect, migrate, timestamp
from ranker.store import outbox as store


class Inbox:
    """aiosmtpd handler keeping every message it accepted."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"


@pytest.fixture
def smtp_sink():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body))
        status = self.server.answers.pop(0) if self.server.answers else 200
        if status is None:  # read the message, then hang up without an answer
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_sink():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.received, server.answers = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook?team=cs"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def conn(tmp_path):
    migrate(tmp_path / "ranker.db")
    connection = connect(tmp_path / "ranker.db")
    yield connection
    connection.close()


def put(conn, key: str, recipient: str = "cfo@acme.example", body: str = "Hello Acme,\n\nLet us talk.\n") -> None:
    store.enqueue(conn, key, "triage:1", recipient, "Technical review for Acme", body, timestamp(datetime.now(UTC)))


def smtp(port: int, **more) -> OutboxSettings:
    return OutboxSettings(
        delivery="smtp", from_address="cs@vendor.example", smtp_port=port, smtp_host="127.0.0.1", timeout=5, **more
    )


def row(conn, key: str) -> dict:
    return next(r for r in store.listing(conn, None, 100) if r["key"] == key)


def test_smtp_delivers_each_message_once_with_its_idempotency_key(conn, smtp_sink):
    put(conn, "triage:1")
    put(conn, "triage:2", recipient="ceo@globex.example")
    settings = smtp(smtp_sink.port)
    assert send_due(settings, conn, environ={}) == {"sent": 2, "retry": 0, "failed": 0, "check": 0}
    assert send_due(settings, conn, environ={})["sent"] == 0
    assert len(smtp_sink.messages) == 2
    first = next(m for m in smtp_sink.messages if m["To"] == "cfo@acme.example")
    assert first["From"] == "cs@vendor.example" and first["Subject"] == "Technical review for Acme"
    assert first["Message-ID"] == message_id("triage:1", "cs@vendor.example")
    assert first["X-Ranker-Idempotency-Key"] == "triage:1"
    assert "Let us talk." in first.get_payload()
    assert row(conn, "triage:1")["state"] == "sent" and row(conn, "triage:1")["sent_at"]


def test_smtp_login_takes_the_password_from_the_environment(conn):
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)  # aiosmtpd answers 535

    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticator, auth_require_tls=False
    )
    controller.start()
    try:
        put(conn, "triage:1")
        settings = smtp(controller.port, smtp_username="cs", backoff=60)
        assert send_due(settings, conn, environ={"RANKER_OUTBOX_SMTP_PASSWORD": "wrong"})["retry"] == 1
        assert row(conn, "triage:1")["state"] == "pending" and "535" in row(conn, "triage:1")["last_error"]
        assert inbox.messages == []
        later = datetime.now(UTC) + timedelta(seconds=61)
        assert send_due(settings, conn, now=later, environ={"RANKER_OUTBOX_SMTP_PASSWORD": "s3cret"})["sent"] == 1
        # (smtplib tries each mechanism the server offers before giving up)
        assert {login for login in logins[:-1]} == {(b"cs", b"wrong")} and logins[-1] == (b"cs", b"s3cret")
        assert len(inbox.messages) == 1
    finally:
        controller.stop()


def test_a_refused_recipient_fails_at_once_and_an_unreachable_server_is_retried_with_backoff(conn, smtp_sink):
    put(conn, "bad", recipient="not an address <")
    put(conn, "later")
    settings = smtp(free_port(), backoff=10, max_attempts=2)  # nobody listens there
    counts = send_due(settings, conn, environ={})
    assert counts == {"sent": 0, "retry": 1, "failed": 1, "check": 0}
    assert row(conn, "bad")["state"] == "failed"
    waiting = row(conn, "later")
    assert waiting["state"] == "pending" and waiting["attempts"] == 1 and "connect" in waiting["last_error"]
    wait = datetime.fromisoformat(waiting["next_attempt_at"]) - datetime.now(UTC)
    assert timedelta(seconds=8) < wait <= timedelta(seconds=10)
    assert send_due(settings, conn, environ={})["retry"] == 0  # not due yet
    later = datetime.now(UTC) + timedelta(seconds=11)
    assert send_due(settings, conn, now=later, environ={})["failed"] == 1  # second attempt: the last
    assert row(conn, "later")["state"] == "failed"


def test_the_webhook_is_signed_retried_after_an_error_and_refused_for_good_on_a_client_error(conn, http_sink):
    put(conn, "triage:1", body="Body <b>with</b> \u00e9")
    settings = OutboxSettings(delivery="webhook", webhook_url=http_sink.url, backoff=5, timeout=5)
    http_sink.answers = [503]
    assert send_due(settings, conn, environ={"RANKER_OUTBOX_WEBHOOK_SECRET": "hush"})["retry"] == 1
    later = datetime.now(UTC) + timedelta(seconds=6)
    assert send_due(settings, conn, now=later, environ={"RANKER_OUTBOX_WEBHOOK_SECRET": "hush"})["sent"] == 1
    assert len(http_sink.received) == 2
    headers, body = http_sink.received[1]
    assert headers["Idempotency-Key"] == "triage:1" and headers["Content-Type"] == "application/json"
    expected = hmac.new(b"hush", headers["X-Ranker-Timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Ranker-Signature"] == f"sha256={expected}"
    assert json.loads(body)["body"] == "Body <b>with</b> \u00e9" and json.loads(body)["key"] == "triage:1"
    put(conn, "triage:2")
    http_sink.answers = [422]
    assert send_due(settings, conn, environ={})["failed"] == 1
    assert "X-Ranker-Signature" not in http_sink.received[2][0]  # no secret, no signature


def test_a_send_cut_off_after_the_message_went_out_is_not_sent_again_without_a_check(conn, http_sink):
    put(conn, "triage:1")
    settings = OutboxSettings(delivery="webhook", webhook_url=http_sink.url, timeout=5)
    http_sink.answers = [None]
    assert send_due(settings, conn, environ={})["check"] == 1
    assert row(conn, "triage:1")["state"] == "sending" and row(conn, "triage:1")["last_error"]
    assert send_due(settings, conn, now=datetime.now(UTC) + timedelta(days=1), environ={})["sent"] == 0
    assert len(http_sink.received) == 1
    assert store.resolve(conn, "triage:1", False, timestamp(datetime.now(UTC)))  # a person: send it again
    assert send_due(settings, conn, environ={})["sent"] == 1
    assert len(http_sink.received) == 2 and http_sink.received[1][0]["Idempotency-Key"] == "triage:1"


def _argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ranker", "outbox", *args, "--config", str(config)]


def _env(**more: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}, **more}


def _ranker(config: Path, *args: str):
    """``ranker outbox ARGS --config CONFIG`` in this process (the killed sender is a real one)."""
    return CliRunner().invoke(cli, ["outbox", *args, "--config", str(config)], env=_env())


def test_a_sender_killed_between_sending_and_recording_never_sends_twice(tmp_path, conn, smtp_sink):
    config = tmp_path / "ranker.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[outbox]\ndelivery = "smtp"\nfrom_address = "cs@vendor.example"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp_sink.port}\n'
    )
    put(conn, "triage:7")
    sender = subprocess.Popen(_argv(config, "send"), env=_env(RANKER_OUTBOX_PAUSE_AFTER_SEND="60"))
    deadline = time.monotonic() + 20
    while not smtp_sink.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(smtp_sink.messages) == 1  # the sink has it; the sender has not recorded it yet
    assert row(conn, "triage:7")["state"] == "sending"
    sender.send_signal(signal.SIGKILL)
    sender.wait(10)
    again = _ranker(config, "send")
    assert again.exit_code == 0 and json.loads(again.output)["sent"] == 0
    assert len(smtp_sink.messages) == 1  # exactly one, however often the sender runs
    listed = _ranker(config, "list", "--state", "sending")
    assert listed.exit_code == 0 and "triage:7" in listed.output
    assert _ranker(config, "resolve", "triage:7", "--sent").exit_code == 0
    assert row(conn, "triage:7")["state"] == "sent"
    assert len(smtp_sink.messages) == 1


def test_send_without_a_delivery_says_so(tmp_path, conn):
    config = tmp_path / "ranker.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    put(conn, "triage:1")
    sender = _ranker(config, "send")
    assert sender.exit_code == 1 and "no [outbox] delivery" in sender.output
    assert row(conn, "triage:1")["state"] == "pending"
