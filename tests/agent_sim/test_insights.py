"""The pure detectors of agent_sim.insights on hand-built normalized traces."""

from __future__ import annotations

import itertools

from agent_sim.insights import (
    ERROR_GROUP,
    N_PLUS_ONE_DB,
    N_PLUS_ONE_HTTP,
    SLOW_QUERY,
    Thresholds,
    breakdown,
    detect,
    normalize_message,
)

_ids = itertools.count(1)


def span(parent: int, name: str, resource: str, start: int, *, service: str = "shop", type_: str = "",
         duration: int = 1000, error: int = 0, meta: dict | None = None) -> dict:
    return {"trace_id": 7, "span_id": next(_ids), "parent_id": parent, "service": service, "name": name,
            "resource": resource, "type": type_, "start": start, "duration": duration, "error": error,
            "meta": dict(meta or {}), "metrics": {}}


def request(resource: str = "GET /orders") -> dict:
    return span(0, "flask.request", resource, 0, type_="web", duration=10**9)


def query(parent: dict, sql: str, start: int, duration: int = 1000) -> dict:
    return span(parent["span_id"], "sqlite.query", sql, start, service="sqlite", type_="sql", duration=duration,
                meta={"db.system": "sqlite", "span.kind": "client"})


def kinds(findings) -> list[str]:
    return sorted(f.kind for f in findings)


def test_n_plus_one_of_twenty_is_one_finding_with_count_twenty():
    root = request()
    view = span(root["span_id"], "flask.view", "orders", 1, type_="web")
    spans = [root, view, query(view, "SELECT * FROM orders", 2)]
    for i in range(20):
        spans.append(query(view, "SELECT * FROM items WHERE order_id = ?", 10 + 10 * i))
        # a fetch span between the queries must not hide the run (getsentry/sentry#93090)
        spans.append(span(view["span_id"], "cursor.fetch", "fetchall", 15 + 10 * i))
    (f,) = detect(spans)
    assert (f.kind, f.service, f.resource, f.count) == (N_PLUS_ONE_DB, "shop", "GET /orders", 20)
    assert f.detail["source"] == "SELECT * FROM orders"
    assert f.detail["repeated"] == "SELECT * FROM items WHERE order_id = ?"
    assert f.total_duration_ns == 20 * 1000 and len(f.span_ids) == 20


def test_different_queries_or_four_identical_give_none():
    root = request()
    spans = [root] + [query(root, f"SELECT {i} FROM t{i}", i) for i in range(20)]
    assert detect(spans) == []
    root = request()
    assert detect([root] + [query(root, "SELECT x FROM t", i) for i in range(4)]) == []
    assert len(detect([root] + [query(root, "SELECT x FROM t", i) for i in range(4)],
                      Thresholds(n_plus_one_min=4))) == 1


def test_duration_floor_is_configurable():
    root = request()
    spans = [root] + [query(root, "SELECT x FROM t", i, duration=10) for i in range(6)]
    assert detect(spans, Thresholds(n_plus_one_min_total_ns=61)) == []
    assert kinds(detect(spans, Thresholds(n_plus_one_min_total_ns=60))) == [N_PLUS_ONE_DB]


def test_n_plus_one_http_and_fingerprint_is_stable_across_traces():
    def one() -> list:
        root = request("GET /checkout")
        calls = [span(root["span_id"], "requests.request", "GET /stock/?", i, type_="http",
                      meta={"span.kind": "client"}) for i in range(8)]
        return [root, *calls]
    (a,) = detect(one())
    (b,) = detect(one())
    assert a.kind == N_PLUS_ONE_HTTP and a.count == 8 and a.resource == "GET /checkout"
    assert a.fingerprint == b.fingerprint


