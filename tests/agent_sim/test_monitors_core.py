"""Monitors, the pure core: query grammar, definition checks, the state machine
(table-driven against Datadog's documented behaviour, on a driven clock) and
message templates."""

from __future__ import annotations

from typing import Any

import pytest

from agent_sim.monitors.definition import Monitor, parse_monitor
from agent_sim.monitors.query import MonitorError, parse_query
from agent_sim.monitors.state import ALERT, NO_DATA, OK, WARN, Event, Group, overall_state, step
from agent_sim.monitors.templates import context, render, title

T0 = 1_700_000_000.0


def monitor(query: str = "avg(last_5m):avg:web.latency{env:dev} > 800", **options: Any) -> Monitor:
    return parse_monitor({"name": "latency", "type": "metric alert", "query": query, "message": "m",
                          "options": options}, 1, now=T0)


def run(m: Monitor, values: list[Any], dt: float = 60.0, muted: set[int] | None = None,
        schedule: dict[int, tuple[int, ...]] | None = None,
        cancelled: frozenset[int] = frozenset()) -> tuple[list[str], list[Event], dict[str, Group]]:
    """One evaluation per value (a list of points, a number = one point at now, None = no data)."""
    groups: dict[str, Group] = {}
    states, events = [], []
    for i, v in enumerate(values):
        now = T0 + i * dt
        points = v if isinstance(v, list) else ([] if v is None else [(now, float(v))])
        mutes = (schedule or {}).get(i, ())
        events += step(m, groups, {"*": ({}, points)} if points else {}, now, lambda g, mutes=mutes: mutes,
                       lambda d: d not in cancelled)
        states.append(groups["*"].state if "*" in groups else "-")
    return states, events, groups


def kinds(events: list[Event]) -> list[str]:
    return [("(muted) " if e.muted else "") + e.transition for e in events]


# -- query grammar -----------------------------------------------------------------


def test_query_parts() -> None:
    q = parse_query("avg(last_5m):avg:web.latency{env:dev, team:a} by {host,az} > 800")
    assert (q.time_agg, q.window_s, q.space_agg, q.metric, q.scope, q.by, q.comparator, q.threshold) == (
        "avg", 300, "avg", "web.latency", ("env:dev", "team:a"), ("az", "host"), ">", 800.0)
    q = parse_query("sum(last_1h):sum:trace.flask.request.hits{*}.as_count() >= 1e3")
    assert (q.window_s, q.scope, q.as_count, q.comparator, q.threshold) == (3600, (), True, ">=", 1000.0)
    q = parse_query("sum(last_5m):sum:orders{*}.as_count() by {host} > 1")
    assert (q.by, q.as_count) == (("host",), True)
    q = parse_query("min(last_10m):p95:trace.flask.request{service:shop} by {resource_name}.as_rate() <= -0.5")
    assert (q.space_agg, q.by, q.as_count, q.comparator, q.threshold) == ("p95", ("resource_name",), False, "<=", -0.5)


@pytest.mark.parametrize("query, problem", [
    ("", "required"),
    ("median(last_5m):avg:x{*} > 1", "time aggregation 'median'"),
    ("avg(last_5s):avg:x{*} > 1", "window last_5s"),
    ("avg(last_0m):avg:x{*} > 1", "window last_0m"),
    ("avg(last_2d):avg:x{*} > 1", "between 1 minute and 1 day"),
    ("avg(last_5m):p42:x{*} > 1", "space aggregation 'p42'"),
    ("avg(last_5m):avg:x{!env:dev} > 1", "negated and wildcard"),
    ("avg(last_5m):avg:x{*} by {host:a} > 1", "expected tag keys"),
    ("avg(last_5m):avg:x{*} == 1", "expected a comparator"),
    ("avg(last_5m):avg:x{*} > high", "expected a comparator"),
    ("avg(last_5m):avg:x > 1", "does not start with"),
])
def test_query_errors_name_the_field(query: str, problem: str) -> None:
    with pytest.raises(MonitorError, match="^query: .*" + problem.replace("(", r"\(")) as exc:
        parse_query(query)
    assert exc.value.field == "query"


