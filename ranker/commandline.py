"""What the command groups share: settings loaded for a command (a click error when they cannot be used), and
the loop a command names (the default loop when it names none)."""

from __future__ import annotations

import click

from .core.settings import SettingsError, load_settings


def settings_or_fail(config: str | None, **overrides):
    """The settings from ``config`` (and the environment) with the options a command was given; the
    command fails with the settings' own message when they cannot be used."""
    try:
        return load_settings(config, overrides={k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def loop_or_fail(settings, loop: str | None) -> str:
    """The loop a command names, else the default loop; the command fails on a loop the settings lack."""
    loop = loop or settings.default_loop
    if loop not in settings.loops:
        raise click.ClickException(f"no loop {loop!r}; loops: {', '.join(settings.loops)}")
    return loop
