"""The store: the only place that speaks SQL.

- :mod:`ranker.store.database`: the engine the settings choose (:func:`open_database`): SQLite, or PostgreSQL
  (:mod:`ranker.store.postgres`, speaking through :mod:`ranker.store.pgsql`) shared by several nodes; one
  interface, so callers never branch on it; :mod:`ranker.store.copy` moves an SQLite log into PostgreSQL;
- :mod:`ranker.store.sqlite`: the decision log in SQLite (WAL) and its group commit (:class:`Store`), the
  connection, migration and transaction helpers;
- :mod:`ranker.store.decisions`: the decision log's operations over either engine's group commit (record,
  rewards, activation, reads, counts, a loop's API configuration) and the log's format of times;
- :mod:`ranker.store.learning`: the trainer's checkpoint, publications, retention and mode switches;
- :mod:`ranker.store.log`: the decisions in order with their rewards (join, export, replay), and imports;
- :mod:`ranker.store.jobs`: the queue of evaluation and feature-importance jobs;
- :mod:`ranker.store.signals`: entities, signal events and their per-day buckets;
- :mod:`ranker.store.outbox`: approved messages waiting for delivery;
- :mod:`ranker.store.triage`: risk items, their transitions and suppressed accounts;
- :mod:`ranker.store.migrations`: the schema, as sqlite-utils migrations.
"""

from .database import open_database
from .decisions import decision_row, loop_config_row, parse_time, save_loop_config, timestamp
from .sqlite import Store, connect, file_identity, migrate, open_log, transaction, write_turn

__all__ = [
    "Store",
    "connect",
    "decision_row",
    "file_identity",
    "loop_config_row",
    "migrate",
    "open_database",
    "open_log",
    "parse_time",
    "save_loop_config",
    "timestamp",
    "transaction",
    "write_turn",
]
