"""The ``ranker`` command: a thin shell over the library."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import click

from . import supervisor
from .errors import StoreUnavailable
from .evaluation.output import write
from .evaluation.replay import (
    BUILT_INS,
    DEFAULT_REWARD_MODEL,
    Candidate,
    DsjsonFile,
    LoopLog,
    policy_candidates,
    replay,
    source_is_multislot,
)
from .evaluation.search import search
from .export import export, import_dsjson
from .outbox import commands as outbox_commands
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
    # The one moment the decision log is created: the trainer and the workers started beside it (again,
    # later) only open it, so a log deleted while serving is never replaced by an empty one.
    migrate(settings.database_path)
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "python:ranker.gunicorn_config"], env=env)
    trainer = supervisor.Supervisor(env=env).start()

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:  # SIGHUP reloads gunicorn's workers; the others stop everything
            trainer.halt()
        server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = server.wait()
    trainer.stop()
    sys.exit(code)


@cli.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder of the decision log and models.")
@click.option("--once", is_flag=True, help="Learn what is due now, print the counts and exit.")
@click.option("--checkpoint-events", type=click.IntRange(1), help="Checkpoint after this many decisions (5000).")
@click.option("--checkpoint-seconds", type=click.FloatRange(0), help="... or this long after the last one (1.0).")
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this process is gone (ranker serve's).")
@click.option("--no-create-database", is_flag=True, help="Exit when there is no decision log, rather than create one.")
def train(config, data_dir, once, checkpoint_events, checkpoint_seconds, parent_pid, no_create_database) -> None:
    """Run the trainer alone: join rewards, learn, publish models, until interrupted.

    A second trainer on the same data folder waits, and takes over when the first one stops.

    Example: ranker train --config ranker.toml
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [trainer] %(levelname)s %(message)s")
    options = {"checkpoint_events": checkpoint_events, "checkpoint_seconds": checkpoint_seconds}
    try:
        report = supervisor.run(
            _settings(config, data_dir=data_dir),
            once=once,
            parent_pid=parent_pid,
            create_database=not no_create_database,
            **{name: value for name, value in options.items() if value is not None},
        )
    except StoreUnavailable as exc:
        raise click.ClickException(f"{exc}; stopping") from exc
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
@click.option("--role", type=click.Choice(["rank", "admin", "signals", "review"]), default="rank", show_default=True)
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


def _loop(settings, loop: str | None) -> str:
    loop = loop or settings.default_loop
    if loop not in settings.loops:
        raise click.ClickException(f"no loop {loop!r}; loops: {', '.join(settings.loops)}")
    return loop


@cli.command("export")
@click.option("--loop", help="Loop to export (default: default_loop).")
@click.option("--from", "start", help="Only decisions made at or after this ISO 8601 time (UTC if no zone).")
@click.option("--to", "end", help="Only decisions made before this ISO 8601 time.")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-", help="File (default stdout).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def export_command(loop: str | None, start: str | None, end: str | None, output, config: str | None) -> None:
    """Write a loop's decisions as DSJSON lines, labeled with the rewards the trainer joins to them.

    VW reads the file with --cb_explore_adf --dsjson (--ccb_explore_adf for a multi-slot loop, whose
    lines carry each slot's reward); deferred decisions never activated carry "_skipLearn": true, and
    decisions still inside their reward window are left out.

    Example: ranker export --loop cards --from 2030-01-01 --to 2030-02-01 -o cards.json
    """
    settings = _settings(config)
    try:
        count = export(settings, _loop(settings, loop), output, start, end)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{count} decisions exported", err=True)


@cli.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--loop", help="Loop to import into (default: default_loop).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def import_command(file, loop: str | None, config: str | None) -> None:
    """Load DSJSON decision logs (Personalizer's, VW's, an export) into a loop's log.

    Each line becomes a decision and, when it has a label, its reward (-_label_cost). Bad lines and
    EventIds already in the loop are reported with their line number and skipped (exit status 1).

    Example: ranker import --loop cards personalizer-logs.json
    """
    settings = _settings(config)
    imported, errors = import_dsjson(settings, _loop(settings, loop), file)
    for number, message in errors:
        click.echo(f"{file.name}:{number}: {message}", err=True)
    click.echo(f"{imported} decisions imported, {len(errors)} lines skipped")
    if errors:
        sys.exit(1)


