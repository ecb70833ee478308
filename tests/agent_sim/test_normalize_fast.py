"""normalize's C fast path (``_cdecode.normalize_clean``: a chunk with nothing
to fix but SQL obfuscation and the ``_dd.p.tid`` copy, as ``clean_chunk``
decides) gives exactly what the Python path gives, on chunks at the edges of
every limit it checks."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import normalize
from agent_sim.decode import PayloadError
from agent_sim.normalize import MAX_META_KEY, MAX_META_VALUE, MAX_NAME, MAX_RESOURCE, normalize_payload

pytestmark = pytest.mark.skipif(normalize._fast_normalize is None, reason="agent_sim._cdecode not built")

Y2000 = 946_684_800 * 10**9
NOW = 1_700_000_000 * 10**9


def run(traces: list, fast: bool) -> tuple:
    """The outcome, its spans as repr: meta key order is stored and shown too."""
    with pytest.MonkeyPatch.context() as m:
        if not fast:
            m.setattr(normalize, "_fast_normalize", None)
        since = time.time_ns()
        try:
            kept, dropped, count = normalize_payload(traces)
        except PayloadError as exc:
            return ("rejected", str(exc))
    for spans in kept:  # a start before 2000 becomes now - duration: the clock moved between the runs
        for s in spans:
            if s["start"] + s["duration"] >= since:
                s["start"] = "now"
    return ("ok", repr(kept), dropped, count)


def span(**fields: Any) -> dict[str, Any]:
    out = {"trace_id": 5, "span_id": 1, "parent_id": 0, "service": "web", "name": "flask.request",
           "resource": "GET /", "type": "web", "start": NOW, "duration": 10, "error": 0,
           "meta": {"env": "prod"}, "metrics": {"_dd.top_level": 1}}
    out.update(fields)
    return out


# Each field's edges: the last clean value and the first unclean one of each
# limit clean_chunk checks, and values of a wrong type. Meta edges are one
# entry added to the span's meta.
_STR = ["", "a", "x" * 25, "x" * 26, "é" * 25, "é" * 26, 7, b"x", None]
_IDS = [0, 1, 2, 2**63, 2**64 - 1, -1, 2**64, True, 1.0]
EDGES: dict[str, list[Any]] = {
    "trace_id": [6, *_IDS], "span_id": _IDS, "parent_id": _IDS, "service": _STR, "name": _STR,
    "resource": ["", " ", "a", "r" * 1250, "r" * 1251, "é" * 1250, "SELECT '" + "s" * 1300 + "'", None, b"r"],
    "type": ["sql", "", "x" * 25, "x" * 26, None, b"sql"],
    "start": [Y2000 - 1, Y2000, 2**63 - 11, 2**63 - 10, 2**63 - 1, 2**63, -1, -(2**63), 1.5, None],
    "duration": [0, -1, 11, 2**63 - 1, 2**63, None, "1"],
    "error": [1, 2, -1, True, None],
    "meta": [("k" * 50, "v"), ("k" * 51, "v"), ("é" * 50, "v"), ("k", "v" * 6250), ("k", "v" * 6251),
             ("k", "é" * 6250), ("k", b"b"), ("k", None), ("http.status_code", "599"), ("http.status_code", "600"),
             ("http.status_code", "100"), ("http.status_code", "099"), ("http.status_code", " 20"),
             ("http.status_code", "2000"), ("http.status_code", "２００"), ("sql.query", "SELECT 1"),
             ("db.statement", "SELECT 'x'"), ("error.message", "id 42 'x'")],
    "metrics": [{"m": v} for v in (0, -3, 2**64 - 1, 1.5, float("inf"), True, None, "x", b"1")]
    + [{"k" * 300: 1}, None, [1]],
}


@st.composite
def near_clean_span(draw: st.DrawFn) -> dict[str, Any]:
    """A clean span (web or SQL) with zero to two fields at one of their edges
    or of a wrong type, or a field missing or one too many: about half the
    chunks are clean, the rest miss by one thing."""
    out = span(type=draw(st.sampled_from(["web", "sql"])),
               resource=draw(st.sampled_from(["GET /", "SELECT a FROM t WHERE b = 'x'", "SELECT ?"])),
               meta=draw(st.dictionaries(st.sampled_from(["env", "_dd.p.tid", "http.status_code", "error.message"]),
                                         st.sampled_from(["prod", "200", "6560000000000000", "id 42 'x'"]),
                                         max_size=2)))
    for key in draw(st.lists(st.sampled_from([*EDGES, "missing", "extra"]), max_size=2)):
        with_edge(out, key, draw(st.sampled_from(EDGES.get(key, [None]))), draw(st.sampled_from(list(EDGES))))
    return out


def with_edge(out: dict[str, Any], key: str, value: Any, missing: str = "metrics") -> None:
    if key == "missing":
        out.pop(missing, None)
    elif key == "extra":
        out["extra"] = 1
    elif key == "meta":
        meta = out.get("meta")
        out["meta"] = {**(meta if isinstance(meta, dict) else {}), value[0]: value[1]}
    else:
        out[key] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces=st.lists(st.lists(near_clean_span(), max_size=4), max_size=4))
def test_fast_path_equals_python_path(traces: list) -> None:
    assert run(copy.deepcopy(traces), True) == run(copy.deepcopy(traces), False)


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, values in EDGES.items() for v in values]
                         + [("missing", "trace_id"), ("missing", "meta"), ("extra", None)])
@pytest.mark.parametrize("kind", ["web", "sql"])
def test_each_edge_same_on_both_paths(key: str, value: Any, kind: str) -> None:
    edge = span(span_id=3, type=kind, resource="SELECT a FROM t WHERE b = 'x'" if kind == "sql" else "GET /")
    with_edge(edge, key, value, value)
    chunk = [span(meta={"_dd.p.tid": "6560000000000000"}), edge, span(span_id=2, type="sql", resource="SELECT 1")]
    assert run(copy.deepcopy([chunk]), True) == run(copy.deepcopy([chunk]), False)


def test_limits_are_normalizes() -> None:
    from agent_sim._cdecode import CLEAN_LIMITS

    assert CLEAN_LIMITS == (MAX_NAME // 4, MAX_RESOURCE // 4, MAX_META_KEY // 4, MAX_META_VALUE // 4, Y2000)


@pytest.mark.parametrize(("fields", "clean"), [
    ({}, True),
    ({"service": "x" * 25, "resource": "r" * 1250, "type": "", "meta": {"k" * 50: "v" * 6250}}, True),
    ({"start": Y2000, "duration": 2**63 - 1 - Y2000, "error": 1, "metrics": {"a": 1.5, "b": True, "c": 2**64 - 1}},
     True),
    ({"span_id": 2**64 - 1, "parent_id": 2**64 - 1}, True),
    ({"meta": {"http.status_code": "599"}}, True),
    ({"service": "x" * 26}, False), ({"name": ""}, False), ({"resource": "r" * 1251}, False),
    ({"type": "t" * 26}, False), ({"meta": {"k" * 51: "v"}}, False), ({"meta": {"k": "v" * 6251}}, False),
    ({"meta": {"http.status_code": "600"}}, False), ({"meta": {"k": b"v"}}, False),
    ({"metrics": {"m": None}}, False), ({"trace_id": 0}, False), ({"span_id": -1}, False),
    ({"parent_id": 2**64}, False), ({"start": Y2000 - 1}, False), ({"duration": -1}, False),
    ({"start": 2**63 - 10, "duration": 10}, False), ({"error": 2}, False), ({"error": True}, False),
    ({"extra": 1}, False),
])
def test_what_the_fast_path_takes(fields: dict, clean: bool) -> None:
    from agent_sim._cdecode import clean_chunk

    spans = [span(**fields), span(span_id=2, meta={"_dd.p.tid": "65600000"})]
    assert clean_chunk(spans) == ("65600000" if clean else False)


def test_mixed_trace_ids_and_tid_order() -> None:
    from agent_sim._cdecode import clean_chunk

    assert clean_chunk([span(), span(trace_id=6)]) is False
    assert clean_chunk([span(meta={"_dd.p.tid": "a"}), span(meta={"_dd.p.tid": "b"})]) == "a"
    assert clean_chunk([span()]) is None
    assert clean_chunk([span(trace_id=2**64 - 1), span(trace_id=2**64 - 1, span_id=2)]) is None
    assert clean_chunk([]) is False and clean_chunk((span(),)) is False


# past the clean limit once obfuscated (1,210 characters, then 1,808): the C
# path obfuscates, Python applies the limit; and one that becomes empty
_LONG_SQL = "SELECT 'x'" + ",(1)" * 300


def test_a_payloads_statements_are_obfuscated_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    statements = ["SELECT a FROM t WHERE b = 'x'", "SELECT 1", _LONG_SQL, "/* c */"]
    assert len(_LONG_SQL) <= MAX_RESOURCE // 4 < len(normalize.obfuscate_sql(_LONG_SQL))
    # equal statements as distinct str objects, as separate decodes give them
    traces = [[span(span_id=i + 1, type="sql", resource="".join(list(statements[(t + i) % 4])),
                    meta={"_dd.p.tid": "6560000000000000"} if i == 0 else {"env": "prod"})
               for i in range(5)] + [span(span_id=9)] for t in range(6)]
    traces[2][1]["meta"] = {"sql.query": "SELECT 3"}  # another shape: Python's path, its own statement
    traces[2][1]["resource"] = "SELECT 3"
    want = run(copy.deepcopy(traces), False)
    calls: list[str] = []
    real = normalize.obfuscate_sql

    def counting(sql: str) -> str:
        calls.append(sql)
        return real(sql)

    monkeypatch.setattr(normalize, "obfuscate_sql", counting)
    assert run(copy.deepcopy(traces), True) == want
    # once each in the payload; Python's path obfuscates its span's resource and sql.query
    assert sorted(calls) == sorted([*statements, "SELECT 3", "SELECT 3"])
    calls.clear()
    for _ in range(2):  # the memo is the payload's: the next payload calls again
        normalize_payload(copy.deepcopy(traces[:1]))
    assert sorted(calls) == sorted(statements * 2)


@pytest.mark.parametrize("order", ["reversed", "rotated", "swapped"])
def test_fields_in_another_order_same_on_both_paths(order: str) -> None:
    # the C paths read a span's fields in one pass when they are in the usual order, else by key
    from agent_sim import stats

    def reorder(s: dict[str, Any]) -> dict[str, Any]:
        items = list(s.items())
        if order == "reversed":
            items.reverse()
        elif order == "rotated":
            items = items[1:] + items[:1]
        else:
            items[3], items[4] = items[4], items[3]  # service and name
        return dict(items)

    chunk = [reorder(span(span_id=1, service="web", name="flask.request", start=NOW, duration=70)),
             reorder(span(span_id=2, parent_id=1, service="db", name="mysql.query", type="sql", resource="SELECT 1",
                          start=NOW + 5, duration=20, error=1, metrics={"_dd.measured": 1}))]
    assert run(copy.deepcopy([chunk]), True) == run(copy.deepcopy([chunk]), False)
    for top_level in (True, False):
        fast = stats._fast_groups(copy.deepcopy([chunk]), top_level, stats.BUCKET_NS)
        assert repr(fast) == repr(stats._compute_groups(copy.deepcopy([chunk]), top_level))
