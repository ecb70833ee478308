"""The pure-Python set_tag keeps a str value whole; the pure-Python encoders
cut a meta value past MAX_VALUE_LEN characters on the wire (as ddtrace's
encoder and the Datadog agent do), in a copy: the span's own dict keeps it.
Every way a chunk is packed (span maps, the flat list, folded with the root
apart, v0.5's string table), through the writer's payload to a real
receiver, and the chunks that must stay as they are."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from tracer.encoding import _V04_FOLD_MIN_SPANS, PayloadV04, PayloadV05, _cencode, _cut_long_values
from tracer.span import MAX_VALUE_LEN, META, RECORD_LEN, _SpanBase

LONG = "v" * (MAX_VALUE_LEN + 7)
WIDE = "é" * MAX_VALUE_LEN  # 25,000 characters, 50,000 bytes: not cut


def chunk_of(n: int, long_at: dict[int, dict[str, str]]) -> list[Any]:
    """n children of one root (the last span), each with a short tag, and
    the tags of ``long_at[i]`` on span i (-1: the last)."""
    out: list[Any] = []
    for i in range(n):
        meta = {"a": "x", **long_at.get(i, {}), **long_at.get(i - n, {})}
        parent = 0 if i == n - 1 else 11
        out += ((5 << 64) | 3, i + 10, parent, "svc", "op", "res", None, 1000 + i, 5, 0, meta, {"m": 1})
    return out


def wire_meta(body: bytes) -> dict[int, dict[str, str]]:
    return {span["span_id"]: span["meta"] for span in msgpack.unpackb(body)}


def v05_meta(chunk: list[Any]) -> dict[int, dict[str, str]]:
    payload = PayloadV05()
    assert payload.put(chunk)
    strings, (spans,) = msgpack.unpackb(payload.finish(), strict_map_key=False)
    return {s[4]: {strings[k]: strings[v] for k, v in s[9].items()} for s in spans}


@pytest.mark.parametrize(
    "n, where",
    [
        (1, 0),  # span maps
        (2, 1),  # span maps, the second span
        (5, 2),  # the flat list
        (_V04_FOLD_MIN_SPANS + 8, 3),  # folded
        (_V04_FOLD_MIN_SPANS + 8, -1),  # folded, the root set apart holds it
    ],
)
@pytest.mark.parametrize("encode", ["v0.4", "v0.5"])
def test_a_long_meta_value_is_cut_on_the_wire_and_kept_in_the_span(n: int, where: int, encode: str) -> None:
    chunk = chunk_of(n, {where: {"long": LONG, "wide": WIDE}})
    meta = chunk[where * RECORD_LEN + META if where >= 0 else where * RECORD_LEN + META]
    sent = wire_meta(PayloadV04()._encode(chunk)) if encode == "v0.4" else v05_meta(chunk)
    span_id = 10 + (where % n)
    assert sent[span_id] == {"a": "x", "long": LONG[:MAX_VALUE_LEN], "wide": WIDE}
    assert all(sent[i] == {"a": "x"} for i in sent if i != span_id)
    assert meta == {"a": "x", "long": LONG, "wide": WIDE}  # the span's own dict


class Counting(PayloadV04):
    """Counts the flat packings (a chunk packed again after a cut is two)."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = 0

    def _encode_flat(self, chunk: list[Any], n: int) -> bytes:
        self.flat += 1
        return super()._encode_flat(chunk, n)


def test_a_long_chunk_without_a_long_value_is_packed_once() -> None:
    # 40 spans of 3 values of 10,000 characters: every piece past
    # MAX_VALUE_LEN bytes, no value past MAX_VALUE_LEN characters.
    chunk = chunk_of(40, {i: {"p": "p" * 10_000, "q": "q" * 10_000, "r": "é" * 5_000} for i in range(40)})
    assert _cut_long_values(chunk) is None
    payload = Counting()
    sent = wire_meta(payload._encode(chunk))
    assert payload.flat == 1
    assert all(len(meta["p"]) == 10_000 and len(meta["r"]) == 5_000 for meta in sent.values())
    chunk[2 * RECORD_LEN + META]["p"] = LONG  # one value past it: packed again, cut
    assert wire_meta(payload._encode(chunk))[12]["p"] == LONG[:MAX_VALUE_LEN]
    assert payload.flat == 3


def test_the_cut_copy_shares_every_other_dict() -> None:
    chunk = chunk_of(4, {1: {"long": LONG}})
    cut = _cut_long_values(chunk)
    assert cut is not None and cut is not chunk
    metas = range(META, len(chunk), RECORD_LEN)
    assert [cut[at] is chunk[at] for at in metas] == [True, False, True, True]
    assert cut[1 * RECORD_LEN + META] == {"a": "x", "long": LONG[:MAX_VALUE_LEN]}


def test_set_tag_keeps_the_value_and_the_payload_cuts_it(test_spans: Any) -> None:
    from tracer import tracer

    with tracer.trace("root"), tracer.trace("child") as span:
        span.set_tag("big", "a")  # the key seen: the next set goes the common path
        span.set_tag("big", LONG)
    if isinstance(span, _SpanBase):  # the pure-Python span
        assert span.get_tag("big") == LONG
    ((_, chunk),) = test_spans.raw
    for payload in (PayloadV04(), PayloadV05()):
        payload.put(chunk)
        body = msgpack.unpackb(payload.finish(), strict_map_key=False)
        if payload.version == "v0.4":
            metas = [s["meta"] for s in body[0]]
        else:
            strings = body[0]
            metas = [{strings[k]: strings[v] for k, v in s[9].items()} for s in body[1][0]]
        assert [meta.get("big") for meta in metas] == [LONG[:MAX_VALUE_LEN], None]


def test_a_long_value_every_middle_span_shares_is_cut_where_it_is_packed_once() -> None:
    n = _V04_FOLD_MIN_SPANS + 8
    chunk = chunk_of(n, {i: {"long": LONG} for i in range(n)})
    body = PayloadV04()._encode(chunk)
    keys = [key for key, _ in msgpack.unpackb(body, object_pairs_hook=list)[1]]
    assert keys.index("meta") < keys.index("span_id")  # folded: packed once, joined after each trace id
    sent = wire_meta(body)
    assert len(sent) == n and all(meta == {"a": "x", "long": LONG[:MAX_VALUE_LEN]} for meta in sent.values())
    assert chunk[META] == {"a": "x", "long": LONG}


@pytest.mark.skipif(_cencode is None, reason="the C encoder is not built or TRACER_PURE_PYTHON is set")
def test_the_c_v04_encoder_leaves_a_long_value_the_c_span_never_holds() -> None:
    # The one difference in bytes between the two v0.4 encoders: a C span
    # cuts the value when it is set, so only a dict written directly holds
    # one; v0.5 cuts it with either encoder (put() looks at the new strings).
    chunk = chunk_of(3, {1: {"long": LONG}})
    payload = PayloadV04()
    assert payload.put(chunk)
    assert wire_meta(payload.finish()[1:])[11]["long"] == LONG
    v05 = PayloadV05()
    assert v05.put(chunk)
    strings, traces = msgpack.unpackb(v05.finish(), strict_map_key=False)
    assert {strings[k]: strings[v] for k, v in traces[0][1][9].items()}["long"] == LONG[:MAX_VALUE_LEN]
