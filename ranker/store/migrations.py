"""Schema of the decision log, as sqlite-utils migrations applied at start-up and by ``ranker migrate``."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("ranker")


@migrations()
def create_decisions_and_rewards(db: Database) -> None:
    # AUTOINCREMENT: an id is never reused after deletions (log retention, DELETE logs), so the
    # trainer's "every decision up to this id is learned" stays true.
    db.execute(
        """
        CREATE TABLE decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order decisions were committed in
            loop TEXT NOT NULL,
            event_id TEXT NOT NULL,
            created_at TEXT NOT NULL,              -- ISO 8601, UTC
            record TEXT,                           -- the DSJSON line; null when no action was eligible
            action_ids TEXT NOT NULL,              -- JSON list of every requested action id, in request order
            reward_action_id TEXT,
            probability FLOAT,
            explanation TEXT NOT NULL,             -- JSON: {"excluded": {id: [reasons]}, "reweighted": {...}}
            model_version TEXT,
            policy TEXT,
            learning_mode TEXT NOT NULL,
            deferred INTEGER NOT NULL,
            activated_at TEXT
        )
        """
    )
    db["decisions"].create_index(["loop", "event_id"], unique=True)
    db["decisions"].create_index(["loop", "created_at"])
    db["rewards"].create(
        {"id": int, "decision_id": int, "value": float, "received_at": str},
        pk="id",
        foreign_keys=[("decision_id", "decisions", "id")],
        not_null={"decision_id", "value", "received_at"},
    )
    db["rewards"].create_index(["decision_id"])


@migrations()
def create_trainer_state(db: Database) -> None:
    # One row per loop: the trainer's checkpoint. The model and the last decision it learned are
    # committed together, which is what makes learning exactly once across crashes.
    db["trainer_state"].create(
        {
            "loop": str,
            "settings": str,  # JSON of the learning settings the model was trained with
            "last_decision_id": int,  # every decision of the loop up to this id is learned or skipped
            "model": bytes,  # VW model (with its optimiser state); null before anything was learned
            "learned": int,
            "skipped": int,
            "updated_at": str,
            "published_version": str,
            "published_learned": int,  # the learned count of the published model
            "published_at": str,
            "generation": int,  # raised by a model import or reset; a trainer holding an older one reloads
            "apprentice": str,  # JSON: the latest Apprentice decisions learned, [created_at, matched, reward]
        },
        pk="loop",
        not_null={"settings", "last_decision_id", "learned", "skipped", "updated_at", "published_learned"},
        defaults={"last_decision_id": 0, "learned": 0, "skipped": 0, "published_learned": 0, "generation": 0},
    )
    # The trainer reads each loop's decisions in id order.
    db["decisions"].create_index(["loop", "id"])


@migrations()
def create_loop_config(db: Database) -> None:
    # Service configuration and policy set through the API; they override the settings file.
    db["loop_config"].create(
        {"loop": str, "service": str, "policy": str, "updated_at": str},
        pk="loop",
        not_null={"updated_at"},
    )


@migrations()
def create_jobs(db: Database) -> None:
    # Offline evaluations and feature importances asked for through the API; the trainer process runs them.
    db["jobs"].create(
        {
            "loop": str,
            "kind": str,  # "evaluation" or "featureImportance"
            "id": str,
            "request": str,  # JSON: the job definition, with the loop's policy when it was created
            "status": str,  # Pending, Running, Succeeded or Failed
            "result": str,  # JSON: what the job found, or its error
            "created_at": str,
            "updated_at": str,
        },
        pk=("loop", "kind", "id"),
        not_null={"request", "status", "created_at", "updated_at"},
    )
    db["jobs"].create_index(["status", "created_at"])


@migrations()
def create_mode_switches(db: Database) -> None:
    # Every switch of a loop's learning mode the trainer made by itself, with the evidence it acted on.
    db["mode_switches"].create(
        {"id": int, "loop": str, "switched_at": str, "from_mode": str, "to_mode": str, "evidence": str},
        pk="id",
        not_null={"loop", "switched_at", "from_mode", "to_mode", "evidence"},
    )


@migrations()
def add_slots(db: Database) -> None:
    # Multi-slot decisions: each slot's id, chosen action and its probability; rewards name their slot. A
    # multi-slot decision's explanation is {"slots": {slot id: {"excluded": ..., "reweighted": ...}}}.
    db["decisions"].add_column("slots", str)  # JSON [{"id", "rewardActionId", "probability"}]; null: single-slot
    db["rewards"].add_column("slot_id", str)  # null for a single-slot decision


@migrations()
def add_explored(db: Database) -> None:
    # Whether a single-slot decision's action was not the model's first choice (exploration, or a priority or
    # discovery rule moved it); null when no model chose (no eligible action, Apprentice). A multi-slot
    # decision keeps it per slot in its explanation: {"slots": ..., "explored": {slot id: bool}}.
    db["decisions"].add_column("explored", int)


@migrations()
def create_signals(db: Database) -> None:
    # Entities (accounts, users): attributes as JSON with each leaf's update time.
    db.execute(
        """
        CREATE TABLE signal_entities (
            type TEXT NOT NULL,
            id TEXT NOT NULL,
            attributes TEXT NOT NULL,   -- JSON object
            times TEXT NOT NULL,        -- JSON {leaf path: ISO time of its last update}
            updated_at TEXT NOT NULL,   -- last change of the attributes
            PRIMARY KEY (type, id)
        ) WITHOUT ROWID
        """
    )
    # Every entity with attributes or events, and a version raised by every change its features could see
    # (attributes, new events, a rebuild): what the workers' caches of computed features compare. Narrow,
    # so raising it for each event batch does not rewrite the attributes.
    db.execute(
        "CREATE TABLE signal_versions (type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, "
        "PRIMARY KEY (type, id)) WITHOUT ROWID"
    )
    db.execute(
        """
        CREATE TABLE signal_entity_history (
            type TEXT NOT NULL, id TEXT NOT NULL, updated_at TEXT NOT NULL, attributes TEXT NOT NULL,
            times TEXT NOT NULL, PRIMARY KEY (type, id, updated_at)
        ) WITHOUT ROWID
        """
    )
    # Raw events, one row per log record, with the account and user it names; the key is the record's
    # identity (a hash of its resource, scope and record), so a redelivered record is ignored. A rowid table
    # appends cheaply; the indexes serve the reads of one entity's events over a time range.
    db.execute(
        """
        CREATE TABLE signal_events (
            id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, at INTEGER NOT NULL, name TEXT NOT NULL,
            account TEXT, user TEXT, attributes TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX signal_events_account ON signal_events (account, at) WHERE account IS NOT NULL")
    db.execute("CREATE INDEX signal_events_user ON signal_events (user, at) WHERE user IS NOT NULL")
    # Per (entity, feature, UTC day since 1970): count, sum/min/max of a numeric field, the newest event's
    # time (ns) and its field value as JSON (for ``last``); distinct values apart.
    db.execute(
        """
        CREATE TABLE signal_buckets (
            type TEXT NOT NULL, entity_id TEXT NOT NULL, feature TEXT NOT NULL, day INTEGER NOT NULL,
            count INTEGER NOT NULL, total REAL NOT NULL, low REAL, high REAL, newest INTEGER NOT NULL,
            last_value TEXT, PRIMARY KEY (type, entity_id, day, feature)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE signal_distinct (
            type TEXT NOT NULL, entity_id TEXT NOT NULL, feature TEXT NOT NULL, day INTEGER NOT NULL,
            value TEXT NOT NULL, PRIMARY KEY (type, entity_id, day, feature, value)
        ) WITHOUT ROWID
        """
    )


@migrations()
def create_outbox(db: Database) -> None:
    # Messages a reviewer approved, waiting for delivery (or for copying when no delivery is set). The key
    # is the message's idempotency key: one message per key, however often it is enqueued; delivery marks
    # it sent once and sends it with the key (Message-ID, Idempotency-Key) so a receiver can drop a repeat.
    db.execute(
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,           -- idempotency key, e.g. "triage:<item id>"
            source TEXT NOT NULL,               -- what made it, e.g. "triage:<item id>"
            recipient TEXT NOT NULL,
            subject TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            state TEXT NOT NULL,                -- pending, sending, sent, failed
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            sent_at TEXT,
            last_error TEXT
        )
        """
    )
    db.execute("CREATE INDEX outbox_due ON outbox (state, next_attempt_at)")


@migrations()
def create_triage_patterns(db: Database) -> None:
    # Risk patterns found by mining (`ranker patterns mine`), replaced as a set by each mining of an entity
    # type; and the enabled/disabled switch of any pattern (mined or written in the settings), kept apart so
    # that a pattern disabled by a reviewer stays disabled when mining finds it again.
    db.execute(
        """
        CREATE TABLE triage_patterns (
            name TEXT PRIMARY KEY,
            entity TEXT NOT NULL,
            position INTEGER NOT NULL,          -- rank in its mining (by the interval's lower end)
            pattern TEXT NOT NULL,              -- JSON: conditions, description and statistics
            mined_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        "CREATE TABLE triage_pattern_switches (name TEXT PRIMARY KEY, enabled INTEGER NOT NULL, "
        "updated_at TEXT NOT NULL)"
    )


@migrations()
def create_triage(db: Database) -> None:
    # Risk items of the renewal-risk triage (ranker.triage): one per account and renewal, so an account is
    # never flagged twice for the same renewal. JSON columns: pattern (its name, conditions and figures),
    # evidence (the matched values and the signal history behind them), ranking, explanation.
    db.execute(
        """
        CREATE TABLE triage_items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account TEXT NOT NULL,
            renewal_date TEXT NOT NULL,
            pattern_name TEXT NOT NULL,
            pattern TEXT NOT NULL,
            risk REAL NOT NULL,                 -- the pattern's churn rate: what "sort by risk" sorts by
            value REAL,                         -- the account's contract value, when it has one
            evidence TEXT NOT NULL,
            loop TEXT NOT NULL,
            event_id TEXT,
            action_id TEXT,                     -- the action the loop chose (null: none was eligible)
            ranking TEXT NOT NULL,
            explanation TEXT,
            draft_subject TEXT,
            draft_body TEXT,
            drafted_by TEXT NOT NULL,           -- "template" or "drafter"
            draft_note TEXT,                    -- why the template's draft was used when a drafter is set
            recipient TEXT,
            state TEXT NOT NULL,                -- pending, approved, dismissed
            decided_by TEXT,
            decided_at TEXT,
            final_subject TEXT,
            final_body TEXT,
            reward REAL,
            dismiss_reason TEXT,
            dismiss_text TEXT,
            outcome TEXT,
            outcome_at TEXT,
            created_at TEXT NOT NULL,
            UNIQUE (account, renewal_date)
        )
        """
    )
    db.execute("CREATE INDEX triage_items_state ON triage_items (state, renewal_date)")
    db.execute(
        """
        CREATE TABLE triage_transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            item_id INTEGER NOT NULL REFERENCES triage_items (id),
            at TEXT NOT NULL,
            who TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            detail TEXT                         -- JSON: what the transition carried (edits, reason, outcome)
        )
        """
    )
    db.execute("CREATE INDEX triage_transitions_item ON triage_transitions (item_id, id)")
    db.execute(
        """
        CREATE TABLE triage_suppressions (
            account TEXT PRIMARY KEY,
            until TEXT NOT NULL,
            reason TEXT NOT NULL,
            item_id INTEGER,
            created_at TEXT NOT NULL
        )
        """
    )


@migrations()
def create_review_sessions(db: Database) -> None:
    # Sessions of the review pages, kept on the server so sign-out and expiry end them everywhere: the id is
    # stored as its SHA-256 (a copy of the table signs nobody in). The secret signs the forms' CSRF tokens: one
    # row, made by the first process that needs it, so every worker (and a restarted server) shares it.
    db.execute(
        """
        CREATE TABLE review_sessions (
            id_sha256 TEXT PRIMARY KEY,
            loop TEXT NOT NULL,                 -- the loop of the key that signed in
            role TEXT NOT NULL,                 -- review or admin
            key_sha256 TEXT NOT NULL,           -- the key's stored form: the session ends when the key is removed
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX review_sessions_expiry ON review_sessions (expires_at)")
    db.execute("CREATE TABLE review_secret (id INTEGER PRIMARY KEY CHECK (id = 1), secret BLOB NOT NULL)")
