"""Normalization limits and rules (as the Datadog agent applies them)."""

from __future__ import annotations

import time

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sim import normalize
from agent_sim.decode import PayloadError, decode_v04, unpack_v04
from agent_sim.normalize import normalize_payload, normalize_trace, truncate
from sql_obfuscation import obfuscate_error_message, obfuscate_sql


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



# -- the payload path against the rules applied one at a time ------------------
# normalize_payload checks and normalizes each span in one pass, with
# shortcuts for spans that need nothing. The reference below is the plain form
# of the rules: decode_v04's field-by-field decode, then every rule on every
# span. Both must agree on any payload, down to the reason for a bad one.
def reference(body: bytes) -> tuple:
    try:
        traces = decode_v04(body)
    except PayloadError as exc:
        return ("rejected", str(exc))
    kept = [spans for spans in traces if spans and spans[0]["trace_id"]
            and all(s["span_id"] and s["trace_id"] == spans[0]["trace_id"] for s in spans)]
    for spans in kept:
        tid = None
        for s in spans:
            s["service"] = truncate(s["service"], 100) or "unnamed-service"
            s["name"] = truncate(s["name"], 100) or "unnamed_operation"
            s["type"] = truncate(s["type"], 100)
            meta = s["meta"]
            if s["type"] == "sql":
                s["resource"] = obfuscate_sql(s["resource"]) if s["resource"] else ""
                for key in ("sql.query", "db.statement"):
                    if meta.get(key):
                        meta[key] = obfuscate_sql(meta[key])
                meta["sql.query"] = s["resource"] or meta.get("sql.query", "")
                if meta.get("error.message"):
                    meta["error.message"] = obfuscate_error_message(meta["error.message"])
            s["resource"] = truncate(s["resource"], 5000) or s["name"]
            meta = s["meta"] = {truncate(k, 200): truncate(v, 25000) for k, v in meta.items()}
            if "http.status_code" in meta:
                try:
                    valid = 100 <= int(meta["http.status_code"]) <= 599
                except ValueError:
                    valid = False
                if not valid:
                    del meta["http.status_code"]
            if tid is None:
                tid = meta.get("_dd.p.tid")
            s["duration"] = max(s["duration"], 0)
            if s["start"] < 946_684_800 * 10**9:
                s["start"] = time.time_ns() - s["duration"]
            s["duration"] = min(s["duration"], max(0, 2**63 - 1 - s["start"]))
            s["error"] = int(s["error"] != 0)
        for s in spans:
            if tid is not None:
                s["meta"]["_dd.p.tid"] = tid
    return ("ok", kept, len(traces) - len(kept))


def payload_path(body: bytes) -> tuple:
    try:
        kept, dropped, _count = normalize_payload(unpack_v04(body))
    except PayloadError as exc:
        return ("rejected", str(exc))
    return ("ok", kept, dropped)


def without_now(result: tuple, since: int) -> tuple:
    """Starts before 2000 become now − duration: mark them, the clock moved."""
    for spans in result[1] if result[0] == "ok" else ():
        for s in spans:
            if s["start"] + s["duration"] >= since:
                s["start"] = "now"
    return result


_ODD = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.binary(max_size=3), st.just([1]),
                 st.just({}))
_TEXT = st.one_of(st.sampled_from(["", "web", "sql", "a" * 25, "a" * 26, "é" * 26, "x" * 1251, "200", "99",
                                   " 404", "abc", "0000abcd00000000", "SELECT a FROM t WHERE b = 'x' AND c IN (1, 2)"]),
                  st.text(max_size=8))
_KEYS = st.one_of(_TEXT, st.sampled_from(["http.status_code", "_dd.p.tid", "sql.query", "db.statement",
                                          "error.message", "k" * 51, "env"]))


@st.composite
def _field(draw: st.DrawFn, usual: st.SearchStrategy) -> object:
    # mostly the wire type (else nearly every payload would be rejected)
    return draw(_ODD) if draw(st.integers(0, 50)) == 0 else draw(usual)


