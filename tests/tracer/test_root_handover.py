"""A local root finishing last in a trace with children (every traced
request). With the C span built, ``_cspan`` hands the complete trace to the
sink itself (``_cspan_flush_root_owned`` in tracer/_cspan_trace.c) instead
of calling ``_Trace._flush``, and puts an untracked list in place of the
chunk (a tracked one waited in the writer's queue with the trace, walked and
promoted by young collections). These tests hold it to the state the general
path leaves (a root built in Python, or the pure-Python run of this file),
to its limits (a child still open, a chunk at the partial-flush length, a
foreign trace), to racing threads, and to a reference cycle a user makes
through a tag."""

from __future__ import annotations

import contextvars
import gc
import sys
import threading
import weakref

import pytest

from tests.utils import python_calls, run_interleaved
from tracer import tracer
from tracer.buffer import _taken
from tracer.span import _cspan

tracer_module = sys.modules["tracer._tracer"]


def _run_trace(test_spans, python_root: bool, children: int = 2, open_child: bool = False) -> dict:
    """A root with ``children`` finished children (and one still open): what
    finishing the root left, and how many ``_flush`` calls it took."""

    def run() -> dict:
        saved = tracer_module._trace_root
        if python_root:
            tracer_module._trace_root = None
        try:
            root = tracer.start_span("root", None, "svc", "GET /", "web", activate=True)
        finally:
            tracer_module._trace_root = saved
        for i in range(children):
            tracer.start_span(f"child{i}", child_of=root).finish()
        still_open = tracer.start_span("open", child_of=root) if open_child else None
        trace = root._trace
        _, calls = python_calls(root.finish)
        state = {
            "sent": [[(s.name, s.parent_id == root.span_id or s.span_id == root.span_id) for s in chunk] for chunk in test_spans.chunks],
            "sent_trace": [t is trace for t, _ in test_spans.raw],
            "finished": list(trace.finished),
            "root_done": trace.root_done,
            "counts": (trace.started_count(), _taken(trace.finishes), trace.peeks),
            "live": trace in trace.buffer._live,
            "flush_calls": calls.count("_flush"),
            "new_list_tracked": gc.is_tracked(trace.finished),
            "chunk_tracked": [gc.is_tracked(chunk) for _, chunk in test_spans.raw],
            # The root's record in place of the Span once the trace is complete.
            "root": (type(trace.root).__name__, trace.root.span_id == root.span_id, root in gc.get_referents(trace)),
            "root_tracked": gc.is_tracked(trace.root),
            # The trace itself once its root's record holds no tracked value.
            "trace_tracked": gc.is_tracked(trace),
        }
        test_spans.reset()
        if still_open is not None:
            still_open.finish()
            state["late"] = [[s.name for s in chunk] for chunk in test_spans.chunks]
            state["live_after_late"] = trace in trace.buffer._live
            test_spans.reset()
        return state

    return contextvars.copy_context().run(run)


def _built_apart(*states: dict) -> None:
    """Drop what differs by how the trace was built, not by how it was
    handed over: a C-built trace's first list is untracked, a Python one's not."""
    for state in states:
        state.pop("new_list_tracked")
        state.pop("chunk_tracked")
        state.pop("root_tracked")
        state.pop("trace_tracked")


def _c_only(fast: dict, general: dict) -> None:
    """The fields where the C hand-over differs on purpose: no ``_flush``
    call, untracked lists. Checked, then removed."""
    c_built = _cspan is not None
    assert fast.pop("flush_calls") == (0 if c_built else 1) and general.pop("flush_calls") == 1
    assert fast.pop("new_list_tracked") is not c_built and general.pop("new_list_tracked") is True
    assert fast.pop("chunk_tracked") == [not c_built]
    assert fast.pop("root_tracked") is not c_built and general.pop("root_tracked") is True
    assert fast.pop("trace_tracked") is not c_built and general.pop("trace_tracked") is True
    general.pop("chunk_tracked")  # the first list of a Python-built trace is tracked, a C one's not


@pytest.mark.parametrize("children", [1, 3])
def test_a_root_finishing_last_leaves_what_flush_leaves(test_spans, children):
    fast = _run_trace(test_spans, python_root=False, children=children)
    general = _run_trace(test_spans, python_root=True, children=children)
    _c_only(fast, general)
    assert fast == general
    names = [f"child{i}" for i in range(children)] + ["root"]
    assert fast["sent"] == [[(name, True) for name in names]] and fast["sent_trace"] == [True]
    assert fast["finished"] == [] and fast["live"] is False and fast["root_done"] is True
    assert fast["counts"] == (children + 1, children + 1, 2)
    assert fast["root"] == ("FinishedSpan", True, False), "the trace no longer holds the root Span"


def test_a_root_finishing_before_a_child_takes_the_general_path(test_spans):
    tracer._buffer.count_lost()  # forget earlier tests' unfinished traces
    fast = _run_trace(test_spans, python_root=False, open_child=True)
    general = _run_trace(test_spans, python_root=True, open_child=True)
    assert fast.pop("flush_calls") == general.pop("flush_calls") == 1
    _built_apart(fast, general)
    assert fast == general
    assert fast["sent"] == [[("child0", True), ("child1", True), ("root", True)]]
    assert (fast["live"], fast["late"], fast["live_after_late"]) == (True, [["open"]], False)
    assert fast["root"] == ("Span", True, True), "incomplete: the root Span stays"
    assert tracer._buffer.count_lost() == 0


