"""The C span's fast paths of issue 17's eleventh session (tracer/_cspan*.c):
span ids drawn from ``random``'s generator in place (``_cspan_ids.c``),
``__enter__``/``__exit__`` bound without a builtin method
(``_cspan_with.c``), and the partial-flush length read once per trace.
Each test runs with the C code and with TRACER_PURE_PYTHON (same results;
the checks of the C mechanism itself are C-only)."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from tests.utils import REPO
from tracer import tracer
from tracer.context import set_active
from tracer.span import Span, _cspan

PURE = os.environ.get("TRACER_PURE_PYTHON", "").lower() in ("1", "true", "yes", "on")
c_only = pytest.mark.skipif(_cspan is None, reason="the C span code is not in use")


@pytest.fixture(autouse=True)
def _nothing_left_active() -> Iterator[None]:
    # A test failing with a span active must not make the next one's spans its children.
    yield
    set_active(None)


def _ids(children: int) -> list[int]:
    """A new trace's ids in the order they were drawn: the trace id's low
    half, the root's span id, the children's."""
    ids = []
    with tracer.trace("root") as root:
        for _ in range(children):
            with tracer.trace("c") as span:
                ids.append(span.span_id)
    return [root.trace_id & (2**64 - 1), root.span_id, *ids]


def test_span_ids_are_random_getrandbits_stream_across_seed_setstate_and_refills(test_spans):
    # 700 draws cross two refills of the generator's 624-word state (two
    # words an id); random.setstate mid-way must be followed too.
    random.seed(1234)
    got = _ids(699)
    random.seed(1234)
    assert got == [random.getrandbits(64) or 1 for _ in range(701)]
    state = random.getstate()
    first = _ids(10)
    random.setstate(state)
    assert _ids(10) == first
    random.setstate(state)
    assert first == [random.getrandbits(64) or 1 for _ in range(12)]
    if _cspan is not None and not PURE:
        assert _cspan.ids_in_place()  # the in-place draw is what was checked above


@c_only
def test_ids_are_drawn_in_place_only_from_the_generator_it_was_proven_equal_to(test_spans):
    # Any other getrandbits (a Python function, SystemRandom, a builtin of
    # another kind) is called, as before; configure() decides once.
    from tracer.context import ACTIVE_SPAN
    from tracer.span import _NOT_ACTIVATED

    calls: list[int] = []

    def counting(bits: int) -> int:
        calls.append(bits)
        return 0  # an id of 0 becomes 1

    try:
        for bits, in_place in ((random.Random(5).getrandbits, True), (counting, False),
                               (random.SystemRandom().getrandbits, False), (len, False)):
            _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, bits)
            assert _cspan.ids_in_place() is in_place, bits
        _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, counting)
        assert _ids(2)[1:] == [1, 1, 1] and calls == [64] * 4
        generator = random.Random(99)
        _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, generator.getrandbits)
        got = _ids(3)
        same = random.Random(99)
        assert got == [same.getrandbits(64) for _ in range(5)]
    finally:
        _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, random.getrandbits)
    assert _cspan.ids_in_place()


@c_only
def test_a_generator_released_by_configure_that_starts_a_span_gets_an_id_from_the_new_one(test_spans):
    # Releasing the old generator runs its __del__; a span started there must
    # already draw from the new getrandbits (a Python function here), not
    # from the freed generator's state in place (that wrote into memory).
    from tracer.context import ACTIVE_SPAN
    from tracer.span import _NOT_ACTIVATED

    drawn: list[int] = []

    class Generator(random.Random):
        def __del__(self) -> None:
            with tracer.trace("in __del__") as span:
                drawn.append(span.span_id)

    try:
        _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, Generator(1).getrandbits)
        assert _cspan.ids_in_place()
        _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, lambda bits: 12345)
        assert drawn == [12345] and not _cspan.ids_in_place()
    finally:
        _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, random.getrandbits)


def test_a_forked_child_draws_ids_from_its_reseeded_generator() -> None:
    # random reseeds its generator in a forked child: the child's ids must
    # not repeat the parent's (the in-place draw reads the same state).
    code = (
        "import os, random\n"
        "from tracer import tracer\n"
        "random.seed(3)\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "span = tracer.start_span('x')\n"
        "if pid == 0:\n"
        "    os.write(w, str(span.span_id).encode()); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "child = int(os.read(r, 100))\n"
        "random.seed(3)\n"
        "expected = [random.getrandbits(64) or 1 for _ in range(2)]\n"
        "print(span.span_id == expected[1], child != span.span_id, child not in expected)\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO, "TRACER_AGENT_URL": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"], out


def test_with_binds_enter_and_exit_to_the_span_as_methods_do(test_spans):
    span = tracer.trace("s")
    enter, exit_ = span.__enter__, span.__exit__
    assert enter.__self__ is span and exit_.__self__ is span
    assert (enter.__name__, exit_.__name__) == ("__enter__", "__exit__")
    assert exit_.__qualname__.endswith(".__exit__") and "bound method" in repr(exit_)
    # Equal and hashed as bound methods are: by their span and method.
    other = tracer.trace("other")
    assert span.__exit__ == exit_ and hash(span.__exit__) == hash(exit_) and exit_ in {span.__exit__}
    assert exit_ != enter and exit_ != other.__exit__ and (exit_ != span.__exit__) is False
    other.finish()
    assert enter() is span
    assert type(span).__exit__(span, None, None, None) is None  # unbound, through the class
    assert span.duration_ns is not None
    assert exit_(None, None, None) is None  # once ended: no second record
    assert len(test_spans.spans) == 2  # "other" and "s"
    for call, error in (
        (lambda: enter(1), TypeError),
        (lambda: exit_(None, None), TypeError),
        (lambda: type(span).__enter__(), TypeError),
    ):
        with pytest.raises(error):
            call()
    # An exception leaving the block is recorded and not swallowed.
    with pytest.raises(KeyError), tracer.trace("boom"):
        raise KeyError("k")
    assert test_spans.spans[-1].error == 1
    if _cspan is not None and not PURE:
        with pytest.raises(TypeError):
            type(span).__exit__(1, None, None, None)  # checked as a method descriptor checks
        assert type(enter).__name__ == "SpanBound" and type(exit_).__name__ == "SpanBound"
        assert type(span).__exit__.__qualname__ == "SpanBase.__exit__"


def test_a_bound_exit_keeps_its_span_alive_and_a_cycle_through_it_is_collected(test_spans):
    # `with tracer.trace(...):` without `as`: the bound __exit__ alone holds
    # the span while the block runs; a span reachable only through a cycle
    # with its bound method is still freed by the GC.
    exit_ = tracer.trace("held").__exit__
    gc.collect()
    assert exit_.__self__.name == "held"
    exit_(None, None, None)
    class Marker:
        pass

    with tracer.trace("root"):
        span = tracer.trace("cycle")
        span.meta["self"] = span.__exit__  # span -> meta -> bound -> span
        span.meta["marker"] = marker = Marker()
        span.finish()
    ref = weakref.ref(marker)
    del span, marker
    test_spans.reset()  # (its record holds the meta dict)
    gc.collect()
    assert ref() is None


def _chunk_sizes(test_spans: Any, children: int, change_after: int | None = None, to: int = 0) -> list[int]:
    test_spans.reset()
    with tracer.trace("root"):
        for i in range(children):
            with tracer.trace("c"):
                pass
            if i == change_after:
                tracer._buffer.partial_flush_min_spans = to
    return [len(chunk) for chunk in test_spans.chunks]


def test_the_partial_flush_length_is_read_once_per_trace(test_spans):
    # A trace reads the buffer's length at its first finish that compares it;
    # a change after that applies to new traces (in C; the Python path reads
    # it at every finish), and a replaced trace.buffer is read again.
    buffer = tracer._buffer
    before = buffer.partial_flush_min_spans
    try:
        buffer.partial_flush_min_spans = 4
        assert _chunk_sizes(test_spans, 10) == [4, 4, 3]
        if _cspan is not None and not PURE:
            assert _chunk_sizes(test_spans, 10, change_after=0, to=2) == [4, 4, 3]  # this trace: still 4
        else:
            buffer.partial_flush_min_spans = 2
        assert _chunk_sizes(test_spans, 10) == [2, 2, 2, 2, 2, 1]  # a new trace: 2
        buffer.partial_flush_min_spans = 300
        assert _chunk_sizes(test_spans, 10) == [11]
    finally:
        buffer.partial_flush_min_spans = before


def test_a_spans_monotonic_start_reads_writes_and_deletes_as_a_field(test_spans):
    # A C span keeps its monotonic start as a C value and makes the int only
    # when Python reads span._mono; a value set from Python is what the end
    # reads (an int subclass, a huge int: as before).
    with tracer.trace("root"):
        span = tracer.trace("x")
        mono = span._mono
        assert type(mono) is int and abs(time.perf_counter_ns() - mono) < 10**10
        assert span._mono == mono
        span._mono = mono - 10**12
        span.finish()
        assert 10**12 <= span.duration_ns < 10**12 + 10**10
        span = tracer.trace("y")
        span._mono = type("Ns", (int,), {})(span._mono - 10**12)
        span.finish()
        assert 10**12 <= span.duration_ns < 10**12 + 10**10
        span = tracer.trace("z")
        del span._mono
        with pytest.raises(AttributeError):
            span._mono  # noqa: B018
        with pytest.raises(AttributeError):
            del span._mono
        with pytest.raises(AttributeError):
            span.finish()
        span._mono = time.perf_counter_ns()
        span.finish()
    assert [s.name for s in test_spans.spans] == ["x", "y", "z", "root"]


@c_only
def test_trace_calls_trace_root_only_when_no_span_is_active(test_spans):
    # Tracer.trace (a TraceMethod) starts a new trace with trace_root when
    # nothing is active; with a span active that it cannot continue (here a
    # finished one, as after another thread finished it), trace_root would
    # return None: the fallback runs without that call.
    from tracer._tracer import _RootTrace, _trace_root

    roots: list[str] = []
    fallbacks: list[str] = []

    def counting_root(*args: Any) -> Any:
        roots.append(args[2])
        return _trace_root(*args)

    def fallback(self: Any, name: str, *rest: Any) -> Any:
        fallbacks.append(name)
        return tracer.trace(name, *rest)

    class Traced:
        _buffer = tracer._buffer
        service = "svc"
        trace = _cspan.TraceMethod(fallback, counting_root, _RootTrace)

    traced = Traced()
    with traced.trace("new") as root, traced.trace("child"):
        pass
    assert (roots, fallbacks) == (["new"], [])
    done = tracer.trace("done")
    done.finish()
    set_active(done)  # a finished span, still the active value
    try:
        with traced.trace("after") as span:
            assert span.parent_id == 0  # a new trace: nothing unfinished to continue
    finally:
        set_active(None)
    assert (roots, fallbacks) == (["new"], ["after"])
    assert root.service == "svc"
