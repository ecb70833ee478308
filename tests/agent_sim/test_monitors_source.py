"""Monitors over real data: DogStatsD datagrams through the real ``Aggregator``
and traces through the real ``Receiver`` stats, evaluated by the ``Engine``
on a driven clock."""

from __future__ import annotations

from typing import Any

import pytest

from agent_sim.dogstatsd import Aggregator
from agent_sim.dogstatsd_trace import TraceMetrics
from agent_sim.ingest import Receiver
from agent_sim.monitors.engine import Engine
from agent_sim.monitors.notify import Notifier
from agent_sim.monitors.source import MetricSource

T0 = 1_700_000_000  # a bucket boundary


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine(agg: Aggregator | None = None, now: float = T0,
           source: type[MetricSource] = MetricSource) -> tuple[Engine, list[str]]:
    log: list[str] = []
    return Engine(source(agg or Aggregator()), Notifier(log=log.append), Clock(now)), log


def states(e: Engine, now: float) -> dict[str, Any]:
    return {row["name"]: (row["overall_state"], row["groups"]) for row in e.evaluate(now)}


def test_grouped_gauge_monitor_over_dogstatsd() -> None:
    agg = Aggregator()
    for i in range(30):  # five minutes of one gauge per host, every 10 s
        agg.ingest(f"web.latency:{900 if i >= 24 else 100}|g|#env:dev,host:a\n"
                   f"web.latency:600|g|#env:dev,host:b\n"
                   f"web.latency:5000|g|#env:prod,host:c\n"
                   f"web.latency:5000|g|#env:dev".encode(), T0 + 10 * i)
    e, log = engine(agg)
    q = "web.latency{env:dev} by {host} > 800"
    e.put_monitor({"name": "avg", "query": "avg(last_5m):avg:" + q, "options": {"thresholds": {"warning": 500}},
                   "message": "{{host.name}} at {{value}}"})
    e.put_monitor({"name": "max", "query": "max(last_5m):avg:" + q})
    e.put_monitor({"name": "recent", "query": "avg(last_1m):avg:" + q})
    got = states(e, T0 + 300)  # on a bucket boundary: [T0 + 240, T0 + 300] takes i = 24..29 whether the query
    # counts the buckets starting in the window (main) or overlapping it (the metrics store)
    # host c is prod (filtered out); the untagged dev context has no host: not a group, as in Datadog
    assert got == {"avg": ("Warn", {"host:a": "OK", "host:b": "Warn"}),  # a: (24*100 + 6*900)/30 = 260
                   "max": ("Alert", {"host:a": "Alert", "host:b": "OK"}),
                   "recent": ("Alert", {"host:a": "Alert", "host:b": "OK"})}
    assert "agent-sim monitor: [Warn on {host:b}] avg (value 600)" in log
    assert [ev["body"] for ev in e.list_events() if ev["monitor_name"] == "avg"] == ["b at 600"]


def test_group_by_two_keys_and_as_count() -> None:
    agg = Aggregator()
    for i in range(6):
        agg.ingest(b"orders:1|c|#az:x,host:a\norders:1|c|#az:x,host:a\norders:1|c|#az:y,host:a\n"
                   b"orders:3|c|#az:y,host:b\norders:1|c|#host:b", T0 + 10 * i)
    e, _log = engine(agg)
    e.put_monitor({"name": "n", "query": "sum(last_1m):sum:orders{*} by {host,az}.as_count() >= 12"})
    e.put_monitor({"name": "rate", "query": "avg(last_1m):sum:orders{host:b} > 0.31"})  # (3+1)/10 s per bucket
    got = states(e, T0 + 59)
    assert got["n"] == ("Alert", {"az:x,host:a": "Alert", "az:y,host:a": "OK", "az:y,host:b": "Alert"})
    assert got["rate"] == ("Alert", {"*": "Alert"})


