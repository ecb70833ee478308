"""The C grouping of counted spans (``_cdecode.compute_groups``, used by
``stats.compute_groups``) gives exactly the Python version's groups (same
order, same types), or hands the traces back (NotImplemented)."""

from __future__ import annotations

import importlib.util
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import stats
from agent_sim.decode import unpack_v04
from agent_sim.normalize import normalize_payload
from tests.utils import REPO

pytestmark = pytest.mark.skipif(stats._fast_groups is None, reason="agent_sim._cdecode not built")


def both(traces: list, client_top_level: bool) -> tuple[Any, Any]:
    fast = stats._fast_groups(traces, client_top_level, stats.BUCKET_NS)
    plain = stats._compute_groups(traces, client_top_level)
    return fast, plain


_METRIC = st.sampled_from([0, 1, 2, 0.0, 1.0, 0.5, True, False, None])
_SPAN = st.fixed_dictionaries({
    "trace_id": st.just(7), "span_id": st.integers(1, 4), "parent_id": st.sampled_from([0, 1, 2, 3, 9, 2**64 - 1]),
    "service": st.sampled_from(["web", "db", "é"]), "name": st.sampled_from(["a", "b"]),
    "resource": st.sampled_from(["GET /", "SELECT ?"]), "type": st.sampled_from(["web", "sql", ""]),
    "start": st.sampled_from([1_700_000_000 * 10**9, 1_700_000_009 * 10**9 + 999_999_999, 2**63 - 100, 0, -15]),
    "duration": st.sampled_from([0, 1, 10, 10**10, 99]), "error": st.sampled_from([0, 1]),
    "meta": st.dictionaries(st.sampled_from(["span.kind", "http.status_code", "env"]),
                            st.sampled_from(["server", "", "200", "599", "404", " 200", "abc"]), max_size=3),
    "metrics": st.dictionaries(st.sampled_from(["_dd.top_level", "_dd.measured", "m"]), _METRIC, max_size=3),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces=st.lists(st.lists(_SPAN, max_size=6), max_size=4), client_top_level=st.booleans())
def test_fast_groups_equal_python(traces: list, client_top_level: bool) -> None:
    try:
        plain = stats._compute_groups(traces, client_top_level)
    except ValueError:  # int("abc"): the C version must hand these back
        assert stats._fast_groups(traces, client_top_level, stats.BUCKET_NS) is NotImplemented
        return
    fast = stats._fast_groups(traces, client_top_level, stats.BUCKET_NS)
    if fast is not NotImplemented:
        assert repr(fast) == repr(plain)  # repr tells True from 1 and 1.0
    assert repr(stats.compute_groups(traces, client_top_level)) == repr(plain)


def span(**fields: Any) -> dict[str, Any]:
    out = {"trace_id": 7, "span_id": 1, "parent_id": 0, "service": "web", "name": "a", "resource": "GET /",
           "type": "web", "start": 1_700_000_000 * 10**9, "duration": 10, "error": 0, "meta": {},
           "metrics": {"_dd.top_level": 1}}
    out.update(fields)
    return out


@pytest.mark.parametrize("traces", [
    [[span(meta={"http.status_code": " 200"})]],  # int() of an unusual form: Python's
    [[span(meta={"http.status_code": ""})]],
    [[span(meta={"http.status_code": None})]],
    [[span(start=2**63 - 1, duration=1)]], [[span(start=-(2**63), duration=0)]],  # an end or bucket past int64
    [[span(start=1.5)]], [[span(parent_id=None)]], [[{"span_id": 1}]], [(span(),)], ([span()],), [[1]],
])
def test_what_is_handed_back(traces: Any) -> None:
    assert stats._fast_groups(traces, True, stats.BUCKET_NS) is NotImplemented
    try:
        want: Any = repr(stats._compute_groups(traces, True))
    except Exception as exc:  # the same error, from the Python version
        want = type(exc)
    try:
        got: Any = repr(stats.compute_groups(traces, True))
    except Exception as exc:
        got = type(exc)
    assert got == want


def test_benchmark_payload_takes_the_fast_path() -> None:
    spec = importlib.util.spec_from_file_location("bench_ingest", os.path.join(REPO, "benchmarks", "bench_ingest.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    traces = normalize_payload(unpack_v04(bench.make_payload(random.Random(5))))[0]
    for client_top_level in (True, False):
        fast, plain = both(traces, client_top_level)
        assert fast is not NotImplemented and repr(fast) == repr(plain)
        assert sum(g[2] for g in fast) == 900  # 9 of each trace's 10 spans are counted


def test_a_duration_sum_beyond_int64_is_pythons() -> None:
    # each duration fits in int64, their sum in one group does not: the C counts hand back
    traces = [[span(span_id=i, duration=2**62, start=1_700_000_000 * 10**9) for i in range(1, 4)]]
    assert stats._fast_groups(traces, True, stats.BUCKET_NS) is NotImplemented
    (group,) = stats.compute_groups(traces, True)
    assert group[5] == 3 * 2**62


def test_many_groups_in_one_call() -> None:
    # more groups than the C counts start with (16), errors and top-level marks mixed
    traces = [[span(span_id=i, resource=f"GET /{i % 40}", error=int(i % 3 == 0), duration=i,
                    metrics={"_dd.top_level": i % 2, "_dd.measured": 1}) for i in range(1, 200)]]
    fast, plain = both(traces, True)
    assert len(plain) == 40 and repr(fast) == repr(plain)
