"""Known traces for the inspection tests (CLI and web page), sent to a real
receiver as v0.4 msgpack, exactly as a tracer would put them on the wire.

``seed(url)`` sends the demo set and returns a ``Seeded`` record of what the
receiver must now show (trace ids in the JSON API's 32-hex form, expected
hits and errors per service and resource). ``big_trace`` builds one trace of
N spans for the waterfall timing test.

The spans carry ``_dd.top_level`` marks and the request says
``Datadog-Client-Computed-Top-Level: yes``, as our tracer does, so the
expected counts do not depend on the receiver's own top-level guess.
"""

from __future__ import annotations

import random
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import msgpack

SQL = "SELECT * FROM users WHERE id = ?"  # already obfuscated: stable resource

# (service, name, resource) -> (hits, errors) that /api/stats must report.
EXPECTED_STATS: dict[tuple[str, str, str], tuple[int, int]] = {
    ("web-store", "flask.request", "GET /users/<int:id>"): (5, 1),
    ("web-store", "flask.request", "POST /cart"): (3, 0),
    ("web-store", "requests.request", "GET /inventory"): (5, 0),
    ("inventory", "flask.request", "GET /stock"): (5, 0),
    ("sqlite", "sqlite.query", SQL): (5, 0),
    ("billing", "flask.request", "GET /invoices"): (2, 2),
}
# service -> (top-level hits, errors) that /api/services must report.
EXPECTED_SERVICES: dict[str, tuple[int, int]] = {
    "web-store": (8, 1),
    "inventory": (5, 0),
    "sqlite": (5, 0),
    "billing": (2, 2),
}
# The nested trace as tests.utils.render_tree renders it.
NESTED_TREE = """\
flask.request web-store 'GET /users/<int:id>' [error]
  flask.view web-store 'get_user'
    sqlite.query sqlite 'SELECT * FROM users WHERE id = ?'
    requests.request web-store 'GET /inventory'
      flask.request inventory 'GET /stock'"""


@dataclass
class Seeded:
    url: str
    trace_ids: dict[str, list[str]] = field(default_factory=dict)  # root resource -> 32-hex ids, oldest first
    nested_error_id: str = ""  # the nested trace whose root is an error

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.trace_ids.values())


