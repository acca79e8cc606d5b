"""The store: the only place that speaks SQL.

- :mod:`ranker.store.sqlite`: the decision log in SQLite (WAL) and its group commit (:class:`Store`), the
  connection, migration and transaction helpers, a loop's API configuration;
- :mod:`ranker.store.learning`: the trainer's checkpoint, publications, retention and mode switches;
- :mod:`ranker.store.log`: the decisions in order with their rewards (join, export, replay), and imports;
- :mod:`ranker.store.jobs`: the queue of evaluation and feature-importance jobs;
- :mod:`ranker.store.signals`: entities, signal events and their per-day buckets;
- :mod:`ranker.store.outbox`: approved messages waiting for delivery;
- :mod:`ranker.store.triage`: risk items, their transitions and suppressed accounts;
- :mod:`ranker.store.migrations`: the schema, as sqlite-utils migrations.
"""

from .sqlite import (
    Store,
    connect,
    file_identity,
    loop_config_row,
    migrate,
    open_log,
    parse_time,
    save_loop_config,
    timestamp,
    transaction,
    write_turn,
)

__all__ = [
    "Store",
    "connect",
    "file_identity",
    "loop_config_row",
    "migrate",
    "open_log",
    "parse_time",
    "save_loop_config",
    "timestamp",
    "transaction",
    "write_turn",
]