@cli.command("evaluate")
@click.option("--loop", help="Loop whose log to replay (default: default_loop).")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), help="Replay this DSJSON file instead.")
@click.option("--from", "start", help="Only decisions made at or after this ISO 8601 time (UTC if no zone).")
@click.option("--to", "end", help="Only decisions made before this ISO 8601 time.")
@click.option("--policy", "policies", multiple=True, help="Candidate: a policy name or a policy JSON file (repeat).")
@click.option(
    "--arguments",
    "arguments",
    multiple=True,
    help="Candidate VW arguments, --cb_explore_adf (--ccb_explore_adf for a multi-slot loop) (repeat).",
)
@click.option("--no-dr", is_flag=True, help="No reward model: IPS and SNIPS only, one VW pass fewer.")
@click.option("--workers", type=click.IntRange(1), default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--output", "-o", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--search", "search_seconds", type=click.FloatRange(0), help="Search VW arguments for SECONDS instead.")
@click.option("--apply", "apply_best", is_flag=True, help="With --search: make the best the loop's policy.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def evaluate_command(
    loop, path, start, end, policies, arguments, no_dr, workers, search_seconds, apply_best, output, config
) -> None:
    """Replay candidate policies over a loop's log or a DSJSON file and estimate each one's reward.

    Online (what was logged), Baseline (the first eligible action; in a multi-slot slot, its baselineAction)
    and Random always run, with the policy files (default: every one in policies_dir of the source's kind,
    single- or multi-slot) and --arguments.
    Prints IPS, SNIPS, DR and the 95% Cressie-Read interval (for a multi-slot loop: per slot and overall,
    without DR), and writes report.json and report.png into --output.

    With --search SECONDS, VW arguments (interactions, -l, --power_t, --cb_type, exploration) are searched
    within that time instead, starting with the loop's policy and Personalizer's default; the best by the
    lower end of its interval is printed against Online and written to search.json; --apply makes it the
    loop's policy (as PUT configurations/policy does: the model is reset and retrained from the log).

    Example: ranker evaluate --loop cards --from 2030-01-01 --policy default --arguments "--cb_explore_adf --squarecb"
    """
    if path and (start or end):
        raise click.UsageError("--from and --to select from a loop's log, not from --file")
    if apply_best and (search_seconds is None or path):
        raise click.UsageError("--apply needs --search over a loop's log (not --file)")
    settings = _settings(config)
    if search_seconds is not None:
        _search(settings, loop, path, start, end, search_seconds, apply_best, workers, output)
        return
    try:
        if path:
            source = DsjsonFile(Path(path))
        else:
            source = LoopLog(settings, _loop(settings, loop), start, end)
        candidates = [*BUILT_INS, *policy_candidates(settings, policies, multislot=source_is_multislot(source))]
        candidates += [Candidate(words, words) for words in arguments]
        with click.progressbar(length=source.size(), label="replaying", file=sys.stderr) as bar:
            report = replay(
                source,
                candidates,
                reward_model=None if no_dr else DEFAULT_REWARD_MODEL,
                workers=workers,
                progress=bar.update,
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.table())
    for reason, count in report.skipped.items():
        click.echo(f"skipped {count}: {reason}", err=True)
    json_path, png_path = write(report, output)
    click.echo(f"wrote {json_path}" + (f" and {png_path}" if png_path else " (no plot: matplotlib is not installed)"))


def _search(settings, loop, path, start, end, seconds, apply_best, workers, output) -> None:
    from . import administration
    from .service import Service
    from .settings import Policy

    name = _loop(settings, loop)
    service = Service(settings)
    current = administration.effective(service, service.loops[name])[1].arguments
    source = DsjsonFile(Path(path)) if path else LoopLog(settings, name, start, end)
    try:
        result = search(source, seconds, current=current, workers=workers)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    online, best = result.online, result.best_row
    click.echo(f"{result.tried} policies over {result.events} events in {result.seconds:.1f} s")
    for label, row in (("Online", online), ("best", best)):
        lo, hi = row["interval"]
        snips = "-" if row["snips"] is None else f"{row['snips']:.4f}"
        click.echo(f"{label:7} SNIPS {snips}  interval [{lo:.4f}, {hi:.4f}]  {row['arguments'] or ''}")
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    click.echo(f"wrote {folder / 'search.json'}")
    if apply_best:
        policy = Policy(name="optimized", arguments=result.best["arguments"])
        administration.set_policy(service, service.loops[name], policy.model_dump())
        click.echo(f"loop {name}: policy set to {policy.arguments}")