@pytest.mark.parametrize("change, field, problem", [
    ({"type": "log alert"}, "type", "not supported"),
    ({"name": ""}, "name", "required"),
    ({"options": {"thresholds": {"critical": 700}}}, "options.thresholds.critical", "differs from the query"),
    ({"options": {"thresholds": {"warning": 900}}}, "options.thresholds.warning", "must be below critical 800"),
    ({"options": {"thresholds": {"critical_recovery": 800}}}, "options.thresholds.critical_recovery", "below"),
    ({"options": {"thresholds": {"warning": 500, "warning_recovery": 600}}}, "options.thresholds.warning_recovery",
     "below warning 500"),
    ({"options": {"thresholds": {"warning_recovery": 400}}}, "options.thresholds.warning_recovery", "needs"),
    ({"options": {"thresholds": {"warning": "500"}}}, "options.thresholds.warning", "expected a number"),
    ({"options": {"notify_no_data": "yes"}}, "options.notify_no_data", "true or false"),
    ({"options": {"no_data_timeframe": 0}}, "options.no_data_timeframe", ">= 1"),
    ({"options": {"renotify_statuses": ["sometimes"]}}, "options.renotify_statuses", "expected a list"),
    ({"options": []}, "options", "expected an object"),
    ({"query": "avg(last_5m):avg:x{*} < 10", "options": {"thresholds": {"warning": 5}}}, "options.thresholds.warning",
     "must be above critical 10"),
])
def test_definition_errors_name_the_field(change: dict[str, Any], field: str, problem: str) -> None:
    data = {"name": "n", "type": "metric alert", "query": "avg(last_5m):avg:x{*} > 800", **change}
    with pytest.raises(MonitorError, match=problem) as exc:
        parse_monitor(data, 1)
    assert exc.value.field == field


def test_exported_datadog_monitor_loads_unchanged() -> None:
    exported = {"id": 123, "name": "Latency", "type": "query alert", "org_id": 1, "priority": None,
                "query": "avg(last_5m):avg:web.latency{env:dev} by {host} > 800", "message": "@webhook-ops",
                "tags": ["team:web"], "overall_state": "OK", "multi": True, "restricted_roles": None,
                "options": {"thresholds": {"critical": 800.0, "warning": 500.0, "critical_recovery": 700.0},
                            "notify_no_data": True, "no_data_timeframe": 10, "renotify_interval": 0,
                            "new_group_delay": 60, "include_tags": True, "notify_audit": False, "silenced": {}}}
    m = parse_monitor(exported, 7)
    assert (m.id, m.thresholds.warning, m.no_data_timeframe_s, m.new_group_delay_s) == (7, 500.0, 600, 60)
    assert parse_monitor({**exported, "options": {"notify_no_data": True}}, 7).no_data_timeframe_s == 600  # 2x window


# -- the state machine ------------------------------------------------------------------

W = {"thresholds": {"critical": 800, "warning": 500}}


@pytest.mark.parametrize("query, options, values, states", [
    # above: warning then critical; each step back down is its own transition
    ("> 800", W, [100, 600, 900, 600, 100], [OK, WARN, ALERT, WARN, OK]),
    # the threshold itself: '>' does not breach, '>=' does
    ("> 800", W, [800], [WARN]),
    (">= 800", W, [800], [ALERT]),
    # below
    ("< 10", {"thresholds": {"warning": 20}}, [30, 15, 5, 25], [OK, WARN, ALERT, OK]),
    ("<= 10", {}, [10, 11], [ALERT, OK]),
    # critical_recovery: stays Alert until value <= 700; crossing it from OK does nothing
    ("> 800", {"thresholds": {"critical_recovery": 700}}, [750, 900, 750, 700], [OK, ALERT, ALERT, OK]),
    (">= 800", {"thresholds": {"critical_recovery": 700}}, [900, 700, 699], [ALERT, ALERT, OK]),
    # recovering from Alert into the warning band is a Warn
    ("> 800", {"thresholds": {"warning": 500, "critical_recovery": 700}}, [900, 750, 600], [ALERT, ALERT, WARN]),
    # warning_recovery
    ("> 800", {"thresholds": {"warning": 500, "warning_recovery": 400}}, [600, 450, 400], [WARN, WARN, OK]),
    ("< 10", {"thresholds": {"warning": 20, "warning_recovery": 30}}, [15, 25, 31], [WARN, WARN, OK]),
])
def test_thresholds(query: str, options: dict[str, Any], values: list[float], states: list[str]) -> None:
    assert run(monitor("avg(last_5m):avg:x{*} " + query, **options), values)[0] == states


