"""The per-group state machine of a metric monitor (pure; the clock is an argument).

Rules (Datadog docs, "Monitors > Configuration"; ``docs/monitors.md``):

- A value *breaches* a threshold when ``value <cmp> threshold`` holds.
  Breaching critical → ``Alert``; else breaching warning → ``Warn``; else ``OK``.
- Recovery thresholds add hysteresis: an ``Alert`` group stays ``Alert``
  while the value still breaches ``critical_recovery`` (for ``>``: recovers
  once ``value <= critical_recovery``); a ``Warn`` group likewise with
  ``warning_recovery``. Crossing a recovery threshold alone does nothing.
- No value in the window: with ``notify_no_data``, ``No Data`` once the
  group's last point is ``no_data_timeframe`` old; otherwise the group keeps
  its last state. Data coming back is judged from ``OK``.
- ``new_group_delay``: a group is not evaluated until that long after its
  first point. ``renotify_interval``: a group still in a status listed in
  ``renotify_statuses`` is notified again that long after the last notification.
- Downtimes (``downtimes.py``): every transition is still an event, marked
  ``muted``. When the downtime ends (not when it is cancelled) a group still
  not ``OK`` is notified again; the first recovery after it is notified as
  any transition is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent_sim.monitors.definition import Monitor, Thresholds

OK, WARN, ALERT, NO_DATA = "OK", "Warn", "Alert", "No Data"
SEVERITY = {OK: 0, NO_DATA: 1, WARN: 2, ALERT: 3}
STATUS_OF = {"alert": ALERT, "warn": WARN, "no data": NO_DATA}
TITLES = {ALERT: "Triggered", WARN: "Warn", OK: "Recovered", NO_DATA: "No Data"}
HISTORY = 200  # transitions kept per group
SAMPLES = 180  # evaluations kept per group (the web page's chart: 3 hours at one a minute)

Points = list[tuple[float, float]]
GroupData = dict[str, tuple[dict[str, str], Points]]  # group key ("*" when not grouped) -> (tags, points)


def breaches(value: float, cmp: str, threshold: float) -> bool:
    if cmp == ">":
        return value > threshold
    if cmp == ">=":
        return value >= threshold
    if cmp == "<":
        return value < threshold
    return value <= threshold


def threshold_state(prev: str, value: float, cmp: str, t: Thresholds) -> str:
    if breaches(value, cmp, t.critical):
        return ALERT
    if prev == ALERT and t.critical_recovery is not None and breaches(value, cmp, t.critical_recovery):
        return ALERT
    if t.warning is not None:
        if breaches(value, cmp, t.warning):
            return WARN
        if prev == WARN and t.warning_recovery is not None and breaches(value, cmp, t.warning_recovery):
            return WARN
    return OK


def time_aggregate(points: Points, agg: str) -> float:
    values = [v for _t, v in points]
    if agg == "avg":
        return sum(values) / len(values)
    if agg == "max":
        return max(values)
    if agg == "min":
        return min(values)
    if agg == "sum":
        return sum(values)
    return max(points)[1]  # last


@dataclass
class Group:
    key: str
    tags: dict[str, str]
    first_seen: float
    last_seen: float
    state: str = OK
    value: float | None = None
    last_change: float = 0.0
    last_notified: float | None = None  # None: the current state was never notified (muted)
    muted_by: tuple[int, ...] = ()
    history: list[tuple[float, str]] = field(default_factory=list)
    samples: list[tuple[float, float | None, str]] = field(default_factory=list)  # (now, value, state)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "value": self.value, "last_change": self.last_change,
                "last_seen": self.last_seen, "muted": bool(self.muted_by),
                "history": [[t, s] for t, s in self.history], "samples": [list(x) for x in self.samples]}


@dataclass
class Event:
    """One transition, re-notification or end-of-downtime notification."""

    monitor_id: int
    monitor_name: str
    group: str
    tags: dict[str, str]
    previous: str
    state: str
    value: float | None
    time: float
    kind: str = "transition"  # or "renotify", "downtime_ended"
    muted: bool = False
    id: int = 0
    title: str = ""
    body: str = ""
    deliveries: dict[str, str] = field(default_factory=dict)  # webhook name -> outcome

    @property
    def transition(self) -> str:
        title = TITLES[self.state]
        return ("Re-" + title) if self.kind != "transition" else title

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "monitor_id": self.monitor_id, "monitor_name": self.monitor_name,
                "group": self.group, "tags": self.tags, "previous_state": self.previous, "state": self.state,
                "alert_transition": self.transition, "value": self.value, "time": self.time, "kind": self.kind,
                "muted": self.muted, "title": self.title, "body": self.body,
                "deliveries": dict(self.deliveries)}  # a copy: the delivery thread updates it


def step(m: Monitor, groups: dict[str, Group], data: GroupData, now: float,
         muted_by: Callable[[Group], tuple[int, ...]], ended: Callable[[int], bool]) -> list[Event]:
    """Advance ``groups`` (changed in place) by one evaluation at ``now``; the events it produced.

    ``muted_by(group)``: ids of the downtimes muting that group now;
    ``ended(downtime_id)``: True when it expired, False when it was cancelled."""
    for key, (tags, points) in data.items():
        if points and key not in groups:
            first = min(t for t, _v in points)
            groups[key] = Group(key, tags, first, first, last_change=now)
    if not m.query.by and "*" not in groups and m.notify_no_data and now - m.created >= m.no_data_timeframe_s:
        groups["*"] = Group("*", {}, m.created, m.created, last_change=now)  # never had data
    events: list[Event] = []
    for key, g in groups.items():
        if now - g.first_seen < m.new_group_delay_s:
            continue
        points = data.get(key, ({}, []))[1]
        if points:
            g.value = time_aggregate(points, m.query.time_agg)
            g.last_seen = max(g.last_seen, max(t for t, _v in points))
            new = threshold_state(OK if g.state == NO_DATA else g.state, g.value, m.query.comparator, m.thresholds)
        else:
            g.value = None
            no_data = m.notify_no_data and now - g.last_seen >= m.no_data_timeframe_s
            new = NO_DATA if no_data else g.state
        was_muted, g.muted_by = g.muted_by, muted_by(g)
        ev = None
        if new != g.state:
            ev = Event(m.id, m.name, key, g.tags, g.state, new, g.value, now, muted=bool(g.muted_by))
            g.state, g.last_change = new, now
            g.history = (g.history + [(now, new)])[-HISTORY:]
        elif g.state != OK and was_muted and not g.muted_by:
            if any(ended(d) for d in was_muted):  # still not OK when the downtime expired
                ev = Event(m.id, m.name, key, g.tags, g.state, g.state, g.value, now, kind="downtime_ended")
            else:  # cancelled: nothing is sent, and renotify counts from now
                g.last_notified = now
        elif (g.state != OK and not g.muted_by and m.renotify_interval_s and g.last_notified is not None
              and g.state in (STATUS_OF[s] for s in m.renotify_statuses)
              and now - g.last_notified >= m.renotify_interval_s):
            ev = Event(m.id, m.name, key, g.tags, g.state, g.state, g.value, now, kind="renotify")
        if ev is not None:
            g.last_notified = None if ev.muted else now
            events.append(ev)
        g.samples.append((now, g.value, g.state))
        if len(g.samples) > SAMPLES:
            del g.samples[0]
    return events


def overall_state(groups: dict[str, Group], m: Monitor, now: float) -> str:
    """The most severe state of the evaluated groups (Alert > Warn > No Data > OK); ``No Data`` without any."""
    states = [g.state for g in groups.values() if now - g.first_seen >= m.new_group_delay_s]
    return max(states, key=SEVERITY.__getitem__) if states else NO_DATA
