"""Trace stats through the metrics query API, under Datadog's trace-metric names."""

from __future__ import annotations

import time

import pytest

from tests.agent_sim.test_server import send, span
from tests.receiver import RunningReceiver


def test_trace_stats_are_queryable_as_metrics() -> None:
    b = int(time.time()) - 600
    b -= b % 10
    traces = [[span(100 + i, 1, resource="GET /a", start=b * 10**9 + i, duration=(i + 1) * 1_000_000,
                    error=int(i < 2), meta={"env": "prod"})] for i in range(10)]
    traces += [[span(200 + i, 1, resource="GET /b", start=b * 10**9, duration=3_000_000)] for i in range(5)]
    traces += [[span(300, 1, service="api", resource="GET /b", start=b * 10**9)]]
    with RunningReceiver() as r:
        send(r.url, traces)

        def value(name: str, **params: object) -> object:
            got = r.get("/api/metrics/query", name=name, since=b, until=b + 9, **params)["series"]
            return {s["tags"].get(str(params.get("by")), ""): s["points"] for s in got}

        for _ in range(2):  # live buckets, then the same from the stats table
            assert value("trace.web.request.hits", agg="sum", by="resource_name") == {
                "GET /a": [[b, 1.0]], "GET /b": [[b, 0.6]]}  # web and api
            assert value("trace.web.request.errors", agg="sum", by="service") == {"web": [[b, 0.2]], "api": [[b, 0.0]]}
            assert value("trace.web.request.hits", agg="sum", by="service", tags="env:prod") == {"web": [[b, 1.5]]}
            assert value("trace.web.request.duration", tags="resource_name:GET /a") == {"": [[b, 0.0055]]}
            (points,) = value("trace.web.request", agg="p50", tags="resource_name:GET /a,service:web").values()
            assert points[0][1] == pytest.approx(0.005, rel=0.02)
            points = value("trace.web.request", agg="p99", by="resource_name")["GET /a"]
            assert points[0][1] == pytest.approx(0.009, rel=0.02)  # DDSketch rank q*(n-1): the 9th of 10
            r.receiver.flush()
        assert value("trace.web.request.hits", agg="sum", by="service") == {"web": [[b, 1.5]], "api": [[b, 0.1]]}
        listed = {m["name"]: (m["type"], m["tag_keys"]) for m in r.get("/api/metrics")}
        assert listed["trace.web.request"] == ("distribution", ["env", "resource_name", "service"])
        assert listed["trace.web.request.hits"][0] == "count"
        assert r.get("/api/metrics/query", name="trace.nothing.hits")["series"] == []
        for tags, listed_too in (("service:api", True), ("resource_name:GET /a,env:prod", True), ("env:prod", True),
                                 ("service:api,env:prod", False), ("service:nobody", False), ("shard:1", False)):
            names = {m["name"] for m in r.get("/api/metrics", tags=tags)}
            assert ("trace.web.request.hits" in names) is listed_too, tags
