"""ISO 8601 durations of days, hours, minutes and seconds, as settings and rules write them."""

from __future__ import annotations

import re
from datetime import timedelta

MAX_DURATION = timedelta(days=3650)

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?=\d)(?:(?P<h>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration of days, hours, minutes and seconds (``PT10M``, ``P1DT2H``)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT10M or PT1S")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    try:
        duration = timedelta(
            days=parts.get("d", 0), hours=parts.get("h", 0), minutes=parts.get("m", 0), seconds=parts.get("s", 0)
        )
    except OverflowError as exc:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days} days") from exc
    if duration > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days} days")
    return duration
