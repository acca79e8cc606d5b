"""``ranker signals``: import a CRM file of entity attributes, rebuild features, prune old events."""

from __future__ import annotations

import json
import sys

import click

from ..commandline import settings_or_fail
from ..store import open_database


@click.group("signals")
def signals_group() -> None:
    """Entity attributes and features: import a CRM file, rebuild features, prune old events.

    Example: ranker signals import --type account crm.csv
    """


def _signals(config: str | None):
    from .service import Signals

    settings = settings_or_fail(config)
    return Signals(settings.signals, open_database(settings).store(settings.commit_timeout))


@signals_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--type", "entity", required=True, help="Entity type of the rows: account or user.")
@click.option(
    "--format", "kind", type=click.Choice(["csv", "jsonl"]), help="File format (default: from the name, else csv)."
)
@click.option("--at", help="The rows are history as of this ISO 8601 time (import snapshots oldest first).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def signals_import(file, entity: str, kind: str | None, at: str | None, config: str | None) -> None:
    """Merge entity attributes from a CSV file (a header row with 'id' and one column per attribute; dotted
    names nest: contract.renewalDate) or JSON lines ({"id": ..., "attributes": {...}}).

    Bad rows are reported with their line number and skipped (exit status 1); a rerun of the same file
    changes nothing. With --at, the rows are the attributes as of that time (a CRM snapshot), so that
    point-in-time reads and pattern mining see when each value held; import snapshots oldest first.

    Example: ranker signals import --type account crm.csv
    """
    from datetime import UTC, datetime

    from ..store import parse_time

    kind = kind or ("jsonl" if file.name.endswith((".jsonl", ".json", ".ndjson")) else "csv")
    signals = _signals(config)
    try:
        when = None if at is None else parse_time(at)
        report = signals.import_entities(entity, file.read(), kind, datetime.now(UTC), when)
    except (ValueError, LookupError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report))
    if report["errors"]:
        sys.exit(1)


@signals_group.command("rebuild")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def signals_rebuild(config: str | None) -> None:
    """Recompute every feature from the raw events kept (after feature definitions changed).

    Example: ranker signals rebuild --config ranker.toml
    """
    events = _signals(config).rebuild()
    click.echo(f"features rebuilt from {events} events")


@signals_group.command("prune")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def signals_prune(config: str | None) -> None:
    """Delete events, buckets and attribute history older than signals.retention_days.

    Example: ranker signals prune --config ranker.toml
    """
    from datetime import UTC, datetime

    click.echo(json.dumps(_signals(config).prune(datetime.now(UTC))))
