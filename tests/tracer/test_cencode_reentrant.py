"""The C encoder and the C per-chunk processing against Python code run
while they work: a trace type borrowing another class's slot, a service
whose ``__len__`` changes the chunk, a trace id whose ``__index__`` does, a
trace attribute that raises part way (the entry is recorded failed with its
trace as the Python body leaves it, not run again)."""

from __future__ import annotations

from typing import Any

import pytest

from tracer import processor
from tracer.buffer import _Trace
from tracer.span import FinishedSpan

C = processor._cencode
pytestmark = pytest.mark.skipif(C is None, reason="the C encoder is not in use")


def _record(trace_id: Any = 5, service: Any = "s") -> list[Any]:
    return [trace_id, 1, 0, service, "n", "r", None, 1, 2, 0, {"a": "b"}, {}]


def test_a_trace_type_holding_another_classes_slot_is_read_through_getattr() -> None:
    class Borrower:
        __slots__ = ()

    for name in processor._TRACE_FIELDS[:6]:
        setattr(Borrower, name, _Trace.__dict__[name])
    batch: list[Any] = [(Borrower(), _record()) for _ in range(3)]
    settings = (None, None, None, "rid", 1, False, *processor._TAG_KEYS)
    index, not_sent, paused, failure = C.describe_v04(
        batch, 0, settings, (1, 0), processor._TRACE_FIELDS, FinishedSpan
    )
    # getattr raises for a borrowed member, as Python's own read does
    assert (index, not_sent, paused) == (0, 0, False) and batch[0] is None
    assert failure[0] == 1 and isinstance(failure[1], TypeError) and "doesn't apply" in str(failure[1])


def test_a_service_or_trace_id_changing_the_chunk_while_encoded_raises() -> None:
    chunk: list[Any] = []

    class Service(str):
        def __len__(self) -> int:
            chunk[3] = None  # frees this object
            chunk.extend([0] * 100_000)  # moves the list's items
            return 1

    chunk.extend(_record(service=Service("svc")))
    with pytest.raises(RuntimeError, match="changed while it was encoded"):
        C.encode_v04(chunk)

    class TraceId:
        def __index__(self) -> int:
            chunk.clear()
            chunk.extend([None] * 100_000)
            return 5

    chunk[:] = _record(trace_id=TraceId())
    with pytest.raises(RuntimeError, match="changed while it was encoded"):
        C.encode_v04(chunk)
    # the same values without the side effect: encoded as Python encodes them
    class Quiet(str):
        pass

    assert C.encode_v04(_record(service=Quiet("svc"))) == C.encode_v04(_record(service="svc"))


class _Sampler:
    def default_decision(self) -> tuple[int, int]:
        return (1, 0)

    def decide(self, trace: Any, root: Any) -> None:
        raise AssertionError("decided by default")


def _failing_part_way(use_c: bool) -> tuple[Any, ...]:
    class Trace:
        __slots__ = ("root", "priority", "mechanism", "trace_id", "dd_tags", "reads")

        @property
        def origin(self) -> None:  # fails once, then works
            self.reads += 1
            if self.reads == 1:
                raise RuntimeError("transient")
            return None

    trace = Trace()
    trace.reads, trace.priority, trace.mechanism, trace.trace_id, trace.dd_tags = 0, None, None, 5, None
    trace.root = FinishedSpan(*_record())
    batch: list[Any] = [(trace, _record())]
    saved = processor._cencode
    if not use_c:
        processor._cencode = None
    try:
        not_sent, failed = processor.process_chunks(batch, _Sampler(), True)
    finally:
        processor._cencode = saved
    return (
        [(index, spans, type(exc).__name__) for index, spans, exc in failed],
        batch, trace.root, trace.priority, trace.mechanism, trace.reads,
    )


def test_an_entry_failing_part_way_is_recorded_once_as_the_python_body_records_it() -> None:
    c, python = _failing_part_way(True), _failing_part_way(False)
    assert c == python
    assert c[0] == [(0, 1, "RuntimeError")] and c[1] == [None] and c[5] == 1