@cli.command("importance")
@click.option("--loop", help="Loop whose log to replay (default: default_loop).")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), help="Replay this DSJSON file instead.")
@click.option("--from", "start", help="Only decisions made at or after this ISO 8601 time (UTC if no zone).")
@click.option("--to", "end", help="Only decisions made before this ISO 8601 time.")
@click.option("--arguments", help="VW arguments of the model (default: the loop's policy file).")
@click.option("--features", is_flag=True, help="Also leave out each feature, one at a time (one replay each).")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), help="Also write the rows as JSON here.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def importance_command(loop, path, start, end, arguments, features, output, config) -> None:
    """Score each namespace (and with --features each feature) 0-100 by the estimated reward lost without it.

    100: without it the model does no better than choosing at random; 0: nothing is lost.

    Example: ranker importance --loop cards --features -o importance.json
    """
    from .evaluation.importance import importance

    if path and (start or end):
        raise click.UsageError("--from and --to select from a loop's log, not from --file")
    settings = _settings(config)
    name = _loop(settings, loop)
    source = DsjsonFile(Path(path)) if path else LoopLog(settings, name, start, end)
    try:
        rows = importance(source, arguments or settings.policy(name).arguments, features=features)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for row in rows:
        part = row["namespace"] + (f".{row['feature']}" if row["feature"] else "")
        click.echo(f"{row['score']:6.1f}  {part}  (SNIPS {row['estimate']:.4f} without, {row['full']:.4f} with)")
    if output is not None:
        json.dump(rows, output, indent=2)


@cli.command("explain")
@click.argument("event_id")
@click.option("--loop", help="The decision's loop (default: default_loop).")
@click.option("--features/--no-features", default=True, help="Compute feature contributions (default: on).")
@click.option("--json", "as_json", is_flag=True, help="Print GET events/{eventId}'s JSON instead of a table.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def explain_command(event_id: str, loop: str | None, features: bool, as_json: bool, config: str | None) -> None:
    """Say why a decision came out as it did: rules, chosen action, exploration, rewards, and the features
    that pushed each ranked action up or down (with the model version that served it, while stored).

    Example: ranker explain --loop cards 3f2a9c0e
    """
    from . import events
    from .store import Store

    settings = _settings(config)
    name = _loop(settings, loop)
    body = events.lookup(Store(settings.database_path), settings, name, event_id, features)
    if body is None:
        raise click.ClickException(f"no decision {event_id!r} in loop {name!r}")
    click.echo(json.dumps(body, indent=2) if as_json else events.describe(body))


@cli.group("signals")
def signals_group() -> None:
    """Entity attributes and features: import a CRM file, rebuild features, prune old events.

    Example: ranker signals import --type account crm.csv
    """


def _signals(config: str | None):
    from .signals.service import Signals
    from .store import Store

    settings = _settings(config)
    return Signals(settings.signals, Store(settings.database_path, settings.synchronous, settings.commit_timeout))


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

    from .store import parse_time

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


@cli.group("triage")
def triage_group() -> None:
    """Renewal-risk triage: flag accounts at risk, rank their next best action, draft the email; report.

    Example: ranker triage run --config ranker.toml
    """


def _triage_service(config: str | None):
    from .service import Service

    settings = _settings(config)
    if not settings.database_path.exists():
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
    from .store import parse_time
    from .triage.flagging import run_pass

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
    from .store import Store
    from .triage.report import report, table

    settings = _settings(config)
    if not settings.database_path.exists():
        raise click.ClickException(f"there is no decision log at {settings.database_path}")
    data = report(Store(settings.database_path, settings.synchronous, create=False), settings.triage)
    click.echo(json.dumps(data) if as_json else table(data))


@cli.group("patterns")
def patterns_group() -> None:
    """Churn risk patterns: mine them from past renewals, list, disable and enable them.

    Example: ranker patterns mine --entity account --outcome contract.outcome --horizon P90D
    """


def _patterns_context(config: str | None):
    from .store import Store

    settings = _settings(config)
    return settings, Store(settings.database_path, settings.synchronous, settings.commit_timeout)


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

    from .signals.service import Signals
    from .triage.mining import mine, table, with_overrides
    from .triage.patterns import save_mined

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
    from .triage.patterns import all_patterns, listing

    settings, store = _patterns_context(config)
    patterns = all_patterns(store, settings)
    click.echo(json.dumps([p.to_dict() for p in patterns], indent=2) if as_json else listing(patterns))


def _switch(name: str, enabled: bool, config: str | None) -> None:
    from .triage.patterns import UnknownPattern, set_enabled

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


@cli.group("demo")
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
    are printed once).

    Example: ranker demo renewal-triage --data-dir renewal-demo --accounts 500
    """
    from .triage.demo import DemoError, run

    try:
        run(Path(data_dir), accounts, seed, click.echo, days=days)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc


cli.add_command(outbox_commands.outbox)
