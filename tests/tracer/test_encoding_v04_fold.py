"""The pure-Python v0.4 encoder folds the service, type and error that every
span of a large chunk shares: their keys and values are packed once, into
the bytes put after each span's trace id, instead of once a span. The maps
hold the same keys and values (in another order: v0.4 maps are read by key);
differential against msgpack's packing of the wire maps, decoded, with
columns that are the same throughout, all but one, or all different, and
with the values the rule must keep apart (None and "", 0 and False, str
subclasses)."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sim.decode import unpack_v04
from agent_sim.normalize import normalize_payload
from tests.tracer.test_encoding_v04_flat import flat_encode, text, wire_maps
from tracer.encoding import (
    _V04_FOLD_MIN,
    _V04_FOLD_MIN_SPANS,
    _V04_FOLDED,
    _V04_FOLDED_MAX,
    _V04_KEYS,
    PayloadV04,
    _array_header,
)
from tracer.span import RECORD_LEN


class Name(str):
    """A str subclass: equal to a str, packed as one, but not folded as the first value."""


def decoded(body: bytes) -> Any:
    return msgpack.unpackb(body, strict_map_key=False)


def first_keys(body: bytes) -> list[str]:
    """The first span map's keys, in the order they are on the wire."""
    return [key for key, _ in msgpack.unpackb(body, object_pairs_hook=list)[0]]


def chunk_of(n: int, service: Any = "svc", span_type: Any = None, error: Any = 0, **at: Any) -> list[Any]:
    """n spans; ``at`` maps "service_3" (say) to span 3's own value."""
    out: list[Any] = []
    for i in range(n):
        out += (
            (7 << 64) | 99,
            i + 1,
            0 if i == 0 else 1,
            at.get(f"service_{i}", service),
            "op",
            f"res{i}",
            at.get(f"type_{i}", span_type),
            1_000 + i,
            5 + i,
            at.get(f"error_{i}", error),
            {"k": str(i)},
            {"m": i},
        )
    return out


def encode(chunk: list[Any]) -> bytes:
    body = flat_encode(PayloadV04(), chunk)
    assert decoded(body) == decoded(wire_maps(chunk))
    return body


def test_a_large_chunk_packs_its_shared_fields_once_and_joins_them_after_the_trace_id() -> None:
    chunk = chunk_of(40)
    payload = PayloadV04()
    body = flat_encode(payload, chunk)
    assert decoded(body) == decoded(wire_maps(chunk))
    assert len(body) == len(wire_maps(chunk))  # the same bytes, in another order
    assert first_keys(body) == ["trace_id", "service", "type", "error", *_V04_KEYS[1:3], *_V04_KEYS[4:6], *_V04_KEYS[7:9], "meta", "metrics"]
    # Three keys and three values a span fewer to pack.
    assert len(payload._flat) == 40 * (2 * len(_V04_KEYS) - 6)


def test_the_receiver_ingests_folded_maps_as_the_span_maps() -> None:
    # agent_sim's ingest path (unpacked, then checked and normalized, in C
    # where built) reads the maps by key.
    chunk = chunk_of(40, type_0="web")
    now = time.time_ns()
    chunk[7::RECORD_LEN] = [now + i for i in range(40)]  # recent: the receiver keeps the starts
    folded = _array_header(1) + flat_encode(PayloadV04(), chunk)
    assert first_keys(folded[1:])[1:3] == ["service", "error"]
    standard = _array_header(1) + wire_maps(chunk)
    assert normalize_payload(unpack_v04(folded)) == normalize_payload(unpack_v04(standard))


@pytest.mark.parametrize(
    ("changes", "folded"),
    [
        ({"service_0": "web", "type_0": "web"}, ["error"]),  # a root of its own service and type (70 spans)
        ({"type_0": "web"}, ["service", "error"]),  # a Flask request and its queries
        ({"service_20": "other"}, ["type", "error"]),  # one differs in the middle
        ({"error_69": 1}, ["service", "type"]),  # the last one differs
        ({"service_5": None}, ["type", "error"]),  # None and "" are both "" on the wire, but not equal
        ({"service_0": Name("svc")}, ["type", "error"]),  # the first is a subclass: not folded
        ({"service_9": Name("svc")}, ["service", "type", "error"]),  # equal later: packed as the first
        ({"error_9": False, "error_10": 0.0}, ["service", "type", "error"]),  # equal to 0: sent as 0
    ],
)
def test_only_fields_the_same_in_every_span_fold(changes: dict[str, Any], folded: list[str]) -> None:
    chunk = chunk_of(70, **changes)
    body = flat_encode(PayloadV04(), chunk)
    keys = first_keys(body)
    assert keys[1 : 1 + len(folded)] == folded
    assert keys[1 + len(folded)] == "span_id"
    expected = decoded(wire_maps(chunk))
    if "error_9" in changes:  # False and 0.0 went on the wire as the first span's 0
        for span in expected:
            span["error"] = 0
    assert decoded(body) == expected


