"""One-span traces: a local root that finishes with nothing else of its trace
started (a query outside a request, a request without children). With the C
span built, ``_cspan`` hands such a root's record to the sink itself
(``finish_lone_root_owned`` in tracer/_cspan.c) instead of going through
``_Trace._flush``; these tests hold it to the state the general path leaves
(a Python-built root, or the pure-Python run of this file) and to its limits:
a trace with another span started is not a lone root's, a foreign one is
dropped, and racing threads never send a span twice."""

from __future__ import annotations

import contextvars
import copy
import gc
import sys
import threading

import pytest

from tests.utils import run_interleaved
from tracer import tracer
from tracer.buffer import TRACE_FIELDS, _taken
from tracer.span import _cspan

tracer_module = sys.modules["tracer._tracer"]


def _start(how: str):
    if how == "trace":
        return tracer.trace("q", "db", "SELECT 1", "sql")
    return tracer.start_span("q", None, "db", "SELECT 1", "sql", activate=how == "start_span_active")


def _after_finish(span, test_spans) -> dict:
    """What finishing ``span`` left: the trace's state and what the sink got."""
    trace = span._trace
    [(sent_trace, chunk)] = test_spans.raw
    test_spans.reset()
    record = list(chunk)
    assert record[:3] == [trace.trace_id, span.span_id, 0]
    assert record[7:9] == [span.start_ns, span.duration_ns]
    return {
        "sent": (sent_trace is trace, record[3:7], record[9:]),
        "finished": trace.finished,
        "root_done": trace.root_done,
        "counts": (trace.started_count(), _taken(trace.finishes), trace.peeks),
        "live": trace in trace.buffer._live,
        "root": trace.root is span,
        "active": tracer.current_span(),
    }


@pytest.mark.parametrize("how", ["trace", "start_span", "start_span_active"])
def test_a_lone_root_leaves_what_the_general_path_leaves(test_spans, how):
    def finish(span) -> dict:
        span.finish()
        return _after_finish(span, test_spans)

    fast = finish(_start(how))
    saved, tracer_module._trace_root = tracer_module._trace_root, None  # a root built in Python
    try:
        general = finish(tracer._trace_py("q", "db", "SELECT 1", "sql") if how == "trace" else _start(how))
    finally:
        tracer_module._trace_root = saved
    assert fast == general
    assert fast["sent"] == (True, ["db", "q", "SELECT 1", "sql"], [0, {}, {"_dd.top_level": 1}])
    assert fast["counts"] == (1, 1, 2) and fast["live"] is False and fast["finished"] == []


def test_a_with_block_root_is_sent_once_and_freed(test_spans):
    with tracer.trace("q", "db") as span:
        pass
    with tracer.trace("q", "db") as other:
        span.finish()  # a second finish sends nothing
    assert [[s.name for s in chunk] for chunk in test_spans.chunks] == [["q"], ["q"]]
    trace = span._trace
    del span, other
    test_spans.reset()
    trace.root = None  # as the writer's processing does once the root is sent
    gc.collect()
    assert sys.getrefcount(trace) == 2, "nothing but this test holds the trace (not the buffer's live set)"
    if _cspan is not None:
        refs = sys.getrefcount(_cspan)
        for _ in range(1000):
            with tracer.trace("q"):
                pass
        test_spans.reset()
        gc.collect()  # the trace <-> root cycles (the writer breaks them)
        assert sys.getrefcount(_cspan) == refs, "a root holds the module only while it lives"


def test_a_root_with_a_child_open_is_not_a_lone_root(test_spans):
    tracer._buffer.count_lost()  # forget earlier tests' unfinished traces (they count as lost too)

    def run() -> None:
        root = tracer.start_span("root", activate=True)
        child = tracer.trace("open child")
        root.finish()
        trace = root._trace
        assert (trace.root_done, trace in trace.buffer._live) == (True, True), "the child keeps the trace live"
        assert [[s.name for s in chunk] for chunk in test_spans.chunks] == [["root"]]
        child.finish()
        assert trace not in trace.buffer._live
        assert (trace.started_count(), _taken(trace.finishes)) == (2, 2)
        assert tracer._buffer.count_lost() == 0

    contextvars.copy_context().run(run)
    assert [[s.name for s in chunk] for chunk in test_spans.chunks] == [["root"], ["open child"]]


def test_a_foreign_lone_root_is_not_sent(test_spans):
    # Inherited across fork(): the parent process sends it.
    span = tracer.start_span("q")
    span._trace.foreign = True
    span.finish()
    assert test_spans.raw == [] and span._trace.finished == []


