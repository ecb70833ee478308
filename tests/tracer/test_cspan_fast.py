"""The C child span's fast paths of issue 17's tenth session (tracer/_cspan*.c):
``Tracer.trace`` as a C method descriptor, span ids from ``random``'s
stream without a 64-bit call, and the record appended at finish. Each test
runs with the C code and with TRACER_PURE_PYTHON (same results; only the
"no Python code" checks are C-only)."""

from __future__ import annotations

import contextvars
import inspect
import os
from typing import Any

import pytest

from tests.utils import python_calls
from tracer import Context, Tracer, tracer
from tracer.context import ACTIVE_SPAN, set_active
from tracer.span import METRICS, RECORD_FIELDS, RECORD_LEN, _cspan, iter_records

PURE = os.environ.get("TRACER_PURE_PYTHON", "").lower() in ("1", "true", "yes", "on")


def test_trace_starts_a_child_without_python_code_and_binds_as_python(test_spans):
    with tracer.trace("root", service="svc") as root:
        child, calls = python_calls(lambda: tracer.trace("c", resource="r"))
        assert (child.parent_id, child.service, child.resource, child.span_type) == (root.span_id, "svc", "r", None)
        assert tracer.current_span() is child
        child.finish()
        if not PURE:
            assert calls == ["<lambda>"], calls  # the lambda only: no Tracer.trace frame
        # Every way of passing the arguments binds as a Python method would.
        bound = tracer.trace
        for span in (
            bound("a", "s2", "res", "web"),
            Tracer.trace(tracer, "a", "s2", span_type="web", resource="res"),
            tracer.trace(span_type="web", name="a", service="s2", resource="res"),
        ):
            assert (span.name, span.service, span.resource, span.span_type) == ("a", "s2", "res", "web")
            span.finish()
        for bad in (
            lambda: tracer.trace(),
            lambda: tracer.trace("a", "b", "c", "d", "e"),
            lambda: tracer.trace("a", nme="b"),
            lambda: tracer.trace("a", name="b"),
        ):
            with pytest.raises(TypeError):
                bad()
        assert tracer.current_span() is root
    # A new trace (no active span): started in C too; only the tracer's
    # service property (Python) runs when no service is given.
    for service, expected in (("s", ["<lambda>"]), (None, ["<lambda>", "service"])):
        other, calls = python_calls(lambda service=service: tracer.trace("other", service))
        other.finish()
        assert other.parent_id == 0 and other.trace_id != root.trace_id
        assert other.service == (service or tracer.service) and tracer.current_span() is None
        if not PURE:  # (the property's first read finds the default service)
            assert [c for c in calls if c not in ("default_service", "service_name")] == expected, calls
    assert sorted(s.name for s in test_spans.spans) == ["a", "a", "a", "c", "other", "other", "root"]


def test_trace_keeps_its_name_doc_and_signature():
    assert "context manager" in (Tracer.trace.__doc__ or "")
    assert list(inspect.signature(tracer.trace).parameters) == ["name", "service", "resource", "span_type"]
    if not PURE:  # (the pure-Python Tracer.trace is Tracer._trace_py)
        assert Tracer.trace.__name__ == "trace" and Tracer.trace.__qualname__ == "Tracer.trace"
        assert type(Tracer.__dict__["trace"]) is _cspan.TraceMethod
        with pytest.raises(TypeError, match="callable"):
            _cspan.TraceMethod(1)


def _expected_record(span: Any) -> tuple:
    return tuple(getattr(span, f) for f in RECORD_FIELDS if f != "metrics")


@pytest.mark.parametrize("partial", [None, 3])
def test_records_are_appended_whole_and_in_order_across_list_growth(test_spans, partial):
    # The C finish stores records straight into the chunk list's spare room
    # and appends (growing the list) when there is none: every record, every
    # size from empty through many resizes, with and without partial flushes.
    buffer = tracer._buffer
    before = buffer.partial_flush_min_spans
    if partial:
        buffer.partial_flush_min_spans = partial
    try:
        for children in (0, 1, 2, 5, 13, 40, 77):
            test_spans.reset()
            done: list[Any] = []
            with tracer.trace("root") as root:
                for i in range(children):
                    with tracer.trace(f"c{i}", "svc" if i % 2 else None, f"r{i}", "web") as span:
                        span.set_tag("i", str(i))
                    done.append(span)
            done.append(root)
            chunks = [chunk for _, chunk in test_spans.raw]
            assert all(len(chunk) % RECORD_LEN == 0 for chunk in chunks)
            got = [tuple(r[:METRICS]) for chunk in chunks for r in iter_records(chunk)]
            assert got == [_expected_record(s) for s in done], children
            if partial and children >= partial:
                assert len(chunks) > 1
    finally:
        buffer.partial_flush_min_spans = before