def test_transitions_are_events_titled_as_datadog() -> None:
    _s, events, _g = run(monitor(**W), [100, 600, 900, 600, 100])
    assert kinds(events) == ["Warn", "Triggered", "Warn", "Recovered"]
    assert [(e.previous, e.state) for e in events] == [(OK, WARN), (WARN, ALERT), (ALERT, WARN), (WARN, OK)]


SERIES = [(T0 - 240, 100.0), (T0 - 120, 900.0), (T0, 200.0)]


@pytest.mark.parametrize("agg, threshold, state", [
    ("avg", 800, OK),   # on average: 400
    ("avg", 399, ALERT),
    ("max", 800, ALERT),  # at least once: 900
    ("min", 150, OK),   # at all times: 100
    ("min", 99, ALERT),
    ("sum", 1000, ALERT),  # in total: 1200
    ("sum", 1200, OK),
    ("last", 199, ALERT),  # the last point, 200
])
def test_time_aggregations(agg: str, threshold: float, state: str) -> None:
    assert run(monitor(f"{agg}(last_5m):avg:x{{*}} > {threshold}"), [SERIES])[0] == [state]


def test_no_data_after_the_timeframe_default_twice_the_window() -> None:
    m = monitor(notify_no_data=True)  # window 5m -> no-data after 10m
    states, events, _g = run(m, [900] + [None] * 10 + [100])
    assert states == [ALERT] + [ALERT] * 9 + [NO_DATA, OK]
    assert kinds(events) == ["Triggered", "No Data", "Recovered"]
    m = monitor(notify_no_data=True, no_data_timeframe=3)
    assert run(m, [100, None, None, None])[0] == [OK, OK, OK, NO_DATA]


def test_without_notify_no_data_the_last_state_stays() -> None:
    assert run(monitor(), [900] + [None] * 30)[0] == [ALERT] * 31


def test_simple_monitor_that_never_had_data_goes_no_data() -> None:
    m = monitor(notify_no_data=True, no_data_timeframe=2)
    states, events, _g = run(m, [None, None, None])
    assert states == ["-", "-", NO_DATA] and kinds(events) == ["No Data"]


def test_renotify_interval_and_statuses() -> None:
    m = monitor(renotify_interval=10, **W)
    states, events, _g = run(m, [900] * 21)  # one evaluation a minute for 20 minutes
    assert kinds(events) == ["Triggered", "Re-Triggered", "Re-Triggered"]
    assert [e.time - T0 for e in events] == [0, 600, 1200]
    assert kinds(run(m, [600] * 21)[1]) == ["Warn"]  # warn is not in the default renotify_statuses
    m = monitor(renotify_interval=10, renotify_statuses=["warn"], **W)
    assert kinds(run(m, [600] * 11)[1]) == ["Warn", "Re-Warn"]


def test_new_group_delay() -> None:
    m = monitor("avg(last_5m):avg:x{*} by {host} > 800", new_group_delay=300)
    groups: dict[str, Group] = {}
    seen = []
    for i in range(7):
        now = T0 + 60 * i
        data = {"host:a": ({"host": "a"}, [(now, 900.0)])}
        seen += [(e.group, e.time - T0) for e in step(m, groups, data, now, lambda g: (), lambda d: True)]
        assert overall_state(groups, m, now) == (NO_DATA if i < 5 else ALERT)
    assert seen == [("host:a", 300)]  # evaluated from the 5th minute on