def test_a_field_folds_only_where_it_pays() -> None:
    # Error alone from _V04_FOLD_MIN spans on; two fields from half of it;
    # nothing below _V04_FOLD_MIN_SPANS spans.
    root = {"service_0": "web", "type_0": "web"}
    assert first_keys(encode(chunk_of(_V04_FOLD_MIN - 1, **root)))[1] == "span_id"
    assert first_keys(encode(chunk_of(_V04_FOLD_MIN, **root)))[1] == "error"
    assert first_keys(encode(chunk_of(_V04_FOLD_MIN // 2, type_0="web")))[1:3] == ["service", "error"]
    assert first_keys(encode(chunk_of(_V04_FOLD_MIN_SPANS - 1)))[1] == "span_id"
    assert first_keys(encode(chunk_of(_V04_FOLD_MIN_SPANS)))[1:4] == ["service", "type", "error"]
    assert encode(chunk_of(_V04_FOLD_MIN_SPANS - 1)) == wire_maps(chunk_of(_V04_FOLD_MIN_SPANS - 1))


def test_one_payload_switches_layouts_chunk_after_chunk() -> None:
    # The reused interleaved list is made again for each other layout.
    payload = PayloadV04()
    for changes in ({}, {"type_0": "web"}, {"service_0": "a", "type_0": "b"}, {}, {"service_3": "x"}, {"type_0": "web"}):
        for n in (40, 70, 40):
            chunk = chunk_of(n, **changes)
            assert decoded(flat_encode(payload, chunk)) == decoded(wire_maps(chunk))
    # A list of the same length made for another layout: 36 spans of 20
    # items (two fields folded), then 40 of 18 (three).
    for chunk in (chunk_of(36, type_0="web"), chunk_of(40), chunk_of(36, type_0="web")):
        assert decoded(flat_encode(payload, chunk)) == decoded(wire_maps(chunk))


def test_the_packed_fields_are_kept_for_a_few_hundred_values() -> None:
    payload = PayloadV04()
    for i in range(2 * _V04_FOLDED_MAX + 3):
        chunk = chunk_of(40, service=f"svc{i % (_V04_FOLDED_MAX + 7)}", error=i % 2)
        assert decoded(flat_encode(payload, chunk)) == decoded(wire_maps(chunk))
        assert len(_V04_FOLDED) <= _V04_FOLDED_MAX


def test_a_folded_value_msgpack_refuses_raises_as_unfolded() -> None:
    # put() then packs the sanitized chunk (lone surrogates replaced, a too
    # large int made a float), as for any other field.
    for changes in ({"service": "bad\ud800"}, {"error": 1 << 64}):
        with pytest.raises((UnicodeEncodeError, OverflowError)):
            flat_encode(PayloadV04(), chunk_of(40, **changes))
        payload = PayloadV04()
        assert payload.put(chunk_of(40, **changes))
        assert len(decoded(payload.finish())[0]) == 40


column = st.one_of(
    st.tuples(st.just("same"), st.one_of(st.sampled_from([None, "", "web", 0, 1, False, Name("x")]), text)),
    st.tuples(st.just("one"), st.integers(min_value=0, max_value=60), st.sampled_from([None, "", "x", 1, True, 0.0])),
    st.tuples(st.just("each"), st.integers(min_value=0, max_value=3)),
)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=_V04_FOLD_MIN_SPANS, max_value=90), column, column, column)
def test_any_chunk_decodes_to_the_span_maps(n: int, service: Any, span_type: Any, error: Any) -> None:
    values = {}
    for field, spec in (("service", service), ("type", span_type), ("error", error)):
        if spec[0] == "same":
            values[field] = [spec[1]] * n
        elif spec[0] == "one":
            values[field] = ["a" if field != "error" else 0] * n
            values[field][min(spec[1], n - 1)] = spec[2]
        else:
            values[field] = [i % (spec[1] + 2) if field == "error" else f"v{i % (spec[1] + 2)}" for i in range(n)]
    chunk = chunk_of(n)
    for i in range(n):
        chunk[i * RECORD_LEN + 3] = values["service"][i]
        chunk[i * RECORD_LEN + 6] = values["type"][i]
        chunk[i * RECORD_LEN + 9] = values["error"][i]
    expected = decoded(wire_maps(chunk))
    body = flat_encode(PayloadV04(), chunk)
    keys = first_keys(body)
    folded = keys[1 : keys.index("span_id")]
    # The rule, stated again: every value equal to the first, which is an
    # exact str or None (service, type) or an exact int (error); enough spans
    # times fields.
    rule = [
        field
        for field in ("service", "type", "error")
        if all(value == values[field][0] for value in values[field])
        and (type(values[field][0]) is int if field == "error" else values[field][0] is None or type(values[field][0]) is str)
    ]
    assert folded == (rule if n * len(rule) >= _V04_FOLD_MIN else [])
    for field in folded:  # sent as the first span's value
        for span in expected:
            span[field] = values[field][0] or ("" if field != "error" else values[field][0])
    assert decoded(body) == expected
