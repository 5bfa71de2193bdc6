"""The one RFC 3339 reader of the project: instants and intervals with open ends (`2017-06-01T00:00:00Z/..`).

STAC uses RFC 3339 everywhere: item `datetime`/`start_datetime`/`updated`, the search `datetime` parameter
(an instant, or `start/end` where either end may be `..` or empty for "open"). Python's `fromisoformat` reads
a wider ISO 8601 (week dates, basic format, no separator) that a STAC server would refuse, so configs are
checked here with the RFC 3339 grammar before any request. `strict=False` reads item metadata as found in the
wild: a missing time zone is taken as UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["Interval", "format_instant", "parse_instant", "parse_interval", "try_instant"]

_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")
_OPEN = ("..", "")
_EXAMPLE = "like 2017-06-01T00:00:00Z"


def parse_instant(text: str, *, strict: bool = True) -> datetime:
    """An RFC 3339 date-time as an aware `datetime`.

    Args:
        text: `2017-06-01T10:20:30Z`, `2017-06-01T10:20:30.5+02:00`, …
        strict: Require the time zone (RFC 3339 does); False takes a missing zone as UTC.

    Raises:
        ValueError: Not an RFC 3339 date-time (with what was expected).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an RFC 3339 date-time {_EXAMPLE}, got {text!r}")
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected an RFC 3339 date-time {_EXAMPLE}, got {text!r}")
    day, clock, fraction, zone = match.groups()
    if zone is None and strict:
        raise ValueError(f"{text!r} has no time zone; add Z (UTC) or an offset, {_EXAMPLE}")
    fraction = (fraction or "")[:7]  # Python keeps microseconds
    zone = "+00:00" if zone is None or zone in "Zz" else zone
    try:
        return datetime.fromisoformat(f"{day}T{clock}{fraction}{zone}")
    except ValueError as err:  # e.g. month 13, 25:00
        raise ValueError(f"{text!r} is not a valid date-time: {err}") from None


def try_instant(text: object, *, strict: bool = False) -> datetime | None:
    """`parse_instant`, or None for anything that is not a date-time (lenient by default: item metadata)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_instant(text, strict=strict)
    except ValueError:
        return None


def format_instant(value: datetime) -> str:
    """RFC 3339 text of an aware datetime in UTC, `Z` suffixed."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Interval:
    """A closed time interval; `None` at an end means open (`..`)."""

    start: datetime | None
    end: datetime | None

    def __contains__(self, when: datetime) -> bool:
        return (self.start is None or self.start <= when) and (self.end is None or when <= self.end)

    def text(self) -> str:
        """The interval as a STAC `datetime` parameter (`start/end`, `..` for an open end)."""
        return "/".join(".." if v is None else format_instant(v) for v in (self.start, self.end))


def parse_interval(text: str) -> Interval:
    """An RFC 3339 instant or interval `start/end`, either end open (`..` or empty); an instant is [t, t].

    Raises:
        ValueError: Not an instant or interval, both ends open, or start after end.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an RFC 3339 instant or interval 'start/end' (an end may be '..'), got {text!r}")
    parts = text.strip().split("/")
    if len(parts) == 1:
        when = parse_instant(parts[0])
        return Interval(when, when)
    if len(parts) != 2:
        raise ValueError(f"expected one '/' in the interval 'start/end', got {text!r}")
    start, end = (None if p.strip() in _OPEN else parse_instant(p.strip()) for p in parts)
    if start is None and end is None:
        raise ValueError(f"an interval needs at least one closed end, got {text!r}")
    if start is not None and end is not None and start > end:
        raise ValueError(f"the interval {text!r} starts after it ends")
    return Interval(start, end)
