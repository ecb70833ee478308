"""The C loop of ``Receiver._count_duplicates`` (``_cdecode.count_duplicates``)
counts what the Python loop counts and leaves the same memory (each trace's
set of span ids, the trace ids first seen), payload after payload, also on
top of what the Python loop wrote; anything unusual it hands back untouched."""

from __future__ import annotations

from array import array
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import ingest
from agent_sim.ingest import Receiver

pytestmark = pytest.mark.skipif(ingest._fast_duplicates is None, reason="agent_sim._cdecode not built")

FAST = ingest._fast_duplicates


def memory() -> Receiver:
    """A Receiver with only the state ``_count_duplicates`` uses."""
    rx = Receiver.__new__(Receiver)
    rx._recent = {}
    rx._recent_seconds = deque()
    return rx


def count(rx: Receiver, traces: list, fast: bool) -> int:
    ingest._fast_duplicates = FAST if fast else None
    try:
        return rx._count_duplicates(traces)
    finally:
        ingest._fast_duplicates = FAST


def state(rx: Receiver) -> tuple[dict, list]:
    return ({tid: sorted(set(array("Q", b))) for tid, b in rx._recent.items()},
            [tid for _second, tids in rx._recent_seconds for tid in tids])


_CHUNK = st.tuples(st.sampled_from([1, 2, 2**64 - 1]),
                   st.lists(st.sampled_from([1, 2, 3, 7, 2**63, 2**64 - 1]), min_size=1, max_size=6))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(st.lists(_CHUNK, max_size=4), max_size=5), python_first=st.booleans())
def test_fast_duplicates_equal_python(payloads: list, python_first: bool) -> None:
    plain, fast = memory(), memory()
    for n, payload in enumerate(payloads):
        traces = [[{"trace_id": tid, "span_id": sid} for sid in ids] for tid, ids in payload]
        expected = count(plain, traces, fast=False)
        assert count(fast, traces, fast=not (python_first and n == 0)) == expected
        assert state(fast) == state(plain)


def spans(*ids: Any, tid: Any = 5) -> list[dict[str, Any]]:
    return [{"trace_id": tid, "span_id": i} for i in ids]


@pytest.mark.parametrize("traces", [
    [spans(1), []],  # an empty chunk (Python raises IndexError)
    [spans(1), spans(-1)],
    [spans(1), spans("2")],
    [spans(1), spans(2**64)],
    [spans(1), [1, 2]],
    [spans(1), spans(2, tid=[5])],  # an unhashable trace id
    [spans(1), [{"trace_id": 5}]],
    (spans(1),),  # not a list
])
def test_unusual_input_is_left_to_python(traces: Any) -> None:
    recent = {9: b"\x01" * 8}
    first: list = []
    assert FAST(traces, recent, first) is NotImplemented
    assert recent == {9: b"\x01" * 8} and first == []


@pytest.mark.parametrize("earlier", [b"\x01" * 7, "x", bytearray(8)])
def test_odd_memory_is_left_to_python(earlier: Any) -> None:
    recent = {5: earlier}
    assert FAST([spans(1, 2)], recent, []) is NotImplemented
    assert recent == {5: earlier}


def test_counts() -> None:
    recent: dict = {}
    first: list = []
    assert FAST([spans(1, 2, 2, 3, 3, 3)], recent, first) == 3  # within a chunk
    assert FAST([spans(3, 4), spans(4, 1)], recent, first) == 3  # 3, then 4 and 1 seen before
    assert FAST([spans(1, tid=6)], recent, first) == 0  # another trace
    assert first == [5, 6]
    assert sorted(array("Q", recent[5])) == [1, 2, 3, 4]
