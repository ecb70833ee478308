"""The pure-Python v0.4 encoder packs a chunk in one call (keys interleaved
with the flat records' values, each span's first key, trace id and second
key as stand-ins, then one split on the stand-ins' bytes and one join with
the span's map header and those real bytes): differential against the
span-map encoder it replaced (``_encode``) and against msgpack's packing of
the wire maps, with the values that could fool the placement (the
stand-ins' bytes inside a value or straddling a span's end, a ``trace_id``
tag, trace ids whose bytes hold the searched bytes' first byte). These
chunks are too small to fold fields (test_encoding_v04_fold.py): the bytes
are the span maps' own."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.tracer.test_encoding import spans_to_v04
from tracer.encoding import _V04_LAYOUTS, _V04_MARK, _V04_SEARCHED, PayloadV04
from tracer.span import RECORD_LEN, records

# 0xa8 is the first byte of the packed key "trace_id" (a 8-byte fixstr);
# U+00A8 encodes as C2 A8, so "¨trace_id" holds the key's bytes.
BAIT = ["trace_id", "¨trace_id", "x¨trace_id\u00a8", "\u00a8", "span_id"]
text = st.one_of(st.sampled_from(["", "web", "child", "é", *BAIT]), st.text(max_size=12))
number = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0xA8, 0xA874726163655F69, 0xA8 << 56, 2**64 - 1]),
    st.floats(allow_nan=False),
    st.just(_V04_MARK),
)
# Trace ids whose packed low 64 bits hold 0xa8 (the search then uses the key alone).
trace_ids = st.one_of(
    st.integers(min_value=1, max_value=2**128 - 1),
    st.sampled_from([0xA8, 0xA8A8, (7 << 64) | 0xA8, 0x00A8_0000_0000_00A8, 0xA874726163655F69]),
)


@st.composite
def chunks(draw: Any) -> list[Any]:
    trace_id = draw(trace_ids)
    out: list[Any] = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        out += (
            trace_id,
            draw(st.one_of(number.filter(lambda v: type(v) is int and v >= 0), st.just(0xA8))),
            draw(st.integers(min_value=0, max_value=2**64 - 1)),
            draw(st.one_of(st.sampled_from([None, "", 0]), text)),
            draw(text),
            draw(text),
            draw(st.one_of(st.sampled_from([None, "", 0]), text)),
            draw(st.integers(min_value=0, max_value=2**63 - 1)),
            draw(st.integers(min_value=0, max_value=2**40)),
            draw(st.sampled_from([0, 1])),
            draw(st.dictionaries(text, text, max_size=4)),
            draw(st.dictionaries(text, number, max_size=3)),
        )
    return out


def flat_encode(payload: PayloadV04, chunk: list[Any]) -> bytes:
    """The one-call packing whatever the chunk's size (``_encode`` packs
    chunks of fewer than ``_V04_FLAT_MIN_SPANS`` spans as span maps)."""
    return payload._encode_flat(chunk, len(chunk) // RECORD_LEN)


def wire_maps(chunk: list[Any]) -> bytes:
    """What DESIGN says a v0.4 trace is: msgpack's packing of the span maps."""
    return msgpack.packb(spans_to_v04([records(chunk)])[0])  # type: ignore[no-any-return]


@settings(max_examples=400, deadline=None)
@given(chunks())
@example([0xA8, 0xA8, 0, "trace_id", "trace_id", "trace_id", None, 1, 1, 0, {"trace_id": "¨trace_id"}, {"trace_id": 0xA8}])
@example([(3 << 64) | 0xA8, 1, 0, "s", "n", "r", "t", 1, 1, 0, {}, {}] * 3)
def test_one_call_packing_writes_the_span_maps_bytes(chunk: list[Any]) -> None:
    payload = PayloadV04()
    fast = flat_encode(payload, chunk)
    assert fast == payload._encode(chunk, 1 << 62) == payload._encode(chunk) == wire_maps(chunk)