def test_child_starts_follow_the_traces_clock_bases_when_they_change(test_spans):
    # The C trace keeps its bases as C values for the int objects they came
    # from; a child's start must still follow a base replaced from Python.
    class Int(int):
        pass

    def start_after(step: Any) -> int:
        step()
        span = tracer.trace("c")
        span.finish()
        return span.start_ns

    with tracer.trace("root") as root:
        trace = root._trace
        first = start_after(lambda: None)
        assert start_after(lambda: None) - first < 10**10
        shifts = [
            ("wall_base", 10**12),  # a new int object
            ("mono_base", -(10**12)),  # start = wall_base + (mono - mono_base)
            ("wall_base", Int(3 * 10**12)),  # an int subclass: read, not kept
            ("wall_base", 0),  # the same object set again: no change
        ]
        expected = 0
        for field, shift in shifts:
            before = getattr(trace, field)
            value = type(shift)(before + shift) if shift else before
            got = start_after(lambda field=field, value=value: setattr(trace, field, value)) - first
            expected += shift if field == "wall_base" else -shift
            assert expected <= got < expected + 10**10, (field, shift, got)


@pytest.mark.parametrize("partial", [None, 4])
@pytest.mark.parametrize("root_from", ["trace", "decision_only_context"])
def test_starts_and_finishes_are_counted_per_span(test_spans, root_from, partial):
    # A C trace's counts are taken in C without making their ints (the
    # finish ordinal's only for a flush); a trace built in Python (a b3
    # decision-only context) keeps itertools.count.
    buffer = tracer._buffer
    before = buffer.partial_flush_min_spans
    if partial:
        buffer.partial_flush_min_spans = partial
    try:
        if root_from == "trace":
            root = tracer.trace("root")
        else:
            root = tracer.start_span("root", child_of=Context(0, 0, 1), activate=True)
        trace = root._trace
        for i in range(9):
            with tracer.trace(f"c{i}"):
                pass
            if not partial:  # (a partial flush moves the counts on)
                assert (repr(trace.starts), repr(trace.finishes)) == (f"count({i + 3})", f"count({i + 2})")
            assert trace in buffer._live, i  # the finish ordinals: not complete while the root is open
        late = tracer.trace("open")
        root.finish()
        assert trace in buffer._live
        late.finish()
        assert trace not in buffer._live
    finally:
        set_active(None)  # late.finish() made the (finished) root active again
        buffer.partial_flush_min_spans = before
    sizes = [len(chunk) // RECORD_LEN for _, chunk in test_spans.raw]
    # partial: two chunks of 4, the rest with the root, the late span alone.
    assert sizes == ([4, 4, 2, 1] if partial else [10, 1]), sizes


def test_a_childs_end_restores_the_span_before_it_in_every_case(test_spans):
    # The C child keeps its activation's token and resets the variable at
    # its end (no new token) only where that is what setting _prev does.
    with tracer.trace("root") as root:
        with tracer.trace("a") as a:
            with tracer.trace("b"):
                assert tracer.current_span().parent_id == a.span_id
            assert tracer.current_span() is a
        assert tracer.current_span() is root
        # _prev replaced after the start: the end restores the new one.
        c = tracer.trace("c")
        other = tracer.trace("other")
        other.finish()
        c._prev = other
        c.__exit__(None, None, None)
        assert tracer.current_span() is root  # other is finished: its nearest unfinished ancestor
        assert ACTIVE_SPAN.get() is other
        set_active(root)
        # The block ends in another context: restored there, as a set would.
        d = tracer.trace("d")
        ctx = contextvars.copy_context()
        ctx.run(d.__exit__, None, None, None)
        # (still here: ended elsewhere); the pure-Python end leaves d there,
        # finished, which reads as its parent, root.
        assert ctx[ACTIVE_SPAN] is (d if PURE else root) and ACTIVE_SPAN.get() is d
        assert ctx.run(tracer.current_span) is root
        set_active(root)
        # finish() where the span is not the active one: nothing restored.
        e = tracer.trace("e")
        f = tracer.trace("f")
        e.finish()
        assert tracer.current_span() is f
        f.finish()
        assert ACTIVE_SPAN.get() is (f if PURE else e)  # f restores e, finished before it (pure: left, reads as e's)
        assert tracer.current_span() is root
        set_active(root)
    assert tracer.current_span() is None
