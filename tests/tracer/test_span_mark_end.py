"""``Span._mark_end()``: the end time recorded now, used by a later end with
no time given (mysql-connector's unbuffered query span, ended when its rows
are read). Run with the C span and with TRACER_PURE_PYTHON (the test command
runs tests/tracer both ways): both must end the span at the mark."""

from __future__ import annotations

import time
from time import perf_counter_ns

from tracer import tracer


def _bounds(make_span):
    """(span, the longest duration it may have if it ended at the mark)."""
    before = perf_counter_ns()
    span = make_span()
    span._mark_end()
    return span, perf_counter_ns() - before


def test_finish_after_a_mark_ends_the_span_at_the_mark(test_spans):
    with tracer.trace("root") as root:
        child, longest = _bounds(lambda: tracer.trace("child", service="db"))
        start_mono = child._mono
        time.sleep(0.02)
        child.finish()
        assert 0 <= child.duration_ns <= longest < 20_000_000
        assert child._mono == start_mono and type(child._mono + 0) is int, "_mono still reads the start"
        assert tracer.current_span() is root, "finish() restores the previous span as before"
    lone, longest = _bounds(lambda: tracer.trace("lone"))
    time.sleep(0.02)
    lone.finish()
    assert 0 <= lone.duration_ns <= longest
    by_name = {s.name: s for s in test_spans.spans}
    assert by_name["child"].duration_ns == child.duration_ns
    assert by_name["child"].metrics == {"_dd.top_level": 1}
    assert by_name["lone"].duration_ns == lone.duration_ns


def test_a_block_end_uses_the_mark_and_the_latest_mark_wins(test_spans):
    with tracer.trace("root"):
        before = perf_counter_ns()
        with tracer.trace("child") as child:
            child._mark_end()
            time.sleep(0.02)
            child._mark_end()
            longest = perf_counter_ns() - before
            time.sleep(0.02)
        assert 20_000_000 <= child.duration_ns <= longest


def test_an_end_time_given_wins_over_the_mark(test_spans):
    span = tracer.trace("x")
    span._mark_end()
    span.finish(span.start_ns + 123_456_789)
    assert span.duration_ns == 123_456_789
    span._mark_end()  # after the end: nothing changes
    span.finish()
    assert span.duration_ns == 123_456_789
    assert [s.duration_ns for s in test_spans.spans] == [123_456_789]
