"""The pure-Python v0.4 encoder reuses its interleaved keys-and-values list
for the next chunk of the same size (``PayloadV04._flat``): differential
against msgpack's packing of the wire maps, chunk after chunk through one
payload, so that nothing of a previous chunk (its trace id, a service or
type that was None, its tag dicts) reaches the next one's bytes."""

from __future__ import annotations

import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tracer.test_encoding_v04_flat import chunks, flat_encode, wire_maps
from tracer.encoding import PayloadV04


@settings(max_examples=200, deadline=None)
@given(st.lists(chunks(), min_size=2, max_size=6))
def test_one_payload_encodes_each_chunk_as_a_fresh_one_would(batch: list[list[Any]]) -> None:
    payload = PayloadV04()
    for chunk in batch:
        assert flat_encode(payload, chunk) == wire_maps(chunk)


def chunk_of(trace_id: int, service: str | None, span_type: str | None, tag: str) -> list[Any]:
    out: list[Any] = []
    for i in range(3):
        out += (trace_id, i + 1, 0, service, "op", "res", span_type, 10 + i, 5, 0, {"k": tag}, {"m": i})
    return out


def test_the_list_is_reused_and_rewritten_whole() -> None:
    payload = PayloadV04()
    first = chunk_of((1 << 64) | 7, None, None, "a")
    second = chunk_of((2 << 64) | 9, "svc", "web", "b")
    assert flat_encode(payload, first) == wire_maps(first)
    kept = payload._flat
    assert flat_encode(payload, second) == wire_maps(second)
    assert payload._flat is kept  # the same size: the same list
    assert flat_encode(payload, first) == wire_maps(first)  # None again after a value


def test_finish_lets_go_of_the_last_chunks_values() -> None:
    payload = PayloadV04()
    chunk = chunk_of(5, "svc", None, "a")
    meta = chunk[10]
    assert flat_encode(payload, chunk) == wire_maps(chunk)  # (put() may take the C encoder)
    del chunk
    held = sys.getrefcount(meta)
    payload.finish()
    assert sys.getrefcount(meta) == held - 1  # only the reused list held it
