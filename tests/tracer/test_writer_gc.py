"""What a queued chunk leaves for the cyclic GC (docs/performance.md, Flask,
"The writer's queue without a tuple per chunk"): the writer's queue is flat
(trace, chunk, trace, chunk, ...), so a chunk waiting in it adds no tracked
tuple for a young collection to promote; the writer thread's batch pairs
and its descriptors (processor.process_chunks with defer) are untracked,
part of no cycle, freed by reference counting; every span is still sent."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SpanSink
from tracer import encoding, processor, tracer
from tracer.config import config
from tracer.span import RECORD_LEN

needs_c = pytest.mark.skipif(
    encoding._cencode is None, reason="tracer._cencode is not built or TRACER_PURE_PYTHON is set"
)


@pytest.fixture
def quiet_writer(receiver: Any) -> Iterator[tuple[Any, Any]]:
    """The global tracer's writer, sending to ``receiver``, whose thread only
    wakes when flushed (the queue can be looked at in between)."""
    saved = config.agent_url, config.writer_interval
    config.agent_url, config.writer_interval = receiver.url, 60.0
    tracer._reset_writer()
    try:
        yield tracer.writer, receiver
    finally:
        tracer.flush(5)
        tracer._reset_writer()
        config.agent_url, config.writer_interval = saved


def test_a_queued_chunk_adds_no_tuple_and_every_span_is_sent(quiet_writer: tuple[Any, Any]) -> None:
    writer, receiver = quiet_writer
    with tracer.trace("warm", service="svc"):
        pass  # the writer thread starts on the first write
    assert tracer.flush(5) is True
    for i in range(3):
        with tracer.trace("root", service="svc", resource=f"r{i}"), tracer.trace("child"):
            pass
    queued = list(writer._pending)  # flat: trace, chunk, ...
    assert len(queued) == 6 and [len(chunk) // RECORD_LEN for chunk in queued[1::2]] == [2, 2, 2]
    for chunk in queued[1::2]:
        # The queue list (and this test's copy) refer to it: no pair tuple does.
        assert not [r for r in gc.get_referrers(chunk) if isinstance(r, tuple)]
    del queued
    assert tracer.flush(5) is True
    assert len(receiver.wait_traces(4)) == 4
    stats = writer.stats()
    assert stats["spans_sent"] == 7 and stats["spans_pending"] == 0
    assert not [k for k, v in stats.items() if k.startswith("spans_dropped_") and v]


def _chunks(n: int) -> list[Any]:
    sink = SpanSink()
    previous = tracer._writer
    tracer._writer = sink
    try:
        for _ in range(n):
            with tracer.trace("root", service="web"), tracer.trace("child") as child:
                child.set_tag("a", "x")
    finally:
        tracer._writer = previous
    return [item for pair in sink.raw for item in pair]


@needs_c
def test_batch_pairs_and_descriptors_are_untracked() -> None:
    flat = _chunks(3)
    batch = encoding._cencode.pairs(flat)
    assert batch == list(zip(flat[::2], flat[1::2], strict=True))
    assert not [pair for pair in batch if gc.is_tracked(pair)]
    sampler = tracer.sampler
    not_sent, failed = processor.process_chunks(batch, sampler, True)
    assert (not_sent, failed) == (0, [])
    assert [len(item) for item in batch] == [8, 8, 8]  # descriptors
    assert [item[1] for item in batch] == flat[1::2]
    assert not [item for item in batch if gc.is_tracked(item)]
    payload = encoding.PayloadV04(1 << 20)
    assert payload.put_many(batch) == 3 and payload.spans == 6


@needs_c
def test_pairs_refuses_what_is_not_a_flat_queue() -> None:
    for bad in ([1, 2, 3], (1, 2), None):
        with pytest.raises(TypeError, match="pairs"):
            encoding._cencode.pairs(bad)
    assert encoding._cencode.pairs([]) == []


@needs_c
def test_a_cycle_held_by_an_untracked_descriptor_is_freed_after_the_batch() -> None:
    """An untracked descriptor holds what it refers to alive while the batch
    does (the GC counts its reference as from outside), and no longer."""

    class Node:
        pass

    flat = _chunks(1)
    node = Node()
    node.self = node  # type: ignore[attr-defined]
    ref = weakref.ref(node)
    flat[0].dd_tags = {"k": node}
    batch = encoding._cencode.pairs(flat)
    del flat, node
    processor.process_chunks(batch, tracer.sampler, True)
    assert not gc.is_tracked(batch[0]) and batch[0][7]["k"] is ref()
    gc.collect()
    assert ref() is not None, "in use by the batch"
    del batch
    gc.collect()
    assert ref() is None
