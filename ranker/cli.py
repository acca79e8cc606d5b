"""The ``ranker`` command: a thin shell over the library."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys

import click

from . import trainer
from .settings import LOOPBACK, SettingsError, documentation, hash_key, load_settings
from .store import migrate


def _settings(config: str | None, **overrides):
    try:
        return load_settings(config, overrides={k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="ranker")
def cli() -> None:
    """Self-hosted Signal-to-Action ranking service with Personalizer's REST API."""


@cli.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default 8080).")
@click.option("--workers", type=int, help="gunicorn worker processes (default 2).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def serve(host: str | None, port: int | None, workers: int | None, config: str | None) -> None:
    """Serve the API with gunicorn on the embedded SQLite decision log, and run the trainer beside it.

    The trainer is started again if it dies; stopping this command (SIGTERM, Ctrl-C) stops both.

    Example: ranker serve --port 8080 --config ranker.toml
    """
    settings = _settings(config, host=host, port=port, workers=workers)
    if not settings.auth and settings.host not in LOOPBACK:
        raise click.ClickException(f"refusing to serve {settings.host} without keys: add keys or bind 127.0.0.1")
    env = dict(os.environ)
    if config:
        env["RANKER_CONFIG"] = os.path.abspath(config)
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            env[f"RANKER_{name}"] = str(value)
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "python:ranker.gunicorn_config"], env=env)
    supervisor = trainer.Supervisor(env=env).start()

    def forward(signum: int, _frame: object) -> None:
        server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = server.wait()
    supervisor.stop()
    sys.exit(code)


@cli.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
@click.option("--once", is_flag=True, help="Learn what is due now, print the counts and exit.")
def train(config: str | None, once: bool) -> None:
    """Run the trainer alone: join rewards, learn, publish models, until interrupted.

    A second trainer on the same data folder waits, and takes over when the first one stops.

    Example: ranker train --config ranker.toml
    """
    report = trainer.run(_settings(config), once=once)
    if report is not None:
        click.echo(json.dumps(report))


@cli.command("migrate")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def migrate_command(config: str | None) -> None:
    """Apply pending schema migrations to the decision log.

    Example: ranker migrate --config ranker.toml
    """
    settings = _settings(config)
    applied = migrate(settings.database_path)
    click.echo(f"{settings.database_path}: " + (", ".join(applied) if applied else "up to date"))


@cli.command("new-key")
@click.option("--role", type=click.Choice(["rank", "admin"]), default="rank", show_default=True)
def new_key(role: str) -> None:
    """Make a random API key; print it once, and the hashed entry for the config file.

    Example: ranker new-key --role admin
    """
    key = secrets.token_hex(16)
    click.echo(f"key: {key}")
    click.echo(f'config: {{ role = "{role}", sha256 = "{hash_key(key)}" }}')


@cli.command("hash-key")
@click.argument("key")
def hash_key_command(key: str) -> None:
    """Print the SHA-256 of an existing key, as the config file stores it.

    Example: ranker hash-key 0123456789abcdef
    """
    click.echo(hash_key(key))


@cli.command("settings")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Check this TOML settings file.")
def settings_command(config: str | None) -> None:
    """List every setting with its default and meaning; with --config, validate the file too.

    Example: ranker settings --config ranker.toml
    """
    if config:
        settings = _settings(config)
        click.echo(f"{config}: valid; loops {', '.join(settings.loops)}; auth {'on' if settings.auth else 'off'}")
    for name, default, text in documentation():
        click.echo(f"{name} = {default}\n    {text}")
