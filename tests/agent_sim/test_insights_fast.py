"""The C common cases of the insights (``_cdecode.breakdown_chunk`` and
``detect_clear``, used by ``insights.breakdown`` and ``insights.detect``)
agree with the Python code: a chunk the C breakdown takes gets exactly the
Python rows (same keys, order and int values), one it leaves is left
untouched; a chunk ``detect_clear`` calls clear has no finding."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import insights
from agent_sim.insights import BUCKET_NS, DEFAULT_LIMITS, Thresholds
from agent_sim.normalize import normalize_payload
from benchmarks.bench_ingest import make_payload

pytestmark = pytest.mark.skipif(insights._fast_breakdown is None, reason="agent_sim._cdecode not built")

FAST_BREAKDOWN, FAST_CLEAR = insights._fast_breakdown, insights._fast_detect_clear


def python_only(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with the C common cases off (their Python code runs)."""
    insights._fast_breakdown = insights._fast_detect_clear = None
    try:
        return fn(*args)
    finally:
        insights._fast_breakdown, insights._fast_detect_clear = FAST_BREAKDOWN, FAST_CLEAR


def check_breakdown(spans: list, seed: dict) -> bool:
    """Both breakdowns of ``spans`` into copies of ``seed``; True if C took it."""
    plain = dict(seed)
    try:
        python_only(insights.breakdown, spans, plain)
    except (KeyError, TypeError, ValueError):
        plain = None  # bad input: the C code must leave it to Python
    fast = dict(seed)
    taken = FAST_BREAKDOWN(spans, fast, BUCKET_NS)
    if taken:
        assert plain is not None
        assert repr(list(fast.items())) == repr(list(plain.items()))  # repr tells 1 from 1.0 and True
    else:
        assert repr(list(fast.items())) == repr(list(seed.items()))
    return taken


def check_detect(spans: list, limits: Thresholds) -> bool:
    clear = FAST_CLEAR(spans, limits.slow_query_ns, limits.n_plus_one_min)
    assert clear in (True, False)
    if clear:
        assert python_only(insights.detect, spans, limits) == []
    return clear


_ID = st.sampled_from([1, 2, 3, 4, 5, 2**64 - 1])
_SPAN = st.fixed_dictionaries({
    "trace_id": st.just(7), "span_id": _ID, "parent_id": st.one_of(st.just(0), _ID, st.just(99)),
    "service": st.sampled_from(["web", "db", "api", "é"]),
    "name": st.sampled_from(["flask.request", "mysql.query", "c.fetchall", "x.fetchone", "y.fetchmany", "fetchall"]),
    "resource": st.sampled_from(["SELECT ?", "GET /", "r"]), "type": st.sampled_from(["web", "sql", "http", ""]),
    "start": st.sampled_from([1_700_000_000 * 10**9, 1_700_000_009 * 10**9 + 999_999_999, 2**63 - 100, 0, -15]),
    "duration": st.sampled_from([0, 1, 10, 10**10, 2**63 - 1, 499_999_999, 500_000_000]),
    "error": st.sampled_from([0, 0, 0, 1]),
    "meta": st.dictionaries(st.sampled_from(["db.system", "span.kind", "env"]),
                            st.sampled_from(["client", "server", "mysql", ""]), max_size=3),
    "metrics": st.just({}),
})
# what normalize never leaves, but the functions may still be handed: C must step aside
_ODD = st.sampled_from([("span_id", -1), ("parent_id", "1"), ("duration", 1.5), ("duration", 2**63),
                        ("service", None), ("type", b"sql"), ("meta", None), ("meta", {"span.kind": 1}),
                        ("resource", 3), ("error", None), ("name", None), ("start", None), ("duration", True)])
_SEEDS = st.sampled_from([{}, {(1_700_000_000 * 10**9, "web", "GET /", "web", "web"): 5}])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(_SPAN, max_size=8), odd=st.lists(st.tuples(st.integers(0, 7), _ODD), max_size=1),
       seed=_SEEDS, least=st.sampled_from([0, 1, 2, 3, 5]), slow=st.sampled_from([0, 500_000_000, 2**70]),
       as_tuple=st.booleans())