class TraceBuilder:
    """Spans of one trace in v0.4 wire shape (uint64 ids, ns integers)."""

    def __init__(self, start_ns: int, rng: random.Random) -> None:
        self.rng = rng
        self.high = (start_ns // 1_000_000_000) << 32
        self.low = rng.getrandbits(64) or 1
        self.start_ns = start_ns
        self.spans: list[dict[str, Any]] = []

    @property
    def trace_id(self) -> str:
        return f"{self.high:016x}{self.low:016x}"

    def add(
        self,
        parent: dict[str, Any] | None,
        service: str,
        name: str,
        resource: str,
        offset_us: int,
        duration_us: int,
        span_type: str = "web",
        error: int = 0,
        meta: dict[str, str] | None = None,
        top_level: bool = False,
        measured: bool = False,
    ) -> dict[str, Any]:
        first = not self.spans
        tags = dict(meta or {})
        metrics: dict[str, float] = {}
        if first:
            tags["_dd.p.tid"] = f"{self.high:016x}"
            metrics["_sampling_priority_v1"] = 1
        if top_level:
            metrics["_dd.top_level"] = 1
        if measured:
            metrics["_dd.measured"] = 1
        span = {
            "trace_id": self.low,
            "span_id": self.rng.getrandbits(64) or 1,
            "parent_id": parent["span_id"] if parent else 0,
            "service": service,
            "name": name,
            "resource": resource,
            "type": span_type,
            "start": self.start_ns + offset_us * 1000,
            "duration": duration_us * 1000,
            "error": error,
            "meta": tags,
            "metrics": metrics,
        }
        self.spans.append(span)
        return span


def nested_trace(start_ns: int, rng: random.Random, user_id: int, error: bool) -> TraceBuilder:
    t = TraceBuilder(start_ns, rng)
    meta = {"component": "flask", "span.kind": "server", "http.method": "GET", "http.route": "/users/<int:id>",
            "http.url": f"http://localhost/users/{user_id}", "http.status_code": "500" if error else "200"}
    if error:
        meta.update({"error.type": "builtins.KeyError", "error.message": f"'user {user_id}'",
                     "error.stack": "Traceback (most recent call last):\n  File \"app.py\", line 12, in get_user\nKeyError"})
    root = t.add(None, "web-store", "flask.request", "GET /users/<int:id>", 0, 12_000 + user_id * 100,
                 error=int(error), meta=meta, top_level=True, measured=True)
    view = t.add(root, "web-store", "flask.view", "get_user", 300, 10_000, meta={"component": "flask"})
    t.add(view, "sqlite", "sqlite.query", SQL, 500, 2_000, span_type="sql",
          meta={"component": "sqlite3", "span.kind": "client", "db.system": "sqlite", "sql.query": SQL},
          top_level=True, measured=True)
    out = t.add(view, "web-store", "requests.request", "GET /inventory", 3_000, 6_000, span_type="http",
                meta={"span.kind": "client", "http.method": "GET", "http.status_code": "200",
                      "http.url": "http://inventory/stock"}, measured=True)
    t.add(out, "inventory", "flask.request", "GET /stock", 3_500, 4_500,
          meta={"span.kind": "server", "http.status_code": "200"}, top_level=True, measured=True)
    return t


def simple_trace(start_ns: int, rng: random.Random, service: str, resource: str, duration_us: int,
                 error: bool) -> TraceBuilder:
    t = TraceBuilder(start_ns, rng)
    meta = {"component": "flask", "span.kind": "server", "http.status_code": "500" if error else "200"}
    if error:
        meta.update({"error.type": "builtins.RuntimeError", "error.message": "ledger unavailable"})
    root = t.add(None, service, "flask.request", resource, 0, duration_us, error=int(error), meta=meta,
                 top_level=True, measured=True)
    t.add(root, service, "flask.view", resource.split()[-1].strip("/") or "index", 100, duration_us - 200)
    return t


def big_trace(n_spans: int, start_ns: int | None = None, seed: int = 5000) -> TraceBuilder:
    """One trace of ``n_spans``: a root, 50 handlers, each with a chain and
    fan-out of query spans (depth up to 6), every 97th span an error."""
    rng = random.Random(seed)
    t = TraceBuilder(start_ns or time.time_ns(), rng)
    total_us = 2_000_000
    root = t.add(None, "bulk", "batch.run", "nightly import", 0, total_us, top_level=True, measured=True)
    parents = [root]
    i = 1
    while len(t.spans) < n_spans:
        offset = int((i - 1) * (total_us - 50_000) / max(1, n_spans // 6))
        handler = t.add(root, "bulk", "batch.item", f"item {i}", offset, 40_000)
        parents = [handler]
        for depth in range(5):
            if len(t.spans) >= n_spans:
                break
            p = parents[-1]
            resource = f"SELECT * FROM batch_{depth} WHERE item = ?" if depth % 2 else f"step {i}.{depth}"
            child = t.add(p, "bulk", "sqlite.query" if depth % 2 else "batch.step", resource,
                          int((p["start"] - t.start_ns) / 1000) + 500, 30_000 - depth * 5_000,
                          span_type="sql" if depth % 2 else "", error=int(len(t.spans) % 97 == 0))
            parents.append(child)
        i += 1
    del t.spans[n_spans:]
    return t


def send_v04(url: str, traces: list[list[dict[str, Any]]], timeout: float = 10.0) -> bytes:
    body = msgpack.packb(traces)
    req = urllib.request.Request(
        url.rstrip("/") + "/v0.4/traces",
        data=body,
        method="PUT",
        headers={
            "Content-Type": "application/msgpack",
            "X-Datadog-Trace-Count": str(len(traces)),
            "Datadog-Meta-Lang": "python",
            "Datadog-Meta-Tracer-Version": "seed",
            "Datadog-Client-Computed-Top-Level": "yes",
        },
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200, resp.status
        return resp.read()


def seed(url: str, now_ns: int | None = None) -> Seeded:
    """Send the demo traces (10 traces, 4 services) to ``url``; returns what
    was sent. Start times spread over the last ~40 s, so they fall in several
    10 s stats buckets and list newest first in a known order."""
    rng = random.Random(1234)
    now = now_ns or time.time_ns()
    seeded = Seeded(url)
    builders: list[tuple[str, TraceBuilder]] = []
    for k in range(5):
        err = k == 2
        builders.append(("GET /users/<int:id>", nested_trace(now - (40 - k * 8) * 1_000_000_000, rng, 40 + k, err)))
    for k in range(3):
        builders.append(("POST /cart", simple_trace(now - (35 - k * 10) * 1_000_000_000, rng, "web-store", "POST /cart",
                                                     3_000 + k * 1_000, False)))
    for k in range(2):
        builders.append(("GET /invoices", simple_trace(now - (30 - k * 10) * 1_000_000_000, rng, "billing",
                                                        "GET /invoices", 20_000, True)))
    for resource, b in builders:
        seeded.trace_ids.setdefault(resource, []).append(b.trace_id)
    seeded.nested_error_id = builders[2][1].trace_id
    send_v04(url, [b.spans for _, b in builders])
    return seeded


def seed_big(url: str, n_spans: int = 5000) -> str:
    """Send one ``n_spans`` trace (in chunks of 1,000, like partial flushes);
    returns its 32-hex id."""
    t = big_trace(n_spans)
    for i in range(0, len(t.spans), 1000):
        chunk = [dict(s) for s in t.spans[i : i + 1000]]
        # As a partial flush does: the high id bits ride on each chunk's first span.
        chunk[0]["meta"] = {**chunk[0]["meta"], "_dd.p.tid": f"{t.high:016x}"}
        send_v04(url, [chunk])
    return t.trace_id
