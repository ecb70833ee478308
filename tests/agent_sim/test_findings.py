"""Findings through a real receiver: detected at ingest, served by
/api/insights and /metrics, persisted across a restart."""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest

from tests.receiver import RunningReceiver


def n_plus_one_trace(n: int) -> list[dict]:
    tid = random.getrandbits(63) + 1
    root = {"trace_id": tid, "span_id": 1, "parent_id": 0, "service": "shop", "name": "flask.request",
            "resource": "GET /orders", "type": "web", "start": 1_000, "duration": 10**8, "error": 0,
            "meta": {}, "metrics": {"_sampling_priority_v1": 1}}
    spans = [root]
    for i in range(n):
        spans.append({"trace_id": tid, "span_id": 10 + i, "parent_id": 1, "service": "sqlite",
                      "name": "sqlite.query", "resource": f"SELECT * FROM items WHERE order_id = {i}",
                      "type": "sql", "start": 2_000 + i * 100, "duration": 50, "error": 0,
                      "meta": {"db.system": "sqlite"}, "metrics": {}})
    return spans


def put(url: str, traces: list) -> None:
    req = urllib.request.Request(url + "/v0.4/traces", data=msgpack.packb(traces), method="PUT",
                                 headers={"Content-Type": "application/msgpack"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_n_plus_one_found_served_counted_and_kept_across_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "rx.db")
    with RunningReceiver(db=db) as rx:
        put(rx.url, [n_plus_one_trace(20), n_plus_one_trace(20), n_plus_one_trace(4)])
        (f,) = rx.get("/api/insights")
        assert (f["kind"], f["service"], f["resource"], f["count"]) == ("n_plus_one_db", "shop", "GET /orders", 40)
        assert f["detail"]["repeated"] == "SELECT * FROM items WHERE order_id = ?"
        assert len(f["example_trace_ids"]) == 2 and all(len(t) == 32 for t in f["example_trace_ids"])
        assert rx.get("/api/insights", kind="slow_query") == []
        assert rx.get("/api/insights", service="other") == []
        with urllib.request.urlopen(rx.url + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
        assert 'agent_sim_findings_total{kind="n_plus_one_db"} 40' in text
        with pytest.raises(urllib.error.HTTPError) as err:
            rx.get("/api/insights", kind="nope")
        err.value.close()
        assert err.value.code == 400
    with RunningReceiver(db=db) as rx:
        (f,) = rx.get("/api/insights")
        assert f["count"] == 40


def test_cli_insights_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from agent_sim.cli import main

    with RunningReceiver() as rx:
        put(rx.url, [n_plus_one_trace(7)])
        assert main(["insights", "--url", rx.url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:4] == ["KIND", "SERVICE", "ENDPOINT", "COUNT"]
        assert lines[-1].split()[:6] == ["n_plus_one_db", "shop", "GET", "/orders", "7", "3.50µs"] or \
            lines[-1].split()[:5] == ["n_plus_one_db", "shop", "GET", "/orders", "7"]
        assert main(["insights", "--url", rx.url, "--json", "--kind", "error_group"]) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_breakdown_served_by_window_kept_across_restart_and_rolled_up(tmp_path: Path) -> None:
    db = str(tmp_path / "rx.db")
    t0 = time.time_ns() // 10**10 * 10**10  # a bucket start; the traces end 0.1 s into it
    traces = [n_plus_one_trace(20), n_plus_one_trace(4)]
    for s in (s for t in traces for s in t):
        s["start"] += t0
    with RunningReceiver(db=db) as rx:
        put(rx.url, traces)
        rows = rx.get("/api/breakdown", service="shop", resource="GET /orders")
        # root 100 ms; 24 queries of 50 ns each
        assert rows == [{"service": "shop", "span_type": "web", "exclusive_ns": 2 * 10**8 - 24 * 50,
                         "share": round((2 * 10**8 - 24 * 50) / (2 * 10**8), 4)},
                        {"service": "sqlite", "span_type": "sql", "exclusive_ns": 24 * 50,
                         "share": round(24 * 50 / (2 * 10**8), 4)}]
        sec = t0 // 10**9
        assert rx.get("/api/breakdown", service="shop", since=sec - 5, until=sec + 1) == rows
        assert rx.get("/api/breakdown", service="shop", since=sec + 10) == []
        assert rx.get("/api/breakdown", service="shop", until=sec) == []
        assert rx.get("/api/breakdown", service="shop", resource="GET /other") == []
        with pytest.raises(urllib.error.HTTPError) as err:
            rx.get("/api/breakdown", since="yesterday")
        err.value.close()
        assert err.value.code == 400
    with RunningReceiver(db=db) as rx:
        assert rx.get("/api/breakdown", resource="GET /orders") == rows
        # the maintenance roll-up folds old 10 s rows into hour rows: same answer
        rx.receiver.maintain(now_ns=t0 + 2 * 24 * 3600 * 10**9, full=True)
        assert rx.receiver.store.execute("SELECT DISTINCT width FROM breakdown") == [(3600,)]
        assert rx.get("/api/breakdown", resource="GET /orders", since=sec, until=sec + 1) == rows