def test_fast_insights_equal_python(spans: list, odd: list, seed: dict, least: int, slow: int,
                                    as_tuple: bool) -> None:
    for i, (field, value) in odd:
        if i < len(spans):
            spans[i] = dict(spans[i])
            if value is None and field != "meta":
                del spans[i][field]
            else:
                spans[i][field] = value
    chunk: Any = tuple(spans) if as_tuple else spans
    check_breakdown(chunk, seed)
    check_detect(chunk, Thresholds(n_plus_one_min=least, slow_query_ns=slow))


def span(**fields: Any) -> dict[str, Any]:
    out = {"trace_id": 7, "span_id": 1, "parent_id": 0, "service": "web", "name": "flask.request",
           "resource": "GET /", "type": "web", "start": 1_700_000_000 * 10**9, "duration": 100, "error": 0,
           "meta": {}, "metrics": {}}
    out.update(fields)
    return out


def query(sid: int, resource: str = "SELECT ?", **fields: Any) -> dict[str, Any]:
    return span(**{"span_id": sid, "parent_id": 1, "service": "db", "name": "mysql.query", "resource": resource,
                   "type": "sql", "duration": 10, "meta": {"db.system": "mysql"}, **fields})


def test_bench_chunks_take_the_fast_paths() -> None:
    """The benchmark's chunks (Flask + PyMySQL as our integrations tag them):
    every breakdown and every chunk without an error is done in C."""
    traces = normalize_payload(msgpack.unpackb(make_payload(random.Random(7)), strict_map_key=False))[0]
    assert sum(check_breakdown(t, {}) for t in traces) == len(traces)
    assert sum(check_detect(t, DEFAULT_LIMITS) for t in traces) == sum(not t[-1]["error"] for t in traces) == 98


@pytest.mark.parametrize(("spans", "clear"), [
    ([span()], True),
    ([span(error=1)], False),
    ([span(), *(query(i) for i in range(2, 6))], True),  # 4 of one query: under the N+1 minimum
    ([span(), *(query(i) for i in range(2, 7))], False),  # 5 of one query
    ([span(), *(query(i, f"SELECT {i}") for i in range(2, 12))], True),  # 10 different queries
    ([span(), *(query(i, name="c.fetchall") for i in range(2, 12))], True),  # fetch spans: no run
    ([span(), *(query(i, meta={}) for i in range(2, 7))], False),  # type sql alone is a DB span
    ([span(), *(query(i, type="", name="q") for i in range(2, 7))], False),  # db.system alone too
    ([span(), *(query(i, type="http", meta={"span.kind": "client"}) for i in range(2, 7))], False),
    ([span(), *(query(i, type="http", meta={"span.kind": "server"}) for i in range(2, 7))], True),
    ([span(), query(2, duration=499_999_999)], True),
    ([span(), query(2, duration=500_000_000)], False),  # a slow query
    ([span(), *(query(i, parent_id=i) for i in range(2, 12))], True),  # one query under each parent
])
def test_detect_clear_edges(spans: list, clear: bool) -> None:
    assert check_detect(spans, DEFAULT_LIMITS) is clear


@pytest.mark.parametrize(("spans", "taken"), [
    ([span(), query(2), query(3)], True),
    ([], False),  # no endpoint
    ([span(), span(span_id=2, parent_id=1, name="flask.view")], True),
    ([span(), span(span_id=2, parent_id=1, service="api")], False),  # a child of another service: 2 endpoints
    ([span(), span(span_id=2, parent_id=0)], False),  # two roots: two endpoints
    ([span(), query(2, parent_id=5)], False),  # a query cut from its parent (partial flush)
    ([span(), query(2, duration=200)], True),  # children longer than the parent: exclusive clipped at 0
    ([span(start=-15, duration=10)], True),  # the bucket of a negative end is floored, as in Python
    ([span(start=2**63 - 1, duration=1)], False),  # end beyond int64: Python's ints
    ([span(duration=2**63 - 1), query(2, duration=2**63 - 1), query(3, duration=2**63 - 1)], False),
    ([span(), *(span(span_id=i, parent_id=1, type=f"t{i}", duration=1) for i in range(2, 80))], False),
    ([span(), query(2), query(2, duration=30)], True),  # duplicate span ids: the last one is by_id's
    # ... so span 3's parent is the second span 2 (service api, like it): not an endpoint
    ([span(), span(span_id=2, parent_id=1), span(span_id=2, parent_id=3, service="api"),
      span(span_id=3, parent_id=2, service="api")], True),
])
def test_breakdown_edges(spans: list, taken: bool) -> None:
    assert check_breakdown(spans, {}) is taken