def test_slow_query_and_error_groups():
    root = request("GET /slow")
    spans = [root, query(root, "SELECT SLEEP ( ? )", 1, duration=600_000_000),
             query(root, "SELECT 1", 2, duration=400_000_000)]
    (f,) = detect(spans)
    assert (f.kind, f.resource, f.detail["query"]) == (SLOW_QUERY, "GET /slow", "SELECT SLEEP ( ? )")
    assert detect(spans, Thresholds(slow_query_ns=10**9)) == []

    def failing(message: str, etype: str = "builtins.KeyError") -> list:
        r = request("GET /fail")
        r["error"] = 1
        r["meta"].update({"error.type": etype, "error.message": message})
        return [r]
    (e1,) = detect(failing("order 123 not found"))
    (e2,) = detect(failing("order 98765 not found"))
    (e3,) = detect(failing("order 1 not found", "builtins.ValueError"))
    assert e1.kind == ERROR_GROUP and e1.fingerprint == e2.fingerprint != e3.fingerprint


def test_normalize_message():
    assert normalize_message("user 'bob' id 42 uuid 123e4567-e89b-12d3-a456-426614174000 at 0xdeadbeef") == \
        "user ? id ? uuid ? at ?"
    # a KeyError's message is its repr: one quoted string, unwrapped rather than reduced to "?"
    assert normalize_message("'order 17 not found'") == "order ? not found"
    assert normalize_message("'a' != 'b'") == "? != ?"


def test_breakdown_is_exclusive_time_per_enclosing_endpoint():
    ms = 1_000_000
    root = span(0, "flask.request", "GET /checkout", 0, type_="web", duration=100 * ms)
    spans = [root] + [query(root, "SELECT 1", 1 + i, duration=10 * ms) for i in range(3)]
    call = span(root["span_id"], "requests.request", "GET /stock/?", 40 * ms, type_="http", duration=20 * ms,
                meta={"span.kind": "client"})
    backend = span(call["span_id"], "flask.request", "GET /stock/<id>", 41 * ms, service="stock", type_="web",
                   duration=15 * ms)
    stock_db = span(backend["span_id"], "pg.query", "SELECT n", 42 * ms, service="pg", type_="sql", duration=5 * ms,
                    meta={"db.system": "postgresql"})
    # a fetch span of the DB service under the app's span is no endpoint; concurrent children clip at 0
    fetch = span(root["span_id"], "sqlite.query.fetchall", "SELECT 1", 70 * ms, service="sqlite", type_="sql",
                 duration=1 * ms, meta={"db.system": "sqlite"})
    spans += [call, backend, stock_db, fetch]
    out: dict = {}
    breakdown(spans, out)
    bucket = 0
    assert out == {
        (bucket, "shop", "GET /checkout", "shop", "web"): (100 - 30 - 20 - 1) * ms,
        (bucket, "shop", "GET /checkout", "sqlite", "sql"): 31 * ms,
        (bucket, "shop", "GET /checkout", "shop", "http"): 5 * ms,
        (bucket, "shop", "GET /checkout", "stock", "web"): 10 * ms,
        (bucket, "shop", "GET /checkout", "pg", "sql"): 5 * ms,
        (bucket, "stock", "GET /stock/<id>", "stock", "web"): 10 * ms,
        (bucket, "stock", "GET /stock/<id>", "pg", "sql"): 5 * ms,
    }
    # a parent cycle (bad input) ends; an entry's bucket is its end, aligned to 10 s
    a = span(0, "x", "A", 25 * 10**9, duration=ms)
    b = span(a["span_id"], "y", "B", 25 * 10**9, duration=2 * ms)
    a["parent_id"] = b["span_id"]
    out = {}
    breakdown([a, b], out)
    assert out == {}  # b has exclusive time but, in a cycle, no endpoint
    out = {}
    breakdown([span(0, "x", "A", 25 * 10**9, duration=ms)], out)
    assert out == {(20 * 10**9, "shop", "A", "shop", ""): ms}
    # a partial flush: a query whose parent is in another chunk is no endpoint of its own
    out = {}
    breakdown([query({"span_id": 999}, "SELECT 1", 0, duration=ms)], out)
    assert out == {}
    out = {}
    view = span(999, "flask.view", "orders", 0, duration=3 * ms)
    breakdown([view, query(view, "SELECT 1", 0, duration=ms), query({"span_id": 998}, "SELECT 2", 0, duration=ms)], out)
    assert out == {(0, "shop", "orders", "shop", ""): 2 * ms, (0, "shop", "orders", "sqlite", "sql"): ms}
