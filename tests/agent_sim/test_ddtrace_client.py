"""The real ``ddtrace`` client (PyPI) sends to agent_sim unchanged, in both
of its encodings, and the receiver's stats match what it emitted exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.receiver import RunningReceiver
from tests.utils import render_tree, require_module

require_module("ddtrace", module_level=True)

SCRIPT = r"""
from ddtrace.trace import tracer

for i in range(5):
    try:
        with tracer.trace("web.request", service="shop", resource="GET /cart", span_type="web") as root:
            root.set_tag("http.status_code", "500" if i == 0 else "200")
            with tracer.trace("render", resource="cart.html"):
                pass
            with tracer.trace("mysql.query", service="shop-db", span_type="sql",
                              resource="SELECT * FROM items WHERE id = %d AND owner = 'user%d'" % (i, i)) as q:
                q.set_tag("error.message", "x")
            if i == 0:
                raise ValueError("boom")
    except ValueError:
        pass
for i in range(3):
    with tracer.trace("web.request", service="shop", resource="GET /items", span_type="web"):
        with tracer.trace("mysql.query", service="shop-db", span_type="sql",
                          resource="SELECT name FROM items WHERE id IN (1, 2, %d)" % i):
            pass
with tracer.trace("job", service="worker", resource="nightly") as j:
    j.set_tag("k", "v")
tracer.flush()
tracer.shutdown()
print("sent")
"""


@pytest.mark.parametrize("api_version", ["v0.4", "v0.5"])
def test_ddtrace_stats_match_exactly(api_version: str) -> None:
    with RunningReceiver() as rx:
        env = {
            **os.environ,
            "DD_TRACE_AGENT_URL": rx.url,
            "DD_TRACE_API_VERSION": api_version,
            "DD_TRACE_STATS_COMPUTATION_ENABLED": "false",
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
            "DD_REMOTE_CONFIGURATION_ENABLED": "false",
            "DD_TRACE_STARTUP_LOGS": "false",
            "DD_ENV": "test",
        }
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "sent" in proc.stdout
        rows = rx.wait_traces(9, timeout=10)
        assert len(rows) == 9
        assert rx.info()["counters"].get("payloads_rejected", 0) == 0
        stats = {(s["service"], s["name"], s["resource"]): (s["hits"], s["top_level_hits"], s["errors"])
                 for s in rx.stats()}
        assert stats == {
            ("shop", "web.request", "GET /cart"): (5, 5, 1),
            ("shop", "web.request", "GET /items"): (3, 3, 0),
            ("shop-db", "mysql.query", "SELECT * FROM items WHERE id = ? AND owner = ?"): (5, 5, 0),
            ("shop-db", "mysql.query", "SELECT name FROM items WHERE id IN ( ? )"): (3, 3, 0),
            ("worker", "job", "nightly"): (1, 1, 0),
        }
        services = {s["service"]: (s["hits"], s["errors"]) for s in rx.services()}
        assert services == {"shop": (8, 1), "shop-db": (8, 0), "worker": (1, 0)}
        (err,) = rx.traces(error=1)
        spans = rx.spans(err["trace_id"])
        assert render_tree(spans) == (
            "web.request shop 'GET /cart' [error]\n"
            "  render shop 'cart.html'\n"
            "  mysql.query shop-db 'SELECT * FROM items WHERE id = ? AND owner = ?'"
        )
        root = next(s for s in spans if s["parent_id"] is None)
        assert root["meta"]["error.type"] == "builtins.ValueError" and root["meta"]["env"] == "test"
        assert len(err["trace_id"]) == 32 and all(s["trace_id"] == err["trace_id"] for s in spans)
        assert {s["meta"].get("_dd.p.tid") for s in spans} == {err["trace_id"][:16]}
