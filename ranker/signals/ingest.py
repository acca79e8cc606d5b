"""From an OTLP logs request to event rows: which records are events of which entities, and which are refused.

An event is a log record with ``eventName`` (or, from older senders, the attribute ``event.name``); its time
is ``timeUnixNano``, else ``observedTimeUnixNano``, else the time it arrived. Entity ids come from the
record's attributes, else its resource's (``signals.account_attribute``, ``signals.user_attribute``). A record
is refused as a whole (counted in ``rejectedLogRecords``, nothing of it stored) when it has no event name, no
entity id, an id that is not a string of 1-256 characters, more than ``signals.max_attributes`` attributes,
or a time more than a day ahead or older than the retention.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..store.signals import EventRow
from .definitions import SignalSettings
from .entities import check_id
from .features import DAY_NS, Buckets, Contribution, Definitions
from .otlp import attributes_of

_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass
class Batch:
    """The events of one request, what each adds to its features, and the records refused (by reason)."""

    rows: list[EventRow] = field(default_factory=list)
    # id(row) -> what it adds: [(entity type, id, contributions)]
    contributions: dict[int, list[tuple[str, str, list[Contribution]]]] = field(default_factory=dict)
    records: int = 0
    refused: Counter = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return sum(self.refused.values())

    def message(self) -> str:
        if not self.refused:
            return ""
        parts = [f"{n} {reason}" for reason, n in self.refused.most_common()]
        return f"{self.rejected} of {self.records} log records refused: " + "; ".join(parts)

    def fold(self, kinds: dict[tuple[str, str], str]):
        """The fold :meth:`ranker.store.signals.SignalStore.record_events` applies to the new rows."""

        def run(rows: list[EventRow]) -> tuple[list[tuple], list[tuple]]:
            buckets = Buckets()
            for row in rows:
                for entity, entity_id, contributions in self.contributions[id(row)]:
                    buckets.fold(entity, entity_id, row[1], contributions, kinds)
            return buckets.bucket_rows(), buckets.distinct_rows()

        return run


def extract(request: Any, settings: SignalSettings, definitions: Definitions, now_ns: int) -> Batch:
    """The events of an ``ExportLogsServiceRequest``."""
    batch = Batch()
    id_attributes = list(settings.attributes.items())
    most = settings.max_attributes
    latest, earliest = now_ns + DAY_NS, now_ns - settings.retention_days * DAY_NS
    refused = batch.refused
    dumps = _dumps
    for resource_logs in request.resource_logs:
        resource = resource_logs.resource
        too_many = len(resource.attributes) > most
        resource_attributes = {} if too_many else attributes_of(resource.attributes)
        resource_bytes = resource.SerializeToString(deterministic=True)
        for scope_logs in resource_logs.scope_logs:
            scope_bytes = scope_logs.scope.SerializeToString(deterministic=True)
            # the identity of a record: its resource, scope and itself (each length-prefixed)
            prefix = b"%d:%b%d:%b" % (len(resource_bytes), resource_bytes, len(scope_bytes), scope_bytes)
            for record in scope_logs.log_records:
                batch.records += 1
                if too_many or len(record.attributes) > most:
                    refused[f"with more than {most} attributes"] += 1
                    continue
                attributes = {**resource_attributes, **attributes_of(record.attributes)}
                name = record.event_name or attributes.get("event.name")
                if not isinstance(name, str) or not 0 < len(name) <= 256:
                    refused["without an event name (eventName or the attribute event.name)"] += 1
                    continue
                time_ns = record.time_unix_nano or record.observed_time_unix_nano or now_ns
                if time_ns > latest:
                    refused["with a time more than a day ahead"] += 1
                    continue
                if time_ns < earliest:
                    refused[f"older than the retention ({settings.retention_days} days)"] += 1
                    continue
                ids: dict[str, str] = {}
                problem = None
                for entity, attribute in id_attributes:
                    if attribute in attributes:
                        try:
                            ids[entity] = check_id(attributes[attribute], attribute)
                        except ValueError as exc:
                            problem = f"whose {exc}"
                            break
                if problem is not None or not ids:
                    refused[problem or f"without an entity id ({' or '.join(a for _, a in id_attributes)})"] += 1
                    continue
                body = prefix + record.SerializeToString(deterministic=True)
                key = hashlib.blake2b(body, digest_size=16).digest()
                row = (key, time_ns, name, ids.get("account"), ids.get("user"), dumps(attributes))
                batch.rows.append(row)
                batch.contributions[id(row)] = [
                    (entity, entity_id, definitions.contributions(entity, name, attributes))
                    for entity, entity_id in ids.items()
                ]
    return batch


def fold_stored(definitions: Definitions, kinds: dict[tuple[str, str], str]):
    """A fold over stored event rows (a rebuild, a point-in-time read): contributions from their attributes."""

    def run(rows: list[EventRow]) -> tuple[list[tuple], list[tuple]]:
        buckets = fold_into(Buckets(), rows, definitions, kinds)
        return buckets.bucket_rows(), buckets.distinct_rows()

    return run


def fold_into(buckets: Buckets, rows, definitions: Definitions, kinds) -> Buckets:
    """Add stored event rows to ``buckets``, for each entity they name."""
    for _, time_ns, name, account, user, text in rows:
        attributes = None
        for entity, entity_id in (("account", account), ("user", user)):
            if entity_id is None or not definitions.reads(entity, name):
                continue
            attributes = json.loads(text) if attributes is None else attributes
            contributions = definitions.contributions(entity, name, attributes)
            if contributions:
                buckets.fold(entity, entity_id, time_ns, contributions, kinds)
    return buckets