def test_roots_raced_by_children_from_another_thread_send_every_span_once(test_spans):
    """Thread A finishes one-span roots while thread B starts and finishes a
    child of each, before or after its root finished: every span reaches the
    sink exactly once, and no trace stays live. (The pure-Python finish once
    left ~5 in 3,000 live until shutdown: a child took the last ordinal before
    the root set root_done, so neither removed the trace; tracer.buffer's
    _flush now lets the root count every ordinal taken.)"""
    n = 3000
    tracer._buffer.count_lost()  # forget earlier tests' unfinished traces (they count as lost too)
    roots: list = []
    ready = threading.Semaphore(0)

    def make_roots() -> None:
        for _ in range(n):
            root = tracer.start_span("root")
            roots.append(root)
            ready.release()
            root.finish()

    def add_children() -> None:
        for i in range(n):
            ready.acquire()
            tracer.start_span("child", child_of=roots[i]).finish()

    errors = run_interleaved(make_roots, add_children)
    assert errors == []
    spans = test_spans.spans
    assert len(spans) == 2 * n
    assert len({s.span_id for s in spans}) == 2 * n, "no span sent twice"
    assert sorted(s.name for s in spans) == ["child"] * n + ["root"] * n
    live = [root._trace for root in roots if root._trace in tracer._buffer._live]
    assert tracer._buffer.count_lost() == 0
    assert live == []


# -- the trace object: built in C by trace_root where the C span is built ----


def _trace_state(trace) -> dict:
    """Every field of a trace, the counters by their position."""
    state = {}
    for field in TRACE_FIELDS:
        value = getattr(trace, field)
        if field in ("starts", "finishes"):
            value = repr(value)
        state[field] = copy.copy(value) if type(value) in (list, dict) else value  # as they are now
    state["live"] = trace in trace.buffer._live
    state["wall_offset"] = trace.wall_offset  # a slot in Python, derived from the bases in C
    return state


def test_the_root_trace_class_is_trace_with_its_fields_in_c():
    cls, trace_cls = tracer_module._RootTrace, tracer_module._Trace
    functions = {k for k, v in vars(trace_cls).items() if callable(v)}
    assert functions and all(getattr(cls, k) is getattr(trace_cls, k) for k in functions)
    if _cspan is None:
        assert cls is trace_cls
        return
    members = [k for k, v in vars(_cspan.TraceBase).items() if type(v).__name__ == "member_descriptor"]
    assert members == list(TRACE_FIELDS), "TraceBase (tracer/_cspan.c) must hold exactly _Trace's fields"
    assert cls.__slots__ == () and cls.__mro__[1] is _cspan.TraceBase


def test_a_trace_built_in_c_equals_one_built_by_trace_init(test_spans):
    buffer = tracer._buffer
    with tracer.trace("q") as span:
        trace = span._trace
        python = tracer_module._Trace(buffer, trace.trace_id, trace.wall_base, trace.mono_base)
        called = tracer_module._RootTrace(buffer, trace.trace_id, trace.wall_base, trace.mono_base)
        try:
            built, expected, by_call = _trace_state(trace), _trace_state(python), _trace_state(called)
        finally:
            buffer._live.discard(python)
            buffer._live.discard(called)
    assert built.pop("root") is span and expected.pop("root") is None and by_call.pop("root") is None
    # trace_root counted the root's start; the fresh ones have started nothing.
    assert (built.pop("starts"), expected.pop("starts")) == ("count(2)", "count(1)")
    by_call.pop("starts")
    assert built == expected == by_call


def test_a_c_traces_counts_and_first_chunk_are_not_walked_by_the_gc(test_spans):
    """While a finished trace waits for the writer, the cyclic GC walks what
    it holds. A C-built trace's two counts (``_cspan.Counter``) are not
    tracked at all and count as ``itertools.count(1)`` does for what
    tracer.buffer uses (next(), repr); its first chunk list and a lone
    root's chunk are untracked."""
    span = tracer.start_span("q")
    trace = span._trace
    python = tracer_module._Trace(trace.buffer, 1, 0, 0)
    trace.buffer._live.discard(python)
    next(python.starts)  # as the root's start
    counts, expected = [trace.starts, trace.finishes], [python.starts, python.finishes]
    assert [repr(c) for c in counts] == [repr(c) for c in expected] == ["count(2)", "count(1)"]
    assert [[next(c) for c in counts] for _ in range(3)] == [[next(c) for c in expected] for _ in range(3)]
    assert [_taken(c) for c in counts] == [_taken(c) for c in expected] == [4, 3]
    first = trace.finished
    tracer.start_span("child", child_of=span).finish()
    span.finish()
    lone = tracer.start_span("lone")
    lone.finish()
    (_, chunk), (_, lone_chunk) = test_spans.raw
    assert chunk is first and [s.name for s in test_spans.spans] == ["child", "q", "lone"]
    if _cspan is None:
        assert type(trace.starts) is type(python.starts)
        return
    assert all(type(c) is _cspan.Counter and not gc.is_tracked(c) for c in counts + [lone._trace.starts])
    assert not gc.is_tracked(chunk) and not gc.is_tracked(lone_chunk)
    with pytest.raises(TypeError):
        type(trace.starts)()
