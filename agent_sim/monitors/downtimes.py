"""Downtimes in Datadog's v1 JSON (pure): one-off or recurring, scoped.

``{"scope": ["env:dev"] | "*", "monitor_id": 3, "monitor_tags": ["team:web"],
"start": <unix s>, "end": <unix s> | null, "timezone": "Europe/Paris",
"recurrence": {"type": "days" | "weeks", "period": 1, "week_days": ["Sat", "Sun"],
"until_date": <unix s>}, "message": "…"}``

Rules implemented (``docs/monitors.md``):

- *What*: ``monitor_id`` (one monitor) and/or ``monitor_tags`` (monitors
  carrying all of them); neither: every monitor. ``scope``: the groups whose
  tags (group-by tags plus the query's own tag filter) include every scope
  tag; ``*`` (the default) every group.
- *When*: one-off ``start <= t < end`` (no ``end``: until cancelled).
  Recurring: the first occurrence is ``start..end``; later ones start at the
  same wall-clock time in ``timezone`` every ``period`` days, or on the
  listed ``week_days`` every ``period`` weeks (default: ``start``'s weekday),
  so an occurrence keeps its local time across DST changes; none after
  ``until_date``.
- A cancelled downtime (``DELETE /api/downtimes/<id>``) stops muting at once
  and its end notifies nothing; an expired one notifies groups still not OK.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent_sim.monitors.query import MonitorError

WEEK_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass
class Downtime:
    id: int
    start: float
    end: float | None
    scope: tuple[str, ...] = ()  # () = '*'
    monitor_id: int | None = None
    monitor_tags: tuple[str, ...] = ()
    timezone: str = "UTC"
    recurrence: str = ""  # "", "days" or "weeks"
    period: int = 1
    week_days: tuple[int, ...] = ()
    until: float | None = None
    message: str = ""
    canceled: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        if self.canceled is not None and t >= self.canceled:
            return False
        if not self.recurrence:
            return self.start <= t and (self.end is None or t < self.end)
        assert self.end is not None
        tz = ZoneInfo(self.timezone)
        first = dt.datetime.fromtimestamp(self.start, tz)
        length = self.end - self.start
        today = dt.datetime.fromtimestamp(t, tz).date()
        for back in range(int(length // 86400) + 2):
            day = today - dt.timedelta(days=back)
            if day < first.date() or not self._occurs(day, first.date()):
                continue
            begin = dt.datetime.combine(day, first.time(), tz).timestamp()
            if begin <= t < begin + length and (self.until is None or begin <= self.until):
                return True
        return False

    def _occurs(self, day: dt.date, first: dt.date) -> bool:
        if self.recurrence == "days":
            return (day - first).days % self.period == 0
        weeks = ((day - dt.timedelta(days=day.weekday())) - (first - dt.timedelta(days=first.weekday()))).days // 7
        return weeks % self.period == 0 and day.weekday() in (self.week_days or (first.weekday(),))

    def covers(self, monitor_id: int, monitor_tags: tuple[str, ...], group_tags: set[str] | None) -> bool:
        """Whether this downtime applies to the monitor and, unless ``group_tags`` is None, to that group."""
        if self.monitor_id is not None and self.monitor_id != monitor_id:
            return False
        if not set(self.monitor_tags).issubset(monitor_tags):
            return False
        return group_tags is None or set(self.scope).issubset(group_tags)

    def to_json(self, now: float) -> dict[str, Any]:
        return {**self.raw, "id": self.id, "active": self.active(now), "canceled": self.canceled}


def _time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise MonitorError(name, f"expected unix seconds, got {value!r}")
    return float(value)


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MonitorError(name, "expected a list of tags")
    tags = tuple(sorted({v for v in value if v}))
    return () if tags in ((), ("*",)) else tags


def parse_downtime(data: Any, downtime_id: int, now: float) -> Downtime:
    if not isinstance(data, dict):
        raise MonitorError("downtime", f"expected a JSON object, got {type(data).__name__}")
    start = _time(data["start"], "start") if data.get("start") is not None else now
    end = _time(data["end"], "end") if data.get("end") is not None else None
    if end is not None and end <= start:
        raise MonitorError("end", f"must be after start ({start:.0f}), got {end:.0f}")
    monitor_id = data.get("monitor_id")
    if monitor_id is not None and (isinstance(monitor_id, bool) or not isinstance(monitor_id, int)):
        raise MonitorError("monitor_id", f"expected an integer, got {monitor_id!r}")
    tz = data.get("timezone") or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise MonitorError("timezone", f"unknown time zone {tz!r} (an IANA name such as Europe/Paris)") from None
    d = Downtime(downtime_id, start, end, _strings(data.get("scope", "*"), "scope"), monitor_id,
                 _strings(data.get("monitor_tags", []), "monitor_tags"), tz, message=str(data.get("message") or ""),
                 raw=dict(data))
    rec = data.get("recurrence")
    if rec is not None:
        if not isinstance(rec, dict):
            raise MonitorError("recurrence", "expected an object")
        if rec.get("type") not in ("days", "weeks"):
            raise MonitorError("recurrence.type", f"expected 'days' or 'weeks', got {rec.get('type')!r}")
        if end is None:
            raise MonitorError("end", "a recurring downtime needs an end (its first occurrence's)")
        period = rec.get("period", 1)
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise MonitorError("recurrence.period", f"expected an integer >= 1, got {period!r}")
        days = rec.get("week_days") or []
        if not isinstance(days, list) or any(x not in WEEK_DAYS for x in days):
            raise MonitorError("recurrence.week_days", f"expected a list of {', '.join(WEEK_DAYS)}")
        d.recurrence, d.period = rec["type"], period
        d.week_days = tuple(sorted(WEEK_DAYS.index(x) for x in days))
        d.until = _time(rec["until_date"], "recurrence.until_date") if rec.get("until_date") is not None else None
    return d
