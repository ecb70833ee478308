"""Normalization limits and rules (as the Datadog agent applies them)."""

from __future__ import annotations

import time

from agent_sim.normalize import normalize_trace, truncate


def mk(**kw: object) -> dict:
    base = {"trace_id": 1, "span_id": 1, "parent_id": 0, "service": "svc", "name": "op", "resource": "res",
            "type": "", "start": time.time_ns(), "duration": 10, "error": 0, "meta": {}, "metrics": {}}
    base.update(kw)
    return base


def test_truncate_on_utf8_boundary() -> None:
    assert truncate("abc", 2) == "ab"
    assert truncate("é" * 60, 100) == "é" * 50
    assert truncate("aé", 2) == "a"  # never half a character
    assert truncate("x" * 10, 100) == "x" * 10


def test_limits_truncate_not_reject() -> None:
    span = mk(service="s" * 150, name="n" * 150, resource="r" * 6000, type="t" * 150,
              meta={"k" * 300: "v" * 30000, "short": "ok"})
    assert normalize_trace([span]) is None
    assert len(span["service"]) == 100 and len(span["name"]) == 100 and len(span["resource"]) == 5000
    assert len(span["type"]) == 100
    assert span["meta"] == {"k" * 200: "v" * 25000, "short": "ok"}


def test_defaults_for_empty_fields() -> None:
    span = mk(service="", name="", resource="")
    assert normalize_trace([span]) is None
    assert (span["service"], span["name"], span["resource"]) == ("unnamed-service", "unnamed_operation",
                                                                 "unnamed_operation")
    span = mk(resource="")
    normalize_trace([span])
    assert span["resource"] == "op"


def test_zero_ids_and_mixed_trace_ids_drop_the_trace() -> None:
    assert normalize_trace([mk(trace_id=0)]) == "trace_id 0"
    assert normalize_trace([mk(), mk(span_id=0)]) == "span_id 0"
    assert normalize_trace([mk(), mk(trace_id=2, span_id=2)]) == "spans of different trace ids in one trace"
    assert normalize_trace([]) == "empty trace"


def test_http_status_code_outside_100_599_removed() -> None:
    for bad in ("99", "600", "abc", "", "-1"):
        span = mk(meta={"http.status_code": bad})
        normalize_trace([span])
        assert "http.status_code" not in span["meta"], bad
    for good in ("100", "200", "599", " 404"):
        span = mk(meta={"http.status_code": good})
        normalize_trace([span])
        assert span["meta"]["http.status_code"] == good


def test_times_and_error() -> None:
    span = mk(start=5, duration=-3, error=7)
    before = time.time_ns()
    normalize_trace([span])
    assert span["duration"] == 0 and span["start"] >= before and span["error"] == 1
    span = mk(start=2**63 - 10, duration=100)
    normalize_trace([span])
    assert span["start"] + span["duration"] == 2**63 - 1


def test_tid_copied_to_every_span() -> None:
    spans = [mk(span_id=1), mk(span_id=2, parent_id=1, meta={"_dd.p.tid": "00000000abcdef00"}), mk(span_id=3)]
    normalize_trace(spans)
    assert [s["meta"].get("_dd.p.tid") for s in spans] == ["00000000abcdef00"] * 3


def test_sql_spans_obfuscated_everywhere() -> None:
    span = mk(type="sql", resource="SELECT * FROM u WHERE pw = 'hunter2'",
              meta={"db.statement": "SELECT 'hunter2'", "error.message": "Duplicate entry 'hunter2' for key 'pw'"})
    normalize_trace([span])
    assert span["resource"] == span["meta"]["sql.query"] == "SELECT * FROM u WHERE pw = ?"
    assert span["meta"]["db.statement"] == "SELECT ?"
    assert span["meta"]["error.message"] == "Duplicate entry ? for key ?"
    assert "hunter2" not in repr(span)
    web = mk(type="web", resource="GET /q?x='1'")
    normalize_trace([web])
    assert web["resource"] == "GET /q?x='1'"  # only sql spans