_INTS = st.sampled_from([0, 1, 2, 5, 2**63 - 10, 2**63, 2**64 - 1, -1, -(2**63)])
_SPAN = st.fixed_dictionaries({
    "trace_id": _field(st.sampled_from([1] * 12 + [2, 0, -1, 2**64 - 1])),
    "span_id": _field(st.one_of(st.integers(1, 4), _INTS)),
    "parent_id": _field(_INTS),
    "service": _field(_TEXT), "name": _field(_TEXT), "resource": _field(_TEXT), "type": _field(_TEXT),
    "start": _field(st.one_of(st.just(1_700_000_000 * 10**9), _INTS)),
    "duration": _field(st.one_of(st.just(10), _INTS)),
    "error": _field(st.integers(-2, 3)),
    "meta": _field(st.dictionaries(_KEYS, st.one_of(_TEXT, _TEXT, st.sampled_from(["v" * 6251, "é" * 12501]),
                                                    st.binary(max_size=2), st.none()), max_size=4)),
    "metrics": _field(st.dictionaries(_KEYS, st.one_of(st.integers(-3, 3), st.floats(allow_nan=False),
                                                       st.booleans(), st.none(), st.just("x")), max_size=3)),
}, optional={"extra": st.integers(0, 9)})
_TRACE = st.one_of(st.lists(_SPAN, max_size=4), st.lists(_SPAN, max_size=4), st.lists(_SPAN, max_size=4),
                   st.lists(st.one_of(_SPAN, st.integers(0, 9), st.none()), max_size=3), st.none(), st.just(5))


@settings(max_examples=400, deadline=None)
@given(st.lists(_TRACE, max_size=4))
def test_payload_path_matches_the_plain_rules(traces: list) -> None:
    body = msgpack.packb(traces, use_bin_type=True)
    since = time.time_ns()
    assert without_now(payload_path(body), since) == without_now(reference(body), since)


def test_known_keys_stay_bounded() -> None:
    spans = [mk(span_id=i + 1, meta={f"key-{i}": "v"}) for i in range(normalize._KNOWN_KEYS_MAX + 50)]
    assert normalize_payload([spans])[1] == 0
    assert len(normalize._known_keys) <= normalize._KNOWN_KEYS_MAX
    assert all(s["meta"] == {f"key-{i}": "v"} for i, s in enumerate(spans))


# SQL spans as our integrations send them (a resource, none of sql.query,
# db.statement, error.message in meta) take a shortcut in normalize_chunk; the
# rest go through _obfuscate_span. Mostly well-typed spans here, so that
# nearly every example reaches one of the two.
_SQL_TEXT = st.sampled_from(["", " ", "SELECT a FROM t WHERE b = 'x' AND c IN (1, 2)", "SELECT ?", "x" * 1251,
                             "SELECT '" + "s" * 7000 + "'", "UPDATE t SET a = 1 -- 'c'", "é" * 700])
_SQL_SPAN = st.fixed_dictionaries({
    "trace_id": st.just(1), "span_id": st.integers(1, 3), "parent_id": st.integers(0, 3),
    "service": st.sampled_from(["mysql", ""]), "name": st.just("mysql.query"), "resource": _SQL_TEXT,
    "type": st.sampled_from(["sql", "sql", "sql", "web"]),
    "start": st.just(1_700_000_000 * 10**9), "duration": st.integers(-1, 10), "error": st.integers(0, 1),
    "meta": st.dictionaries(st.sampled_from(["sql.query", "db.statement", "error.message", "db.system",
                                             "_dd.p.tid", "http.status_code"]),
                            st.one_of(_SQL_TEXT, st.sampled_from(["200", "abc"])), max_size=3),
    "metrics": st.dictionaries(st.sampled_from(["_dd.measured", "db.row_count"]), st.integers(0, 3), max_size=2),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_SQL_SPAN, min_size=1, max_size=4), max_size=3))
def test_sql_shortcut_matches_the_plain_rules(traces: list) -> None:
    body = msgpack.packb(traces, use_bin_type=True)
    since = time.time_ns()
    assert without_now(payload_path(body), since) == without_now(reference(body), since)
