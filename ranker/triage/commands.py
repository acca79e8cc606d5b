"""``ranker triage``, ``ranker patterns`` and ``ranker demo``: the renewal-risk workflow's commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..commandline import settings_or_fail
from ..core.errors import StoreUnavailable


@click.group("triage")
def triage_group() -> None:
    """Renewal-risk triage: flag accounts at risk, rank their next best action, draft the email; report.

    Example: ranker triage run --config ranker.toml
    """


def _triage_service(config: str | None):
    from ..serving.service import Service

    settings = settings_or_fail(config)
    if settings.database_url is None and not settings.database_path.exists():
        raise click.ClickException(f"there is no decision log at {settings.database_path}; ranker migrate makes one")
    return Service(settings, create_database=False)


@triage_group.command("run")
@click.option("--at", help="Judge as of this ISO 8601 time (UTC if no zone) instead of now, e.g. in a demo.")
@click.option("--json", "as_json", is_flag=True, help="Print the pass's report as JSON.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def triage_run(at: str | None, as_json: bool, config: str | None) -> None:
    """Run one triage pass now: record the outcomes of passed renewals, flag the accounts renewing within
    triage.horizon that match an enabled pattern, rank and draft each. The trainer runs it on triage.schedule.

    Example: ranker triage run --config ranker.toml
    """
    from ..store import parse_time
    from .flagging import run_pass

    try:
        moment = parse_time(at) if at else None
    except ValueError as exc:
        raise click.ClickException(f"--at: {exc}") from exc
    try:
        report = run_pass(_triage_service(config), moment)
    except (ValueError, StoreUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{report['flagged']} accounts flagged ({report['due']} renewing within the horizon, {report['matched']} "
        f"matching a pattern, {report['already']} flagged before, {report['suppressed']} suppressed); "
        f"{report['outcomes']} outcomes recorded in {report['seconds']} s"
    )
    for error in report["errors"]:
        click.echo(f"  not flagged: {error}", err=True)


@triage_group.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print GET /triage/report's JSON instead of a table.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def triage_report(as_json: bool, config: str | None) -> None:
    """Accounts flagged, approval rate, time to decision, renewal rate of acted vs dismissed items, and the
    surprise churn (churned accounts never flagged) per month.

    Example: ranker triage report --config ranker.toml
    """
    from ..store import open_database
    from .report import report, table

    settings = settings_or_fail(config)
    if settings.database_url is None and not settings.database_path.exists():
        raise click.ClickException(f"there is no decision log at {settings.database_path}")
    data = report(open_database(settings).store(create=False), settings.triage)
    click.echo(json.dumps(data) if as_json else table(data))


@click.group("patterns")
def patterns_group() -> None:
    """Churn risk patterns: mine them from past renewals, list, disable and enable them.

    Example: ranker patterns mine --entity account --outcome contract.outcome --horizon P90D
    """


def _patterns_context(config: str | None):
    from ..store import open_database

    settings = settings_or_fail(config)
    return settings, open_database(settings).store(settings.commit_timeout)


@patterns_group.command("mine")
@click.option("--entity", help="Entity type whose renewals to mine (default: triage.entity).")
@click.option("--outcome", help="Attribute holding a renewal's outcome (default: triage.outcome).")
@click.option("--renewal-date", help="Attribute holding the renewal date (default: triage.renewal_date).")
@click.option("--horizon", help="ISO 8601 duration: values as of this long before each renewal (triage.horizon).")
@click.option(
    "--min-support", type=click.IntRange(1), help="Fewest renewals a pattern must cover (triage.min_support)."
)
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True, help="Patterns kept, best first.")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), help="Also write the patterns as JSON here.")
@click.option("--dry-run", is_flag=True, help="Print (and write) the patterns but do not store them.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def patterns_mine(entity, outcome, renewal_date, horizon, min_support, top, output, dry_run, config) -> None:
    """Mine churn patterns from past renewals: each account's attributes and features as of HORIZON before
    each renewal (never values from after), conjunctions of up to triage.max_conditions conditions, ranked by
    the lower end of the churn rate's 95 % interval, with each pattern's rate on held-out renewals. Prints a
    table, writes JSON with --output, and stores them as the mined patterns (switches are kept).

    Example: ranker patterns mine --entity account --outcome contract.outcome --horizon P90D --output patterns.json
    """
    from pydantic import ValidationError

    from ..signals.service import Signals
    from .mining import mine, table, with_overrides
    from .patterns import save_mined

    settings, store = _patterns_context(config)
    try:
        settings = with_overrides(
            settings,
            entity=entity,
            outcome=outcome,
            renewal_date=renewal_date,
            horizon=horizon,
            min_support=min_support,
        )
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid option {problems}") from exc
    if settings.triage.entity not in ("account", "user"):
        raise click.ClickException(f"no entity type {settings.triage.entity!r}; the types are account, user")
    try:
        mined = mine(Signals(settings.signals, store).store, settings, top=top)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(table(mined))
    if output is not None:
        json.dump(mined.to_dict(), output, indent=2)
    if not dry_run:
        save_mined(store, settings.triage.entity, mined.patterns)
        click.echo(f"\n{len(mined.patterns)} patterns stored as the mined patterns of {settings.triage.entity}")


@patterns_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def patterns_list(as_json: bool, config: str | None) -> None:
    """List the risk patterns triage flags accounts with: hand-written ones (settings) and mined ones, enabled
    or not, with the figures of their mining.

    Example: ranker patterns list --config ranker.toml
    """
    from .patterns import all_patterns, listing

    settings, store = _patterns_context(config)
    patterns = all_patterns(store, settings)
    click.echo(json.dumps([p.to_dict() for p in patterns], indent=2) if as_json else listing(patterns))


def _switch(name: str, enabled: bool, config: str | None) -> None:
    from .patterns import UnknownPattern, set_enabled

    settings, store = _patterns_context(config)
    try:
        pattern = set_enabled(store, settings, name, enabled)
    except UnknownPattern as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{pattern.name} {'enabled' if enabled else 'disabled'}: {pattern.description}")


@patterns_group.command("disable")
@click.argument("name")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def patterns_disable(name: str, config: str | None) -> None:
    """Stop flagging accounts with a pattern (mined or hand-written); it stays disabled after a new mining.

    Example: ranker patterns disable m-545ee96f
    """
    _switch(name, False, config)


@patterns_group.command("enable")
@click.argument("name")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def patterns_enable(name: str, config: str | None) -> None:
    """Flag accounts with a disabled pattern again.

    Example: ranker patterns enable m-545ee96f
    """
    _switch(name, True, config)


@click.group("demo")
def demo_group() -> None:
    """Worked examples in a fresh data folder.

    Example: ranker demo renewal-triage --data-dir demo
    """


@demo_group.command("renewal-triage")
@click.option("--data-dir", type=click.Path(file_okay=False), default="renewal-demo", show_default=True)
@click.option("--accounts", type=click.IntRange(50, 100_000), default=500, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="The same seed makes the same company.")
@click.option("--days", type=click.IntRange(180, 395), default=365, show_default=True, help="Days of history.")
def demo_renewal_triage(data_dir: str, accounts: int, seed: int, days: int) -> None:
    """Generate a SaaS company with a planted churn pattern (fintech accounts whose Reporting API usage stops
    before renewal churn at 80 %): a year of product usage sent through OTLP, support tickets, contracts with
    outcomes through the entities API; then mine the patterns, run triage, and print where to look (the keys
    are printed once). With RANKER_DATABASE_URL set, the data goes into that PostgreSQL database (it must
    be empty; the data folder then holds the settings and the models' cache).

    Example: ranker demo renewal-triage --data-dir renewal-demo --accounts 500
    """
    import os

    from .demo import DemoError, run

    url = os.environ.get("RANKER_DATABASE_URL")
    try:
        run(Path(data_dir), accounts, seed, click.echo, days=days, overrides={"database_url": url} if url else None)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
