"""The C index rows (``_cdecode.index_rows``, used by ``store.index_rows``)
are exactly the Python rows (``trace_row`` + arrival second + chunk number:
same values, same types), or NotImplemented for what only Python decides."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import store
from agent_sim.store import trace_row

pytestmark = pytest.mark.skipif(store._fast_rows is None, reason="agent_sim._cdecode not built")


def python_rows(traces: list, now: int, first: int) -> list[tuple]:
    return [(*trace_row(spans), now, str(cid)) for cid, spans in enumerate(traces, first)]


_SPAN = st.fixed_dictionaries({
    "trace_id": st.sampled_from([1, 2**63 - 1, 2**63, 2**64 - 1]), "span_id": st.integers(1, 9),
    "parent_id": st.sampled_from([0, 0, 1, 2, 2**64 - 1]), "service": st.sampled_from(["web", "db"]),
    "name": st.sampled_from(["a", "b"]), "resource": st.sampled_from(["GET /", "SELECT ?"]),
    "type": st.just("web"), "start": st.sampled_from([5, 3, 3, -1, 2**63 - 1]),
    "duration": st.sampled_from([0, 7]), "error": st.sampled_from([0, 1]),
    "meta": st.dictionaries(st.sampled_from(["_dd.p.tid", "env"]), st.sampled_from(["6560000000000000", "prod"]),
                            max_size=2),
    "metrics": st.just({}),
})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces=st.lists(st.lists(_SPAN, min_size=1, max_size=5), max_size=4),
       first=st.sampled_from([1, 99, 2**40]))
def test_fast_rows_equal_python(traces: list, first: int) -> None:
    fast = store._fast_rows(traces, 1_764_900_000, first)
    assert fast is not NotImplemented
    assert repr(fast) == repr(python_rows(traces, 1_764_900_000, first))  # repr tells 1 from True and 1.0


def span(**fields: Any) -> dict[str, Any]:
    out = {"trace_id": 7, "span_id": 1, "parent_id": 0, "service": "web", "name": "a", "resource": "GET /",
           "type": "web", "start": 10, "duration": 5, "error": 0, "meta": {}, "metrics": {}}
    out.update(fields)
    return out


@pytest.mark.parametrize("traces", [
    [[span()], []],  # an empty chunk (Python raises)
    [[span(parent_id=1.0), span(parent_id=0.0)]],  # not ints: 0.0 == 0 is Python's to decide
    [[span(parent_id=1, start=1.5), span(parent_id=2)]],  # no root, a float start
    [[span(trace_id=-1)]],
    [[span(trace_id=2**64)]],
    [[span(meta=None)]],
    [[span()], ({"parent_id": 0},)],  # a root without its fields (Python raises KeyError)
    ([span()],),  # a tuple of chunks
])
def test_unusual_chunks_are_left_to_python(traces: Any) -> None:
    assert store._fast_rows(traces, 1, 1) is NotImplemented


def test_rows() -> None:
    rows = store.index_rows([[span(parent_id=3, start=9, meta={"_dd.p.tid": "abc"}), span(span_id=3,
                                                                                           parent_id=4, start=8),
                              span(span_id=4, parent_id=5, start=8, name="b")],
                             [span(trace_id=2**64 - 1, resource="r"), span(span_id=2)]], 100, 41)
    assert rows == [(7, "abc", "web", "GET /", "a", 8, 5, 0, 3, 0, 100, "41"),  # no root: the first earliest
                    (-1, None, "web", "r", "a", 10, 5, 0, 2, 1, 100, "42")]
