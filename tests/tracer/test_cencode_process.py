"""``processor.process_chunks(..., defer=True)`` runs its per-chunk loop body
in C (``_cencode.describe_v04``, tracer/_cencode_process.c) for the usual
entries and in Python for the rest: both give the same descriptors, the same
trace state (priority, mechanism, root released), the same spans not sent
and the same failures, whatever the traces' states."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SpanSink
from tracer import processor, tracer
from tracer.sampler import Sampler
from tracer.span import RECORD_LEN, FinishedSpan

pytestmark = pytest.mark.skipif(processor._cencode is None, reason="tracer._cencode is not built or TRACER_PURE_PYTHON is set")


def _settings(send_dropped: bool) -> tuple[Any, ...]:
    return ("prod", "1.2", {}, "rt", 4242, send_dropped, *processor._TAG_KEYS)


class _Sampler(Sampler):
    """The real sampler, with its batch default chosen by the test (None:
    every undecided trace goes through decide())."""

    def __init__(self, default: Any) -> None:
        super().__init__(_Config())
        self._default = default

    def default_decision(self) -> Any:
        return self._default


class _Config:
    sampling_rules: list[Any] = []
    sample_rate = None
    rate_limit = 100.0
    env = None


# How a trace's state is changed before processing (each as it can be met).
STATES = ["as is", "priority 0", "priority 2", "priority -1", "priority float", "root none", "root unfinished",
          "root absent", "root middle", "root str id", "no priority attr", "empty chunk", "mechanism str", "id twice",
          "namespace"]  # fmt: skip


def _batch(shapes: list[tuple[int, str]], seed: int) -> list[Any]:
    random.seed(seed)  # the same ids each time
    sink = SpanSink()
    previous = tracer._writer
    tracer._writer = sink
    try:
        for children, _ in shapes:
            with tracer.trace("root", service="web"):
                for _ in range(children):
                    with tracer.trace("child") as span:
                        span.set_tag("a", "x")
    finally:
        tracer._writer = previous
    batch: list[Any] = []
    for (trace, chunk), (_, state) in zip(sink.raw, shapes, strict=True):
        if state.startswith("priority"):
            trace.priority = {"0": 0, "2": 2, "-1": -1, "float": 1.0}[state.split()[1]]
            trace.mechanism = 3
        elif state == "root none":
            trace.root = None
        elif state == "root unfinished":
            trace.root = FinishedSpan._make([*chunk[:8], None, *chunk[9:RECORD_LEN]])
        elif state == "root absent":
            trace.root = FinishedSpan._make([chunk[0], 12345, *chunk[2:RECORD_LEN]])
        elif state == "root middle" and len(chunk) >= 3 * RECORD_LEN:
            trace.root = FinishedSpan._make(chunk[RECORD_LEN : 2 * RECORD_LEN])
        elif state == "root str id":
            trace.root = FinishedSpan._make([chunk[0], "x", *chunk[2:RECORD_LEN]])
        elif state == "no priority attr":
            trace = object()  # raises AttributeError in either body
        elif state == "empty chunk":
            chunk = []
        elif state == "id twice":  # the root's id in the first record too: the first match wins
            chunk[1] = chunk[-RECORD_LEN + 1]
        elif state == "namespace":  # not a slots type: read through getattr
            fields = ("root", "priority", "mechanism", "trace_id", "origin", "dd_tags")
            trace = SimpleNamespace(**{name: getattr(trace, name) for name in fields})
        elif state == "mechanism str":
            trace.priority, trace.mechanism = 1, "odd"
        batch.append((trace, chunk))
    return batch


def _run(shapes: list[tuple[int, str]], seed: int, default: Any, send_dropped: bool, in_c: bool) -> Any:
    batch = _batch(shapes, seed)
    traces = [trace for trace, _ in batch]
    chunks = [chunk for _, chunk in batch]
    with pytest.MonkeyPatch.context() as monkeypatch:
        if not in_c:
            monkeypatch.setattr(processor, "_cencode", None)
        not_sent, failed = processor.process_chunks(batch, _Sampler(default), True, _settings(send_dropped))
    state = [
        (getattr(t, "priority", "-"), getattr(t, "mechanism", "-"), getattr(t, "root", "-") is None) for t in traces
    ]
    # Times (and the trace id's high half) differ from run to run: each
    # descriptor's chunk must be the entry's own, its trace id the trace's.
    described = [
        item if item is None or len(item) == 2
        else (item[0], item[1] is chunk, *item[2:5], item[5] == trace.trace_id, *item[6:])
        for item, chunk, trace in zip(batch, chunks, traces, strict=True)
    ]  # fmt: skip
    return described, state, not_sent, [(index, spans, type(exc)) for index, spans, exc in failed]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0, 1, 3]), st.sampled_from(STATES)), min_size=1, max_size=6),
    st.integers(0, 2**32),
    st.sampled_from([None, (1, 0), (0, 1), (1.0, 0)]),
    st.booleans(),
)
def test_the_c_loop_body_does_what_the_python_one_does(
    shapes: list[tuple[int, str]], seed: int, default: Any, send_dropped: bool
) -> None:
    assert _run(shapes, seed, default, send_dropped, True) == _run(shapes, seed, default, send_dropped, False)


def test_the_usual_entries_are_described_in_c() -> None:
    """No Python body for decided or default-decided traces: a sampler whose
    decide() fails the test shows it (with the default None, it is called)."""

    class Refusing(_Sampler):
        def decide(self, trace: Any, root: Any) -> None:
            raise AssertionError("decide() called")

    batch = _batch([(0, "as is"), (3, "as is"), (1, "priority 2")], 7)
    not_sent, failed = processor.process_chunks(batch, Refusing((1, 0)), True, _settings(True))
    assert (not_sent, failed) == (0, [])
    assert [(item[2], item[3], item[4]) for item in batch] == [(1, 0, 0), (1, 3 * RECORD_LEN, 0), (2, 1 * RECORD_LEN, 3)]
    batch = _batch([(0, "as is")], 7)
    _, failed = processor.process_chunks(batch, Refusing(None), True, _settings(True))
    assert [type(exc) for _, _, exc in failed] == [AssertionError]


def test_python_code_run_by_an_attribute_read_cannot_make_c_read_a_changed_chunk() -> None:
    """A trace type whose ``root`` runs Python code that empties the chunk:
    C leaves that entry to the Python body (no read past the list's end),
    which finds it empty and drops it (the Python body alone fails on it:
    either way it is not sent); the next entry is described as usual."""
    (trace, chunk), (other, other_chunk) = _batch([(0, "as is"), (0, "as is")], 3)
    record = FinishedSpan._make(chunk[:RECORD_LEN])

    class Clearing:
        priority, mechanism, trace_id, origin, dd_tags = 1, 0, trace.trace_id, None, {}

        @property
        def root(self) -> Any:
            chunk.clear()
            return record

    batch: list[Any] = [(Clearing(), chunk), (other, other_chunk)]
    not_sent, failed = processor.process_chunks(batch, _Sampler((1, 0)), True, _settings(True))
    assert (not_sent, failed) == (0, [])
    assert batch[0] is None and batch[1][1] is other_chunk and len(batch[1]) == 8


def test_a_long_batch_pauses_every_millisecond_and_ends_as_in_python() -> None:
    """``describe_v04`` returns paused after 1 ms (as ``put_many_v04``), so
    that process_chunks' loop lets an app thread take the GIL; process_chunks
    then goes on from there: the same outcome as the Python body's."""
    shapes = [(0, "as is")] * 30000
    batch = _batch(shapes, 11)
    start = 0
    pauses = 0
    while start < len(batch):
        start, _, paused, _failure = processor._cencode.describe_v04(
            batch, start, _settings(True), (1, 0), processor._TRACE_FIELDS, FinishedSpan
        )
        pauses += paused
        assert paused or start == len(batch)
    assert pauses >= 1, "30,000 traces take more than 1 ms to describe"
    assert _run(shapes, 11, (1, 0), True, True) == _run(shapes, 11, (1, 0), True, False)
