"""PayloadV04 with the C encoder builds its body in one buffer
(tracer/_cencode_payload.c): chunks from ``put_many`` (encoded onto the
buffer's end) and from ``put`` (appended) give exactly the pure-Python
payload's bytes, a chunk that fails or does not fit leaves nothing behind,
and a finished payload or one being encoded into refuses more."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tracer.test_cencode import chunks
from tracer import encoding
from tracer.encoding import PayloadV04

pytestmark = pytest.mark.skipif(encoding._cencode is None, reason="tracer._cencode is not built or TRACER_PURE_PYTHON is set")


def _chunk(span_id: int, service: Any = "svc", spans: int = 1) -> list[Any]:
    return [(1 << 64) | 5, span_id, 0, service, "op", "res", None, 10, 5, 0, {"a": "b"}, {"m": 1}] * spans


def _build(batch: list[Any], limit: int = 1 << 40) -> list[tuple[int, bytes, int, int, int]]:
    """The writer's loop: put_many, then put() for the entry it stopped at."""
    out = []
    payload = PayloadV04(limit)
    index = 0
    while index < len(batch):
        index = payload.put_many(batch, index)
        if index == len(batch):
            break
        try:
            if not payload.put(batch[index][1]):
                out.append((index, payload.finish(), payload.size, payload.traces, payload.spans))
                payload = PayloadV04(limit)
                payload.put(batch[index][1])
        except encoding.TraceTooBig:
            pass
        index += 1
    out.append((index, payload.finish(), payload.size, payload.traces, payload.spans))
    return out


def _both(batch: list[Any], monkeypatch: pytest.MonkeyPatch, limit: int = 1 << 40) -> Any:
    in_c = _build(batch, limit)
    with monkeypatch.context() as m:
        m.setattr(encoding, "_cencode", None)
        assert PayloadV04()._out is None
        python = _build(batch, limit)
    return in_c, python


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(st.none(), chunks(), chunks(odd=True)), min_size=1, max_size=6),
       st.sampled_from([1 << 40, 400, 2000]))
def test_same_payloads_as_the_python_encoder(batch: list[Any], limit: int) -> None:
    # odd chunks stop put_many (they need the sanitizing path, in put());
    # small limits cut payloads and make chunks too big.
    entries = [None if chunk is None else (None, chunk) for chunk in batch]
    with pytest.MonkeyPatch.context() as monkeypatch:
        in_c, python = _both(entries, monkeypatch, limit)
    assert in_c == python


@pytest.mark.parametrize("traces", [0, 1, 15, 16, 2**16 - 1, 2**16])
def test_every_array_header_size(traces: int, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [(None, _chunk(i + 1)) for i in range(traces)]
    in_c, python = _both(batch, monkeypatch)
    assert in_c == python
    assert len(msgpack.unpackb(in_c[-1][1])) == traces


def test_a_chunk_that_fails_or_does_not_fit_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The third span of the second chunk does not encode: the loop stops
    # there with its first two spans already written, which must go.
    failing = _chunk(3, spans=2) + _chunk(4, service=object())
    batch: list[Any] = [(None, _chunk(1)), (None, failing), (None, _chunk(5))]
    payload = PayloadV04()
    assert payload.put_many(batch) == 1
    assert payload.put_many(batch, 2) == 3
    assert payload.finish() == encoding.encode_v04([_chunk(1), _chunk(5)])
    one = len(encoding._cencode.encode_v04(_chunk(1)))
    payload = PayloadV04(5 + one + one // 2)  # room for one chunk and a half
    assert payload.put_many([(None, _chunk(1)), (None, _chunk(2)), (None, _chunk(3))]) == 1
    assert payload.size == 5 + one
    assert payload.finish() == encoding.encode_v04([_chunk(1)])


class _Finishing(str):
    """A service name whose truth test finishes the payload it is packed into."""

    payload: PayloadV04

    def __len__(self) -> int:
        self.payload.finish()
        return 3


def test_a_payload_being_encoded_into_or_finished_refuses_more() -> None:
    payload = PayloadV04()
    service = _Finishing("svc")
    service.payload = payload
    batch = [(None, _chunk(1)), (None, _chunk(2, service=service)), (None, _chunk(3))]
    # finish() from inside the loop raises (RuntimeError): put_many stops at that entry.
    assert payload.put_many(batch) == 1
    assert payload.finish() == encoding.encode_v04([_chunk(1)])
    with pytest.raises(RuntimeError, match="finished"):
        payload.finish()
    with pytest.raises(RuntimeError, match="finished"):
        payload.put(_chunk(4))
    for bad in (None, object(), b"x"):
        with pytest.raises(TypeError):
            encoding._cencode.payload_finish(bad, 0)
    out = encoding._cencode.payload_v04()
    with pytest.raises(TypeError):
        encoding._cencode.payload_append(out, "not bytes")
    with pytest.raises(ValueError):
        encoding._cencode.payload_finish(out, -1)


@pytest.mark.parametrize(
    "value",
    [0, 1, 2**30 - 1, 2**30 + 7, 2**60 - 1, 2**60, 2**63 - 1, 2**63, 2**64 - 1, (2**64 - 1) >> 30 << 30, 2**62 + 1,
     -1, -(2**40), -(2**63)],
)  # fmt: skip
def test_ints_pack_as_msgpack_packs_them(value: int) -> None:
    # Non-negative ints below 2**64 are read from their digits (3.11), or
    # by mask at and above 2**63 (_PyLong_NumBits <= 64).
    chunk = [1, value, value, None, "op", "res", None, value, value, 0, {}, {"m": value}]
    assert encoding._cencode.encode_v04(chunk) == msgpack.packb(
        [{"trace_id": 1, "span_id": value, "parent_id": value, "service": "", "name": "op", "resource": "res",
          "type": "", "start": value, "duration": value, "error": 0, "meta": {}, "metrics": {"m": value}}]
    )


@pytest.mark.parametrize("value", [2**64, 2**64 + 5, 2**65 - 1, 2**90])
def test_ids_beyond_64_bits_raise_overflow_error_as_msgpack(value: int) -> None:
    chunk = [1, value, 0, None, "op", "res", None, 1, 1, 0, {}, {}]
    with pytest.raises(OverflowError):
        msgpack.packb(value)
    with pytest.raises(OverflowError):
        encoding._cencode.encode_v04(chunk)


class _Str(str):
    pass


@pytest.mark.parametrize("text", ["", "a" * 31, "a" * 32, "é" * 40, "日本", "😀", _Str("sub"), _Str("é")])
def test_strings_ascii_or_not_pack_as_msgpack_packs_them(text: str) -> None:
    chunk = [1, 2, 0, "svc", text, text, None, 1, 1, 0, {text: text}, {}]
    assert encoding._cencode.encode_v04(chunk) == msgpack.packb(
        [{"trace_id": 1, "span_id": 2, "parent_id": 0, "service": "svc", "name": text, "resource": text,
          "type": "", "start": 1, "duration": 1, "error": 0, "meta": {text: text}, "metrics": {}}]
    )
