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

from .commandline import loop_or_fail, settings_or_fail
from .core.errors import StoreUnavailable
from .core.settings import LOOPBACK, documentation, hash_key
from .evaluation import whatif
from .evaluation.compare import describe
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
from .learning import supervisor
from .logdata.export import export, import_dsjson
from .outbox import commands as outbox_commands
from .signals import commands as signals_commands
from .store import open_database
from .triage import commands as triage_commands


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
    """Serve the API with gunicorn on the decision log (SQLite in data_dir, or PostgreSQL with database_url), and
    run the trainer beside it (on PostgreSQL, one node's trainer leads and the others stand by).

    The trainer is started again if it dies; stopping this command (SIGTERM, Ctrl-C) stops both.

    Example: ranker serve --port 8080 --config ranker.toml
    """
    settings = settings_or_fail(config, host=host, port=port, workers=workers)
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
    try:
        open_database(settings).migrate()
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:ranker.server.gunicorn_config"], env=env
    )
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

    A second trainer on the same data folder (or PostgreSQL database) waits, and takes over when the first one
    stops or dies.

    Example: ranker train --config ranker.toml
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [trainer] %(levelname)s %(message)s")
    options = {"checkpoint_events": checkpoint_events, "checkpoint_seconds": checkpoint_seconds}
    try:
        report = supervisor.run(
            settings_or_fail(config, data_dir=data_dir),
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
@click.option(
    "--copy-to",
    envvar="RANKER_COPY_TO",
    help="Copy the SQLite log, models and configuration into this empty PostgreSQL database "
    "(postgresql://...; or set RANKER_COPY_TO, which keeps the password out of the process list).",
)
def migrate_command(config: str | None, copy_to: str | None) -> None:
    """Apply pending schema migrations to the decision log; with --copy-to, copy an SQLite log into PostgreSQL.

    The copy resumes where an interrupted one stopped and compares the counts of every table at the end.
    Stop ranker serve first; then set database_url to the same URL and start the nodes.

    Example: ranker migrate --config ranker.toml --copy-to postgresql://ranker@db.internal/ranker
    """
    settings = settings_or_fail(config)
    if copy_to:
        _copy_to(settings, copy_to)
        return
    try:
        applied = open_database(settings).migrate()
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{settings.database_name}: " + (", ".join(applied) if applied else "up to date"))


def _copy_to(settings, url: str) -> None:
    from .core.settings import mask_secrets
    from .store.copy import CopyError, copy_to_postgres

    target = settings_or_fail(None, database_url=url, data_dir=settings.data_dir)
    if settings.database_url is not None:
        raise click.ClickException("--copy-to copies the SQLite log: unset database_url for it")
    try:
        counts = copy_to_postgres(
            settings.database_path, settings.data_dir, open_database(target), lambda line: click.echo(line)
        )
    except (CopyError, StoreUnavailable, ValueError) as exc:
        raise click.ClickException(mask_secrets(str(exc), url)) from None
    total = ", ".join(f"{table} {n}" for table, n in counts.items())
    click.echo(f"copied {settings.database_path} into {target.database_name}; counts verified: {total}")


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
        settings = settings_or_fail(config)
        click.echo(f"{config}: valid; loops {', '.join(settings.loops)}; auth {'on' if settings.auth else 'off'}")
    for name, default, text in documentation():
        click.echo(f"{name} = {default}\n    {text}")


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
    settings = settings_or_fail(config)
    try:
        count = export(settings, loop_or_fail(settings, loop), output, start, end)
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
    settings = settings_or_fail(config)
    imported, errors = import_dsjson(settings, loop_or_fail(settings, loop), file)
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
@click.option("--reference", help="Also compare every policy with this one (a candidate's name), as with Online.")
@click.option("--by", "by", multiple=True, help="Also per segment: a dotted path of the logged context (repeat).")
@click.option(
    "--min-segment-events",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Segments with fewer events are pooled as 'other'.",
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Also replay the decisions through these rules (TOML) on top of each policy.",
)
@click.option("--workers", type=click.IntRange(1), default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--output", "-o", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--search", "search_seconds", type=click.FloatRange(0), help="Search VW arguments for SECONDS instead.")
@click.option("--apply", "apply_best", is_flag=True, help="With --search: make the best the loop's policy.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
def evaluate_command(
    loop,
    path,
    start,
    end,
    policies,
    arguments,
    no_dr,
    reference,
    by,
    min_segment_events,
    rules_path,
    workers,
    search_seconds,
    apply_best,
    output,
    config,
) -> None:
    """Replay candidate policies over a loop's log or a DSJSON file and estimate each one's reward.

    Online (what was logged), Baseline (the first eligible action; in a multi-slot slot, its baselineAction)
    and Random always run, with the policy files (default: every one in policies_dir of the source's kind,
    single- or multi-slot) and --arguments.
    Prints IPS, SNIPS, DR and the 95% Cressie-Read interval (for a multi-slot loop: per slot and overall,
    without DR), and for each policy its paired difference with Online (and with --reference): the estimate,
    its 95% interval, better / worse / not distinguishable, and about how many more events would settle it.
    With --by account.plan (any dotted path of the logged context; repeat for more), also one row per policy
    and segment value, with its own interval and differences; segments of fewer than --min-segment-events
    events are pooled as "other". Writes report.json and report.png (with a forest plot of the differences
    per segment) into --output.

    With --rules new-rules.toml, the logged decisions are also replayed through those rules on top of each
    policy: the share of the new policy's probability on actions never shown (the old rules excluded them, or
    they had probability 0), its estimate on the rest, and bounds assuming the worst and the best reward there.

    With --search SECONDS, VW arguments (interactions, -l, --power_t, --cb_type, exploration) are searched
    within that time instead, starting with the loop's policy and Personalizer's default; the best (one
    distinguishably better than Online first, then by the lower end of its interval) is printed against Online
    and written to search.json; --apply makes it the loop's policy (as PUT configurations/policy does: the
    model is reset and retrained from the log).

    Example: ranker evaluate --loop cards --from 2030-01-01 --policy default --arguments "--cb_explore_adf --squarecb"
    """
    if path and (start or end):
        raise click.UsageError("--from and --to select from a loop's log, not from --file")
    if rules_path and search_seconds is not None:
        raise click.UsageError("--rules goes with an evaluation, not with --search")
    if apply_best and (search_seconds is None or path):
        raise click.UsageError("--apply needs --search over a loop's log (not --file)")
    settings = settings_or_fail(config)
    if search_seconds is not None:
        _search(settings, loop, path, start, end, search_seconds, apply_best, workers, output)
        return
    try:
        new_rules = whatif.load_rules(rules_path) if rules_path else None
        if path:
            source = DsjsonFile(Path(path))
        else:
            source = LoopLog(settings, loop_or_fail(settings, loop), start, end)
        candidates = [*BUILT_INS, *policy_candidates(settings, policies, multislot=source_is_multislot(source))]
        candidates += [Candidate(words, words) for words in arguments]
        with click.progressbar(length=source.size(), label="replaying", file=sys.stderr) as bar:
            report = replay(
                source,
                candidates,
                reward_model=None if no_dr else DEFAULT_REWARD_MODEL,
                workers=workers,
                progress=bar.update,
                reference=reference,
                by=by,
                min_segment_events=min_segment_events,
            )
        what_if = whatif.what_if(source, report, new_rules) if new_rules is not None else None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.table())
    if what_if is not None:
        click.echo(f"\nunder the rules of {rules_path}:\n" + whatif.table(what_if))
        report.rules_what_if = {"rules": str(rules_path), **what_if}
    for reason, count in report.skipped.items():
        click.echo(f"skipped {count}: {reason}", err=True)
    json_path, png_path = write(report, output)
    click.echo(f"wrote {json_path}" + (f" and {png_path}" if png_path else " (no plot: matplotlib is not installed)"))


def _search(settings, loop, path, start, end, seconds, apply_best, workers, output) -> None:
    from .core.settings import Policy
    from .serving import administration
    from .serving.service import Service

    name = loop_or_fail(settings, loop)
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
    click.echo(f"best - Online: {describe(result.improvement.get('versus_online'))}")
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

    100: without it the model does no better than choosing at random; 0: nothing is lost. Features sent
    flat (outside any namespace) are scored as the namespace (default) and one by one; what could not be
    scored on its own (the action id feature; namespaces sharing a first character) is listed with the reason.

    Example: ranker importance --loop cards --features -o importance.json
    """
    from .evaluation.importance import importance, unscored

    if path and (start or end):
        raise click.UsageError("--from and --to select from a loop's log, not from --file")
    settings = settings_or_fail(config)
    name = loop_or_fail(settings, loop)
    source = DsjsonFile(Path(path)) if path else LoopLog(settings, name, start, end)
    try:
        rows = importance(source, arguments or settings.policy(name).arguments, features=features)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for row in rows:
        part = row["namespace"] + (f".{row['feature']}" if row["feature"] else "")
        click.echo(f"{row['score']:6.1f}  {part}  (SNIPS {row['estimate']:.4f} without, {row['full']:.4f} with)")
    for missing in unscored(source, rows):
        part = missing["namespace"] + (f".{missing['feature']}" if missing["feature"] else "")
        click.echo(f"not scored on its own: {part} ({missing['reason']})")
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
    from .server import events

    settings = settings_or_fail(config)
    name = loop_or_fail(settings, loop)
    database = open_database(settings)
    try:
        database.open_log().close()  # a reader: never create an empty log where there is none
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    body = events.lookup(database.store(create=False), settings, name, event_id, features)
    if body is None:
        raise click.ClickException(f"no decision {event_id!r} in loop {name!r}")
    click.echo(json.dumps(body, indent=2) if as_json else events.describe(body))


cli.add_command(signals_commands.signals_group)
cli.add_command(triage_commands.triage_group)
cli.add_command(triage_commands.patterns_group)
cli.add_command(triage_commands.demo_group)
cli.add_command(outbox_commands.outbox)