def test_a_chunk_at_the_partial_flush_length_takes_the_general_path(test_spans):
    # Another thread's partial flush of the trace may be between its slice
    # and its delete (under the lock) only while the list is that long.
    buffer = tracer._buffer
    saved = buffer.partial_flush_min_spans
    buffer.partial_flush_min_spans = 3  # the 2 children and the root
    try:
        fast = _run_trace(test_spans, python_root=False)
        general = _run_trace(test_spans, python_root=True)
    finally:
        buffer.partial_flush_min_spans = saved
    assert fast.pop("flush_calls") == general.pop("flush_calls") == 1
    _built_apart(fast, general)
    assert fast == general and fast["sent"] == [[("child0", True), ("child1", True), ("root", True)]]


def test_a_foreign_trace_is_not_sent(test_spans):
    root = tracer.start_span("root")
    tracer.start_span("child", child_of=root).finish()
    root._trace.foreign = True  # inherited across fork(): the parent sends it
    _, calls = python_calls(root.finish)
    assert test_spans.raw == [] and root._trace.finished == [] and calls.count("_flush") == 1


def test_roots_finishing_while_their_children_finish_in_another_thread_send_every_span_once(test_spans):
    """Thread A starts roots with three children each and finishes the root;
    thread B finishes the children, before or after the root, with a
    partial-flush length of two spans (partial flushes race the root's
    hand-over): every span reaches the sink exactly once, no trace stays
    live."""
    n = 2000
    tracer._buffer.count_lost()
    buffer = tracer._buffer
    saved = buffer.partial_flush_min_spans
    buffer.partial_flush_min_spans = 2
    pending: list = []
    ready = threading.Semaphore(0)
    roots: list = []

    def make_roots() -> None:
        for _ in range(n):
            root = tracer.start_span("root")
            roots.append(root)
            pending.append([tracer.start_span("child", child_of=root) for _ in range(3)])
            ready.release()
            root.finish()

    def finish_children() -> None:
        for i in range(n):
            ready.acquire()
            for child in pending[i]:
                child.finish()

    try:
        errors = run_interleaved(make_roots, finish_children)
    finally:
        buffer.partial_flush_min_spans = saved
    assert errors == []
    spans = test_spans.spans
    assert len({s.span_id for s in spans}) == len(spans) == 4 * n, "every span once"
    assert [root._trace for root in roots if root._trace in buffer._live] == []
    assert buffer.count_lost() == 0


def test_a_cycle_through_a_tag_is_kept_while_the_chunk_waits_and_freed_after(test_spans):
    """A user's object in a tag that refers back to the span makes a cycle
    through the tag dict the untracked chunk holds: nothing is freed while
    the chunk waits for the writer, and ``gc.collect()`` frees it all once
    the chunk is gone."""

    class Holder:
        pass

    def run() -> weakref.ref:
        root = tracer.start_span("root", activate=True)
        tracer.start_span("child", child_of=root).finish()
        holder = Holder()
        holder.span = root
        root.meta["holder"] = holder  # type: ignore[assignment]  # not a str: a user's misuse
        root.finish()
        return weakref.ref(holder)  # the span is not weak-referenceable; it lives as long as the holder

    holder_ref = contextvars.copy_context().run(run)
    gc.collect()
    [(trace, chunk)] = test_spans.raw
    assert holder_ref() is not None and holder_ref().span.name == "root", "the waiting chunk keeps its tags alive"
    assert [s.name for s in test_spans.spans] == ["child", "root"]
    assert any(type(value) is dict and value.get("holder") is holder_ref() for value in chunk)
    assert gc.is_tracked(trace.root), "a record holding a tracked tag dict stays tracked: it is in the cycle"
    assert gc.is_tracked(trace), "so does the trace holding that record"
    del trace, chunk
    test_spans.reset()  # the writer sent the chunk and dropped it
    gc.collect()
    assert holder_ref() is None, "the cycle is collected once the chunk is gone"


@pytest.mark.skipif(_cspan is None, reason="the C hand-over untracks; a Python object cannot be untracked")
@pytest.mark.parametrize("children", [0, 2])
def test_a_handed_over_trace_leaves_nothing_tracked_in_the_writers_queue_item(test_spans, children):
    """A complete trace (children finished first, or a lone root) is handed
    over untracked, so the writer's queue item holds nothing the GC walks
    while it waits (the item's tuple is CPython's: a list in it keeps it
    tracked). A trace whose fields hold a tracked value stays tracked."""

    def run(tracked_tag: bool) -> tuple:
        root = tracer.start_span("root", activate=True)
        for _ in range(children):
            tracer.start_span("child", child_of=root).finish()
        if tracked_tag:
            root._trace.dd_tags = {"_dd.p.x": ["a list: tracked"]}  # not what the tracer stores: a bait
        root.finish()
        [(trace, chunk)] = test_spans.raw
        test_spans.reset()
        return trace, chunk

    trace, chunk = contextvars.copy_context().run(run, False)
    assert (gc.is_tracked(trace), gc.is_tracked(chunk), gc.is_tracked(trace.root)) == (False, False, False)
    assert trace.root_done is True and type(trace.root).__name__ == "FinishedSpan"
    trace, _ = contextvars.copy_context().run(run, True)
    assert gc.is_tracked(trace), "a tracked field keeps the trace tracked: it may be in a cycle"
