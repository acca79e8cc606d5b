"""The trainer's triage passes: one every ``triage.schedule``, the first when the trainer starts.

The trainer calls :meth:`TriageSchedule.tick` between learning passes, while it holds the trainer's leadership
(:meth:`ranker.store.database.SqliteDatabase.lease`): on several nodes sharing one PostgreSQL database only the
leading trainer runs passes, and a standby starts when it takes over. Nothing runs when the schedule is unset
or the settings have no ``triage.loop``; the pass's service (its loops' models, its store) is made at the first
pass, so a trainer without triage never builds one. A failed pass is logged and tried again at the next time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ..core.durations import parse_duration
from ..core.settings import Settings

log = logging.getLogger("ranker.triage")


class TriageSchedule:
    def __init__(self, settings: Settings):
        self.settings = settings
        schedule = settings.triage.schedule
        self.every = parse_duration(schedule) if schedule and settings.triage.loop in settings.loops else None
        self.next_at: datetime | None = None  # None: at the first tick
        self._service = None

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def due(self, now: datetime | None = None) -> bool:
        """Whether a pass is due (the trainer then checks it still leads before it runs one)."""
        if self.every is None:
            return False
        return self.next_at is None or (now or datetime.now(UTC)) >= self.next_at

    def tick(self, now: datetime | None = None) -> dict[str, Any] | None:
        """Run a pass when one is due; its report, or None."""
        now = now or datetime.now(UTC)
        if not self.due(now):
            return None
        self.next_at = now + self.every
        from ..serving.service import Service  # the web-free service, made once, at the first pass
        from .flagging import run_pass

        try:
            if self._service is None:
                self._service = Service(self.settings, create_database=False)
            return run_pass(self._service, now)
        except Exception as exc:  # the trainer goes on learning; the next pass tries again
            log.error("triage pass failed: %s", exc)
            return None
