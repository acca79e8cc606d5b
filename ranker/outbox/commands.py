"""``ranker outbox``: list the outbox, send what is due, settle messages that need a person's check."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from ..core.settings import SettingsError, load_settings
from ..store import open_database, timestamp
from ..store import outbox as store
from .delivery import send_due

CONFIG = click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")


def _open(config: str | None):
    try:
        settings = load_settings(config)
        return settings, open_database(settings).open_log()
    except (SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("outbox")
def outbox() -> None:
    """The outbox of approved messages: list it, send what is due, settle what needs a check.

    Example: ranker outbox list --state pending
    """


@outbox.command("list")
@click.option(
    "--state", type=click.Choice(["pending", "sending", "sent", "failed"]), help="Only messages in this state."
)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with the body.")
@CONFIG
def list_command(state: str | None, limit: int, as_json: bool, config: str | None) -> None:
    """List messages, newest first. A message in state `sending` that no sender is working on needs a person's
    check: its sender stopped after (perhaps) sending it, so it is never sent again by itself.

    Example: ranker outbox list --state sending
    """
    _, conn = _open(config)
    try:
        for row in store.listing(conn, state, limit):
            if as_json:
                click.echo(json.dumps(row))
            else:
                error = f"  ({row['last_error']})" if row["last_error"] else ""
                click.echo(
                    f"{row['state']:8} {row['attempts']}  {row['key']}  {row['recipient']}  {row['subject']}{error}"
                )
    finally:
        conn.close()


@outbox.command("send")
@CONFIG
def send_command(config: str | None) -> None:
    """Send the messages due now with the [outbox] delivery, each at most once; print the counts.

    Example: ranker outbox send --config ranker.toml
    """
    settings, conn = _open(config)
    if settings.outbox.delivery is None:
        conn.close()
        raise click.ClickException("no [outbox] delivery is set: messages wait in the outbox for copying")
    try:
        click.echo(json.dumps(send_due(settings.outbox, conn)))
    finally:
        conn.close()


@outbox.command("resolve")
@click.argument("key")
@click.option("--sent", "arrived", flag_value=True, help="It did arrive: mark it sent.")
@click.option("--again", "arrived", flag_value=False, help="It did not arrive: send it again.")
@CONFIG
def resolve_command(key: str, arrived: bool | None, config: str | None) -> None:
    """Settle a message left `sending` (or `failed`) once you have checked the receiver for its Message-ID or
    Idempotency-Key: --sent if it arrived, --again to send it once more.

    Example: ranker outbox resolve triage:42 --sent
    """
    if arrived is None:
        raise click.UsageError("say --sent or --again")
    _, conn = _open(config)
    try:
        if not store.resolve(conn, key, arrived, timestamp(datetime.now(UTC))):
            raise click.ClickException(f"no message {key!r} waiting for a check (sending or failed)")
    finally:
        conn.close()
    click.echo("marked sent" if arrived else "queued to be sent again")