@pytest.mark.parametrize("spans", [1, 2, 0x10000 // 24, 0x10000 // 24 + 1, 3000])
@pytest.mark.parametrize("fold", [False, True])
def test_every_array_header_size(spans: int, fold: bool) -> None:
    # The interleaved list's header (array16 up to 2,730 spans, array32 past
    # it, less with folded fields) is replaced by the span count's (fixarray,
    # array16). Fields that differ from span to span fold nothing; the same
    # in all (and meta) fold from 32 spans on (test_encoding_v04_fold.py).
    tid = (9 << 64) | 0xDEADBEEF
    chunk: list[Any] = []
    for i in range(spans):
        if fold:
            service, name, resource, span_type, error = "svc", "op", "res", None, 0
        else:
            service, name, resource, span_type, error = f"svc{i}", f"op{i}", f"res{i}", f"t{i % 2}", i % 2
        meta = {"k": "v"} if fold else {"k": f"v{i}"}
        chunk += (tid, i + 1, 0 if fold else i, service, name, resource, span_type, 10 + i, 5, error, meta, {"m": i})
    fast = flat_encode(PayloadV04(), chunk)
    wire = wire_maps(chunk)
    assert fast[:3] == wire[:3]
    if fold and spans >= 32:  # the same bytes in another order
        assert fast != wire and len(fast) == len(wire)
        assert msgpack.unpackb(fast) == msgpack.unpackb(wire)
    else:
        assert fast == wire


class Spy(PayloadV04):
    """Records each fall back to the span maps (``_encode`` with no flat packing)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def _encode(self, chunk: list[Any], flat_from: int = 3) -> bytes:
        self.calls.append(flat_from)
        return super()._encode(chunk, flat_from)


def test_the_searched_bytes_inside_a_value_fall_back_to_the_span_maps() -> None:
    # The stand-ins' bytes (None, the mark, False) inside the values: more
    # pieces than spans, so the encoder packs span maps instead (the same
    # bytes, checked above); a bin value holding them, and a list of the
    # three stand-ins themselves.
    span = [5, 1, 0, "s", "n", "r", None, 1, 1, 0, {}, {}]
    for meta, metrics in (({"k": _V04_SEARCHED}, {}), ({}, {"k": [None, _V04_MARK, False]})):
        spy = Spy()
        chunk = span[:10] + [meta, metrics] + span * 3
        assert flat_encode(spy, chunk) == wire_maps(chunk)
        assert spy.calls == [1 << 62]
    # The real keys and trace id are no longer searched for: in a value, no fall back.
    spy = Spy()
    chunk = span[:10] + [{"trace_id": "5"}, {"trace_id": 5, "span_id": 5}] + span * 3
    assert flat_encode(spy, chunk) == wire_maps(chunk)
    assert spy.calls == []


def test_the_stand_ins_pack_to_searched_bytes_that_cannot_overlap() -> None:
    # Their first byte is nowhere else in them: a stray match can never
    # swallow the start of a span's own (the count of pieces would then be
    # right and the bytes wrong), whatever precedes it.
    assert msgpack.packb(_V04_LAYOUTS[0].keyed[:3])[1:] == _V04_SEARCHED
    assert _V04_SEARCHED.find(_V04_SEARCHED[:1], 1) == -1
    # A bin value ending in all but the last byte of them, just before the
    # next span's: the bytes stay right (and no fall back is needed).
    for cut in range(1, len(_V04_SEARCHED)):
        spy = Spy()
        tail = _V04_SEARCHED[:cut]
        chunk = [7, 1, 0, "s", "n", "r", None, 1, 1, 0, {}, {"k": tail}] + [7, 2, 1, "s", "n", "r", None, 1, 1, 0, {}, {}] * 2
        assert flat_encode(spy, chunk) == wire_maps(chunk)
        assert spy.calls == []


def test_a_match_overlapping_a_spans_start_is_not_taken_for_it() -> None:
    # Trace id 0xa8 packs as CC A8: the key then the id end with the key's
    # first byte. A bin value ending in the key and CC, just before the next
    # span, would match there and swallow that span's own start (the count
    # still right) if the id were searched with the key: the key alone is.
    tid = 0xA8
    chunk = [tid, 1, 0, "s", "n", "r", None, 1, 1, 0, {}, {"k": b"\xa8trace_id\xcc"}]
    chunk += [tid, 2, 1, "s", "n", "r", None, 1, 1, 0, {}, {}]
    assert flat_encode(PayloadV04(), chunk) == wire_maps(chunk)


def test_a_chunk_of_a_partial_record_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number"):
        flat_encode(PayloadV04(), [1, 2, 3] * 13)


def test_chunks_of_three_spans_or_more_take_the_one_call_packing() -> None:
    # Below _V04_FLAT_MIN_SPANS the span maps cost less per chunk; from it on
    # the one-call packing must not be left unused by mistake.
    taken = []

    class Spy(PayloadV04):
        def _encode_flat(self, chunk: list[Any], n: int) -> bytes:
            taken.append(n)
            return super()._encode_flat(chunk, n)

    span = [7, 1, 0, "s", "n", "r", None, 1, 1, 0, {"k": "v"}, {"m": 1}]
    payload = Spy()
    for spans in (1, 2, 3, 101):
        # (101 spans of one service, type and error: those fold, the maps' keys in another order)
        assert msgpack.unpackb(payload._encode(span * spans)) == msgpack.unpackb(wire_maps(span * spans))
    assert taken == [3, 101]