def span(tid: int, end_s: float, ms: float, resource: str = "GET /a", error: int = 0) -> list[dict[str, Any]]:
    dur = int(ms * 1e6)
    return [{"trace_id": tid, "span_id": tid, "parent_id": 0, "service": "shop", "name": "flask.request",
             "resource": resource, "type": "web", "start": int(end_s * 1e9) - dur, "duration": dur, "error": error,
             "meta": {}, "metrics": {"_dd.top_level": 1}}]


@pytest.fixture
def receiver():
    rx = Receiver(":memory:")
    yield rx
    rx.close()


def test_apm_monitors_over_trace_stats(receiver: Receiver) -> None:
    traces = []
    for i in range(20):  # one request a second for 20 s on /a (the last 5 errors), slow /b
        traces.append(span(i + 1, T0 + i + 0.5, 100 + i, error=int(i >= 15)))
        traces.append(span(100 + i, T0 + i + 0.5, 900, resource="GET /b"))
    receiver.ingest(traces, False, True)
    receiver.flush()
    e, _log = engine(Aggregator(traces=TraceMetrics(receiver)))
    scope = "{service:shop} by {resource_name}"
    e.put_monitor({"name": "p95", "query": f"max(last_1m):p95:trace.flask.request{scope} > 0.5",
                   "options": {"thresholds": {"warning": 0.115}}})
    e.put_monitor({"name": "hits", "query": f"sum(last_1m):sum:trace.flask.request.hits{scope}.as_count() >= 20"})
    e.put_monitor({"name": "errors", "query": "sum(last_1m):sum:trace.flask.request.errors{service:shop}.as_count() > 4"})
    e.put_monitor({"name": "error_rate", "query": f"max(last_1m):sum:trace.flask.request.error_rate{scope} > 0.4"})
    e.put_monitor({"name": "duration", "query": "avg(last_1m):avg:trace.flask.request.duration{resource_name:GET /b} > 0.8"})
    rows = {row["name"]: row for row in e.evaluate(T0 + 30)}
    got = {name: (row["overall_state"], row["groups"]) for name, row in rows.items()}
    a, b = "resource_name:GET /a", "resource_name:GET /b"
    assert got["p95"] == ("Alert", {a: "Warn", b: "Alert"})  # /a's 2nd bucket p95 ≈ 0.119 s (sketch ±1 %)
    assert got["hits"] == ("Alert", {a: "Alert", b: "Alert"})
    assert got["errors"] == ("Alert", {"*": "Alert"})
    assert got["error_rate"] == ("Alert", {a: "Alert", b: "OK"})  # /a: 5 errors in 10 hits of its 2nd bucket
    assert got["duration"] == ("Alert", {"*": "Alert"})


class FailingSource(MetricSource):
    """The real source, except that reading ``broken.metric`` fails while ``broken`` (a storage error, say)."""

    broken = True

    def fetch(self, q: Any, since: float, until: float) -> Any:
        if q.metric == "broken.metric" and self.broken:
            raise OSError("disk I/O error")
        return super().fetch(q, since, until)


def test_an_error_in_one_monitor_never_stops_the_others() -> None:
    agg = Aggregator()
    agg.ingest(b"ok.metric:5|g", T0 - 5)
    e, _log = engine(agg, source=FailingSource)
    e.put_monitor({"name": "broken", "query": "avg(last_1m):avg:broken.metric{*} > 1"})
    e.put_monitor({"name": "fine", "query": "avg(last_1m):avg:ok.metric{*} > 1"})
    rows = {r["name"]: r for r in e.evaluate(T0)}
    assert rows["broken"]["error"] == "OSError: disk I/O error" and rows["broken"]["overall_state"] == "No Data"
    assert rows["fine"]["overall_state"] == "Alert" and "error" not in rows["fine"]
    e.source.broken = False  # type: ignore[attr-defined]  # the store is back: the error goes
    assert "error" not in {r["name"]: r for r in e.evaluate(T0 + 1)}["broken"]
