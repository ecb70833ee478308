"""Downtimes: one-off and recurring schedules (time zones, DST), scopes, and
their edge cases through the ``Engine`` on a driven clock."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent_sim.dogstatsd import Aggregator
from agent_sim.monitors.downtimes import parse_downtime
from agent_sim.monitors.engine import Engine
from agent_sim.monitors.notify import Notifier
from agent_sim.monitors.query import MonitorError
from agent_sim.monitors.source import MetricSource

T0 = 1_700_000_000


def ts(text: str, tz: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_one_off() -> None:
    d = parse_downtime({"start": 100, "end": 200}, 1, now=0)
    assert [d.active(t) for t in (99, 100, 199, 200)] == [False, True, True, False]
    d = parse_downtime({}, 2, now=50)  # from now, until cancelled
    assert d.active(50) and d.active(1e12) and not d.active(49)
    d.canceled = 70
    assert d.active(69) and not d.active(70)


def test_daily_keeps_its_wall_clock_time_across_dst() -> None:
    paris = "Europe/Paris"  # summer time from 2026-03-29 02:00
    d = parse_downtime({"start": ts("2026-03-27T22:00", paris), "end": ts("2026-03-28T06:00", paris),
                        "timezone": paris, "recurrence": {"type": "days", "period": 1}}, 1, now=0)
    for when, active in [("2026-03-27T21:59", False), ("2026-03-27T22:00", True), ("2026-03-28T05:59", True),
                         ("2026-03-28T06:00", False), ("2026-03-29T22:30", True), ("2026-03-30T05:30", True),
                         ("2026-03-30T06:30", False), ("2026-03-30T12:00", False), ("2026-03-26T23:00", False)]:
        assert d.active(ts(when, paris)) is active, when
    every2 = parse_downtime({**d.raw, "recurrence": {"type": "days", "period": 2}}, 2, now=0)
    assert every2.active(ts("2026-03-29T23:00", paris)) and not every2.active(ts("2026-03-28T23:00", paris))


def test_weekly_weekends_every_other_week_until_a_date() -> None:
    ny = "America/New_York"
    d = parse_downtime({"start": ts("2026-01-03T00:00", ny), "end": ts("2026-01-04T00:00", ny), "timezone": ny,
                        "recurrence": {"type": "weeks", "period": 2, "week_days": ["Sat", "Sun"],
                                       "until_date": ts("2026-02-01T00:00", ny)}}, 1, now=0)
    for when, active in [("2026-01-03T12:00", True), ("2026-01-04T23:00", True), ("2026-01-05T01:00", False),
                         ("2026-01-09T12:00", False), ("2026-01-10T12:00", False), ("2026-01-17T08:00", True),
                         ("2026-01-18T08:00", True), ("2026-01-31T08:00", True), ("2026-02-14T08:00", False)]:
        assert d.active(ts(when, ny)) is active, when


@pytest.mark.parametrize("data, field", [
    ({"start": 10, "end": 5}, "end"),
    ({"start": "tomorrow"}, "start"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"monitor_id": "3"}, "monitor_id"),
    ({"scope": 3}, "scope"),
    ({"end": 100, "recurrence": {"type": "months"}}, "recurrence.type"),
    ({"recurrence": {"type": "days"}}, "end"),
    ({"end": 100, "recurrence": {"type": "days", "period": 0}}, "recurrence.period"),
    ({"end": 100, "recurrence": {"type": "weeks", "week_days": ["Caturday"]}}, "recurrence.week_days"),
])
def test_bad_downtimes_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(MonitorError) as exc:
        parse_downtime(data, 1, now=0)
    assert exc.value.field == field


def test_scope_matching() -> None:
    def covers(dt_json: dict[str, Any], monitor_id: int = 1, tags: tuple[str, ...] = ("team:web",),
               group: frozenset[str] = frozenset({"host:a", "env:dev"})) -> bool:
        return parse_downtime(dt_json, 9, now=0).covers(monitor_id, tags, set(group))

    assert covers({}) and covers({"scope": "*"})
    assert covers({"monitor_id": 1}) and not covers({"monitor_id": 2})
    assert covers({"monitor_tags": ["team:web"]}) and not covers({"monitor_tags": ["team:web", "tier:1"]})
    assert covers({"scope": "host:a"}) and covers({"scope": ["host:a", "env:dev"]})
    assert not covers({"scope": "host:b"}) and not covers({"scope": ["host:a", "env:prod"]})


class Clock:
    now = float(T0)

    def __call__(self) -> float:
        return self.now


def test_engine_downtime_scoped_to_a_group_then_expiry_and_cancel() -> None:
    agg = Aggregator()
    clock = Clock()
    log: list[str] = []
    e = Engine(MetricSource(agg), Notifier(log=log.append), clock)
    m = e.put_monitor({"name": "lat", "query": "avg(last_1m):avg:lat{env:dev} by {host} > 800"})

    def minute(values: dict[str, float]) -> list[tuple[str, str, bool]]:
        for i in range(6):
            agg.ingest("\n".join(f"lat:{v}|g|#env:dev,host:{h}" for h, v in values.items()).encode(), clock.now + 10 * i)
        clock.now += 60
        before = len(e.events)
        e.evaluate(clock.now)  # on a bucket boundary: this minute's six buckets only
        return [(ev.group, ev.transition, ev.muted) for ev in list(e.events)[before:]]

    dtm = e.put_downtime({"monitor_id": m.id, "scope": "env:dev,host:a", "start": T0, "end": T0 + 130})
    assert minute({"a": 900, "b": 900}) == [("host:a", "Triggered", True), ("host:b", "Triggered", False)]
    assert minute({"a": 900, "b": 900}) == []
    assert minute({"a": 900, "b": 900}) == [("host:a", "Re-Triggered", False)]  # expired, still alerting
    assert minute({"a": 100, "b": 100}) == [("host:a", "Recovered", False), ("host:b", "Recovered", False)]
    assert e.list_downtimes()[0]["active"] is False and dtm.id not in e.monitors
    # cancelled while alerting: nothing at the cancellation, the recovery after it is sent
    d2 = e.put_downtime({"scope": "host:b"})
    assert minute({"a": 100, "b": 900}) == [("host:b", "Triggered", True)]
    assert e.cancel_downtime(d2.id) and not e.cancel_downtime(d2.id)
    assert minute({"a": 100, "b": 900}) == []
    assert minute({"a": 100, "b": 100}) == [("host:b", "Recovered", False)]
    assert sum("[Triggered on {host:b}]" in line for line in log) == 1  # the muted one was not logged as sent