def test_groups_have_their_own_states() -> None:
    m = monitor("avg(last_5m):avg:x{*} by {host} > 800", **W)
    groups: dict[str, Group] = {}
    data = {"host:a": ({"host": "a"}, [(T0, 900.0)]), "host:b": ({"host": "b"}, [(T0, 600.0)]),
            "host:c": ({"host": "c"}, [(T0, 1.0)])}
    events = step(m, groups, data, T0, lambda g: (), lambda d: True)
    assert {k: g.state for k, g in groups.items()} == {"host:a": ALERT, "host:b": WARN, "host:c": OK}
    assert sorted(e.group for e in events) == ["host:a", "host:b"]
    assert overall_state(groups, m, T0) == ALERT


# -- downtimes' edge cases (which downtime mutes what: test_monitors_downtimes.py) -----------


def test_downtime_mutes_transitions_and_notifies_when_it_expires_still_alerting() -> None:
    schedule = {1: (9,), 2: (9,)}  # downtime 9 covers evaluations 1 and 2
    states, events, _g = run(monitor(**W), [100, 900, 900, 900], schedule=schedule)
    assert states == [OK, ALERT, ALERT, ALERT]
    assert kinds(events) == ["(muted) Triggered", "Re-Triggered"]
    assert events[1].kind == "downtime_ended" and events[1].time == T0 + 180


def test_cancelled_downtime_sends_nothing() -> None:
    schedule = {1: (9,), 2: (9,)}
    _s, events, _g = run(monitor(renotify_interval=2, **W), [100, 900, 900, 900, 900, 900], schedule=schedule,
                         cancelled=frozenset({9}))
    assert kinds(events) == ["(muted) Triggered", "Re-Triggered"]
    assert events[1].time == T0 + 5 * 60  # renotify counts from the cancellation (minute 3), not the alert


def test_first_recovery_after_the_downtime_is_notified() -> None:
    _s, events, _g = run(monitor(**W), [900, 900, 900, 100], schedule={1: (9,), 2: (9,)})
    assert kinds(events) == ["Triggered", "Recovered"]
    _s, events, _g = run(monitor(**W), [900, 100, 100], schedule={1: (9,)})
    assert kinds(events) == ["Triggered", "(muted) Recovered"]  # recovered inside: muted, nothing after


# -- templates ---------------------------------------------------------------------------


def test_message_template() -> None:
    m = parse_monitor({"name": "Latency", "query": "avg(last_5m):avg:x{*} by {host} > 800",
                       "options": {"thresholds": {"warning": 500}},
                       "message": "{{#is_alert}}ALERT {{value}} > {{threshold}}{{/is_alert}}"
                                  "{{#is_warning}}warn {{value}} > {{threshold}}{{/is_warning}}"
                                  "{{#is_recovery}}back{{#is_alert_recovery}} from alert{{/is_alert_recovery}}"
                                  "{{/is_recovery}}{{#is_no_data}}silent{{/is_no_data}}"
                                  "{{^is_recovery}} on {{host.name}}/{{host}}{{/is_recovery}}{{unknown}}"}, 1)
    def say(state: str, previous: str, value: float | None) -> str:
        ev = Event(1, "Latency", "host:a", {"host": "a"}, previous, state, value, T0)
        return render(m.message, context(m, ev))

    assert say(ALERT, OK, 912.5) == "ALERT 912.5 > 800 on a/a"
    assert say(WARN, OK, 600) == "warn 600 > 500 on a/a"
    assert say(OK, ALERT, 1) == "back from alert"
    assert say(OK, WARN, 1) == "back"
    assert say(NO_DATA, OK, None) == "silent on a/a"
    assert title(m, Event(1, "Latency", "host:a", {}, OK, ALERT, 1, T0)) == "[Triggered on {host:a}] Latency"
