"""The C loop of ``stats.Sketch.add_many`` (``_cdecode.sketch_add``) leaves a
sketch exactly as the Python loop does (bins in the same order with the same
float counts, zero count, max as the same type), and hands back, with nothing
changed, what it does not take."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import stats
from agent_sim.stats import Sketch

pytestmark = pytest.mark.skipif(stats._fast_sketch is None, reason="agent_sim._cdecode not built")


def state(s: Sketch) -> str:
    return repr((s.zero, s.count, s.sum, s.max, list(s.bins.items())))  # repr tells 1 from 1.0


def both(start: list, batches: list[list[Any]], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    out = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(stats, "_fast_sketch", None)
            s = Sketch.from_wire(start)
            for values in batches:
                s.add_many(values)
            out.append(state(s))
    return out[0], out[1]


# durations around the bin edges (powers of gamma), zero and negative ones
# (the zero bin), int64's ends, and above 2**53 (not exact as doubles)
_edges = [0, -1, -(2**63), 1, 2, 3, 1000, 1001, 2**53, 2**53 + 1, 2**62 + 12345, 2**63 - 1]
_edges += [math.ceil(1.02 ** k) for k in range(0, 2000, 97)] + [math.floor(1.02 ** k) for k in range(0, 2000, 89)]
_duration = st.one_of(st.sampled_from(_edges), st.integers(-10, 10**12), st.integers(-(2**63), 2**63 - 1))
_start = st.sampled_from([
    [0.0, 0.0, 0.0, 0.0, []],
    [1.5, 3.0, 12.0, 7, [[100, 2.0], [5, 1]]],  # an int count and an int max, as merged client sketches may have
    [0.0, 1.0, 2**63 - 1, float(2**63), [[1510, 1.0]]],  # a float max above every int64
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(start=_start, batches=st.lists(st.lists(_duration, max_size=40), max_size=4))
def test_fast_loop_equals_python(start: list, batches: list, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, plain = both(start, batches, monkeypatch)
    assert fast == plain


@pytest.mark.parametrize("values", [
    [1, 2.5], [True, 3], [2**63], [-(2**63) - 1], [5, 2**64], (1, 2),  # a float, a bool, past int64, a tuple
])
def test_what_is_handed_back_unchanged(values: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Sketch.from_wire([0.0, 1.0, 4.0, 4, [[48, 1.0]]])
    before = state(s)
    assert stats._fast_sketch(s.bins, values, stats._MULT, stats._OFFSET, stats._MIN_POSITIVE, s.zero,
                              s.max) is NotImplemented
    assert state(s) == before
    fast, plain = both([0.0, 1.0, 4.0, 4, [[48, 1.0]]], [values], monkeypatch)
    assert fast == plain


def test_unusual_arguments_are_handed_back() -> None:
    bins: dict = {}
    for args in [([], [1], 1.0, 0, 1e-300, 0.0, 0.0), (bins, [1], 1, 0, 1e-300, 0.0, 0.0),
                 (bins, [1], 1.0, 2**40, 1e-300, 0.0, 0.0), (bins, [1], 1.0, 0, 1.0, 0.0, 0.0),
                 (bins, [1], 1.0, 0, 0.0, 0.0, 0.0), (bins, [1], 1.0, 0, 1e-300, 0, 0.0)]:
        assert stats._fast_sketch(*args) is NotImplemented
    assert bins == {}


def test_int_durations_take_the_c_loop() -> None:
    bins: dict = {}
    assert stats._fast_sketch(bins, [0, 1, 2, 2], stats._MULT, stats._OFFSET, stats._MIN_POSITIVE, 0.0, 0.0) == (1.0, 2)
    assert bins == {0: 1.0, 35: 2.0}


def test_inputs_that_could_run_python_code_or_overflow_a_bin_are_handed_back() -> None:
    # A max whose comparison runs Python code (it could change the list
    # being read), and a multiplier that would put a bin beyond a C long.
    values = [5, 7, 9]

    class Top(float):
        def __lt__(self, other: object) -> bool:
            values.clear()
            return False

    bins: dict = {}
    args = (stats._MULT, stats._OFFSET, stats._MIN_POSITIVE, 0.0)
    assert stats._fast_sketch(bins, values, *args, Top(1.0)) is NotImplemented
    assert stats._fast_sketch(bins, values, math.inf, *args[1:], 1.0) is NotImplemented
    assert stats._fast_sketch(bins, values, math.nan, *args[1:], 1.0) is NotImplemented
    assert bins == {} and values == [5, 7, 9]
