"""The pure-Python v0.4 encoder folds the service, name, resource, type and
error that every span of a large chunk shares (or every span but the last,
usually the local root, which then goes as a span map of its own after the
others): their keys and values are packed once and joined after each span's
trace id, instead of packed once a span. The maps hold the same keys and
values (in another order: v0.4 maps are read by key). Differential against
msgpack's packing of the wire maps, decoded, with columns that are the same
throughout, all but one, or all different, and with the values the rule
must keep apart (None and "", 0 and False, str subclasses)."""

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
    _V04_APART_MIN,
    _V04_FOLD_MIN,
    _V04_FOLD_MIN_SPANS,
    _V04_FOLDED,
    _V04_FOLDED_MAX,
    _V04_KEYS,
    _V04_LAYOUTS,
    _V04_MARK,
    PayloadV04,
    _array_header,
)
from tracer.span import RECORD_LEN

FIELDS = ("parent_id", "service", "name", "resource", "type", "error")
AT = {field: _V04_KEYS.index(field) for field in FIELDS}


class Name(str):
    """A str subclass: equal to a str, packed as one, but not folded as the first value."""


def decoded(body: bytes) -> Any:
    return msgpack.unpackb(body, strict_map_key=False)


def keys_of(body: bytes, span: int = 0) -> list[str]:
    """A span map's keys, in the order they are on the wire."""
    return [key for key, _ in msgpack.unpackb(body, object_pairs_hook=list)[span]]


def folded_keys(body: bytes, span: int = 0) -> list[str]:
    keys = keys_of(body, span)
    return keys[1 : keys.index("span_id")]


def chunk_of(
    n: int,
    service: Any = "svc",
    span_type: Any = None,
    error: Any = 0,
    names_differ: bool = False,
    parent: Any = None,
    **at: Any,
) -> list[Any]:
    """n spans, each of its own resource, the first one's parent 0 and the
    others' 1 unless ``parent`` is given; ``at`` maps "service_3" (say) to
    span 3's own value (-1: the last span's)."""
    out: list[Any] = []
    for i in range(n):
        own = {key.rsplit("_", 1)[0]: value for key, value in at.items() if int(key.rsplit("_", 1)[1]) in (i, i - n)}
        out += (
            (7 << 64) | 99,
            i + 1,
            own.get("parent", (0 if i == 0 else 1) if parent is None else parent),
            own.get("service", service),
            own.get("name", f"op{i}" if names_differ else "op"),
            f"res{i}",
            own.get("type", span_type),
            1_000 + i,
            5 + i,
            own.get("error", error),
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
    rest = ["span_id", "parent_id", "resource", "start", "duration", "meta", "metrics"]
    assert keys_of(body) == ["trace_id", "service", "name", "type", "error", *rest]
    assert keys_of(body, -1) == keys_of(body)
    # Four keys and four values a span fewer to pack, and the trace id's
    # key and value (the mark alone stands in for them and the next key).
    assert len(payload._flat) == 40 * (2 * len(_V04_KEYS) - 8 - 2)


def test_a_last_span_of_its_own_goes_as_a_span_map_after_the_others() -> None:
    # What a complete trace looks like: the local root finishes last, with
    # its own name, resource and type.
    chunk = chunk_of(40, name_39="flask.request", type_39="web")
    body = encode(chunk)
    assert folded_keys(body) == ["service", "name", "type", "error"]
    assert keys_of(body, -1) == list(_V04_KEYS)  # the standard order
    assert folded_keys(body, -2) == ["service", "name", "type", "error"]
    assert len(decoded(body)) == 40


def test_the_receiver_ingests_folded_maps_as_the_span_maps() -> None:
    # agent_sim's ingest path (unpacked, then checked and normalized, in C
    # where built) reads the maps by key.
    for chunk in (chunk_of(40, type_0="web"), chunk_of(40, name_39="flask.request", type_39="web")):
        now = time.time_ns()
        chunk[7::RECORD_LEN] = [now + i for i in range(40)]  # recent: the receiver keeps the starts
        folded = _array_header(1) + flat_encode(PayloadV04(), chunk)
        assert folded_keys(folded[1:])
        standard = _array_header(1) + wire_maps(chunk)
        assert normalize_payload(unpack_v04(folded)) == normalize_payload(unpack_v04(standard))


@pytest.mark.parametrize(
    ("changes", "folded", "apart"),
    [
        ({"service_0": "web", "type_0": "web"}, ["name", "error"], False),  # a first span of its own service and type
        ({"type_0": "web"}, ["service", "name", "error"], False),
        ({"service_20": "other"}, ["name", "type", "error"], False),  # one differs in the middle
        ({"name_-1": "root", "type_-1": "web"}, ["service", "name", "type", "error"], True),  # the root, last
        ({"error_-1": 1}, ["service", "name", "type", "error"], True),  # 1 field x 69 spans: set apart
        ({"service_5": None}, ["name", "type", "error"], False),  # None and "" are both "" on the wire, but not equal
        ({"service_0": Name("svc")}, ["name", "type", "error"], False),  # the first is a subclass: not folded
        ({"service_9": Name("svc")}, ["service", "name", "type", "error"], False),  # equal later: packed as the first
        ({"name_0": None}, ["service", "type", "error"], False),  # a name of None does not fold
        ({"error_9": False, "error_10": 0.0}, ["service", "name", "type", "error"], False),  # equal to 0: sent as 0
        # Children of one span (an N+1 query), their parent last.
        ({"parent": 5}, ["parent_id", "service", "name", "type", "error"], False),
        ({"parent": 5, "parent_-1": 0, "name_-1": "root"}, ["parent_id", "service", "name", "type", "error"], True),
        ({"parent": True}, ["service", "name", "type", "error"], False),  # equal to 1, not an int
    ],
)
def test_only_fields_the_same_in_every_span_fold(changes: dict[str, Any], folded: list[str], apart: bool) -> None:
    chunk = chunk_of(70, **changes)
    body = flat_encode(PayloadV04(), chunk)
    assert folded_keys(body) == folded
    assert folded_keys(body, -1) == ([] if apart else folded)
    expected = decoded(wire_maps(chunk))
    if "error_9" in changes:  # False and 0.0 went on the wire as the first span's 0
        for span in expected:
            span["error"] = 0
    assert decoded(body) == expected


def test_a_field_folds_only_where_it_pays() -> None:
    # Error alone from _V04_FOLD_MIN spans on; two fields from half of it;
    # nothing below _V04_FOLD_MIN_SPANS spans.
    alone = {"service_0": "web", "type_0": "web", "names_differ": True}
    assert folded_keys(encode(chunk_of(_V04_FOLD_MIN - 1, **alone))) == []
    assert folded_keys(encode(chunk_of(_V04_FOLD_MIN, **alone))) == ["error"]
    assert folded_keys(encode(chunk_of(_V04_FOLD_MIN // 2, type_0="web", names_differ=True))) == ["service", "error"]
    assert folded_keys(encode(chunk_of(_V04_FOLD_MIN_SPANS - 1))) == []
    assert encode(chunk_of(_V04_FOLD_MIN_SPANS - 1)) == wire_maps(chunk_of(_V04_FOLD_MIN_SPANS - 1))
    assert folded_keys(encode(chunk_of(_V04_FOLD_MIN_SPANS))) == ["service", "name", "type", "error"]
    # The last span is set apart when the fields it alone differs in, times
    # the other spans, reach _V04_APART_MIN; else those fields do not fold.
    n = _V04_APART_MIN + 1
    assert folded_keys(encode(chunk_of(n - 1, error_63=1)), -1) == ["service", "name", "type"]
    assert folded_keys(encode(chunk_of(n, error_64=1)), -1) == []
    assert folded_keys(encode(chunk_of(n, error_64=1))) == ["service", "name", "type", "error"]


def test_a_stray_mark_in_a_folded_chunk_falls_back_to_the_span_maps() -> None:
    # A folded chunk splits on the mark alone: the same float as a metric
    # (or its bytes inside a bin value: no UTF-8 text holds them) adds a
    # piece, and the span maps are packed.
    for value in (_V04_MARK, b"x" + msgpack.packb(_V04_MARK)):
        chunk = chunk_of(40)
        chunk[12 * 5 + _V04_KEYS.index("metrics")] = {"m": value} if type(value) is float else {}
        chunk[12 * 6 + _V04_KEYS.index("meta")] = {"k": value} if type(value) is bytes else {"k": "6"}
        body = flat_encode(PayloadV04(), chunk)
        assert body == wire_maps(chunk)  # the span maps' own bytes: the fall back
        assert decoded(body) == decoded(wire_maps(chunk))


def test_a_folded_chunks_stand_in_cannot_overlap_a_spans_start() -> None:
    # The mark's first byte is nowhere else in its 9 bytes: a bin value
    # ending in any part of them just before a span's own mark does not
    # swallow it (the bytes stay right, no fall back needed).
    searched = _V04_LAYOUTS[1].searched
    assert searched == msgpack.packb(_V04_MARK) and searched.find(searched[:1], 1) == -1
    assert {layout.searched for layout in _V04_LAYOUTS[1:]} == {searched}
    for cut in range(1, len(searched)):
        chunk = chunk_of(40)
        chunk[12 * 7 + _V04_KEYS.index("metrics")] = {"k": searched[:cut]}
        body = flat_encode(PayloadV04(), chunk)
        assert folded_keys(body) and decoded(body) == decoded(wire_maps(chunk))


def test_one_payload_switches_layouts_chunk_after_chunk() -> None:
    # The reused interleaved list is made again for each other layout.
    payload = PayloadV04()
    layouts = ({}, {"type_0": "web"}, {"service_0": "a", "type_0": "b"}, {"name_-1": "root"}, {"service_3": "x"}, {"type_-1": "web"})
    for changes in layouts:
        for n in (40, 70, 40):
            chunk = chunk_of(n, **changes)
            assert decoded(flat_encode(payload, chunk)) == decoded(wire_maps(chunk))
    # A list of the same length made for another layout: 45 spans of 16
    # items (four fields folded), then 40 of 18 (three), and 40 of 16 with the
    # last apart (39 spans in the list).
    for chunk in (chunk_of(45), chunk_of(40, service_0="x"), chunk_of(40, type_0="web"), chunk_of(40, name_39="root")):
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


def rule(columns: dict[str, list[Any]], n: int) -> tuple[list[str], bool]:
    """The fields that fold and whether the last span is set apart, stated
    again: the first value an exact str (None too for service and type) or
    an exact int for error, every other span's equal to it (but the last's,
    if setting it apart pays)."""

    def foldable(field: str, first: Any) -> bool:
        if field in ("parent_id", "error"):
            return type(first) is int
        return type(first) is str or (first is None and field in ("service", "type"))

    head = [f for f in FIELDS if foldable(f, columns[f][0]) and all(v == columns[f][0] for v in columns[f][:-1])]
    both = [f for f in head if columns[f][-1] == columns[f][0]]
    if (len(head) - len(both)) * (n - 1) >= _V04_APART_MIN:
        return head, True
    if n * len(both) >= _V04_FOLD_MIN:
        return both, False
    return [], False


column = st.one_of(
    st.tuples(st.just("same"), st.one_of(st.sampled_from([None, "", "web", 0, 1, False, Name("x")]), text)),
    st.tuples(st.just("one"), st.one_of(st.just(-1), st.integers(min_value=0, max_value=60)), st.sampled_from([None, "", "x", 1, True, 0.0])),
    st.tuples(st.just("each"), st.integers(min_value=0, max_value=3)),
)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=_V04_FOLD_MIN_SPANS, max_value=90), st.fixed_dictionaries({f: column for f in FIELDS}))
def test_any_chunk_decodes_to_the_span_maps(n: int, specs: dict[str, Any]) -> None:
    columns = {}
    for field, spec in specs.items():
        if spec[0] == "same":
            columns[field] = [spec[1]] * n
        elif spec[0] == "one":
            columns[field] = [0 if field in ("parent_id", "error") else "a"] * n
            columns[field][spec[1] if spec[1] < n else n - 1] = spec[2]
        else:
            columns[field] = [i % (spec[1] + 2) if field in ("parent_id", "error") else f"v{i % (spec[1] + 2)}" for i in range(n)]
    chunk = chunk_of(n)
    for field, values in columns.items():
        chunk[AT[field] :: RECORD_LEN] = values
    expected = decoded(wire_maps(chunk))
    body = flat_encode(PayloadV04(), chunk)
    folded, apart = rule(columns, n)
    assert folded_keys(body) == folded
    assert folded_keys(body, -1) == ([] if apart else folded)
    for field in folded:  # sent as the first span's value
        for span in expected[:-1] if apart else expected:
            span[field] = "" if columns[field][0] is None else columns[field][0]
    assert decoded(body) == expected


def tagged(n: int, meta: Any = None, metrics: Any = None, **at: Any) -> list[Any]:
    """chunk_of(n, parent=5) with every span's meta and metrics equal to
    ``meta`` and ``metrics`` (each span its own copy), but for "meta_3"
    (say) in ``at``: span 3's own dict (-1: the last span's)."""
    chunk = chunk_of(n, parent=5)
    for i in range(n):
        for field, shared in (("meta", meta), ("metrics", metrics)):
            own = at.get(f"{field}_{i}", at.get(f"{field}_{i - n}", shared))
            chunk[i * RECORD_LEN + _V04_KEYS.index(field)] = dict({"k": "v"} if own is None else own)
    return chunk


def test_tags_every_middle_span_shares_fold_and_both_ends_go_apart() -> None:
    # bench_spans.py's trace, as the writer hands it over: the first child
    # holds the sampling tags, the root (last) the process's.
    chunk = tagged(
        101,
        {"a": "x", "b": "y", "c": "z"},
        {"m": 1},
        meta_0={"a": "x", "b": "y", "c": "z", "_dd.p.dm": "-0"},
        metrics_0={"m": 1, "_sampling_priority_v1": 1},
        meta_100={"language": "python"},
        metrics_100={"_dd.top_level": 1},
    )
    chunk[-RECORD_LEN + 2] = 0  # the root
    payload = PayloadV04()
    body = encode(chunk)
    for span in (0, -1):
        assert keys_of(body, span) == list(_V04_KEYS)  # the ends: span maps, the standard order
    assert folded_keys(body, 1) == ["parent_id", "service", "name", "type", "error", "meta", "metrics"]
    assert folded_keys(body, -2) == folded_keys(body, 1)
    assert len(decoded(body)) == 101
    flat_encode(payload, chunk)
    assert len(payload._flat) == 99 * (2 * len(_V04_KEYS) - 14 - 2)  # seven fields and the trace id fewer


@pytest.mark.parametrize(
    ("changes", "folded"),
    [
        ({}, ["parent_id", "service", "name", "type", "error", "meta", "metrics"]),
        ({"meta_20": {"k": "w"}}, ["parent_id", "service", "name", "type", "error", "metrics"]),  # one differs
        ({"metrics_-2": {}}, ["parent_id", "service", "name", "type", "error", "meta"]),  # the next-to-last
        ({"meta_1": {"k": "w"}}, ["parent_id", "service", "name", "type", "error", "metrics"]),  # the second
        ({"meta_1": {"k": "w"}, "metrics_1": {"m": 2}}, ["parent_id", "service", "name", "type", "error"]),
        ({"metrics_7": {"m": 1.0}}, ["parent_id", "service", "name", "type", "error", "meta", "metrics"]),  # equal: sent as 1
    ],
)
def test_only_tags_the_same_in_every_middle_span_fold(changes: dict[str, Any], folded: list[str]) -> None:
    chunk = tagged(40, None, {"m": 1}, **changes)
    body = flat_encode(PayloadV04(), chunk)
    assert folded_keys(body, 1) == folded
    apart = "meta" in folded or "metrics" in folded
    assert folded_keys(body, 0) == ([] if apart else folded)
    expected = decoded(wire_maps(chunk))
    assert decoded(body) == expected
    if "metrics_7" in changes:
        assert type(decoded(body)[7]["metrics"]["m"]) is int  # the second span's value, 1 not 1.0


def test_the_receiver_ingests_folded_tags_as_the_span_maps() -> None:
    chunk = tagged(40, {"component": "mysql", "db.system": "mysql"}, {"db.row_count": 1}, meta_0={"_dd.p.dm": "-0"})
    now = time.time_ns()
    chunk[7::RECORD_LEN] = [now + i for i in range(40)]
    folded = _array_header(1) + flat_encode(PayloadV04(), chunk)
    assert "meta" in folded_keys(folded[1:], 1)
    standard = _array_header(1) + wire_maps(chunk)
    assert normalize_payload(unpack_v04(folded)) == normalize_payload(unpack_v04(standard))


tags_column = st.one_of(
    st.tuples(st.just("same"), st.sampled_from([{}, {"k": "v"}, {"k": "v", "j": ""}])),
    st.tuples(st.just("one"), st.integers(min_value=0, max_value=60), st.sampled_from([{}, {"k": "w"}, {"k": "v", "x": "y"}])),
    st.tuples(st.just("each"), st.integers(min_value=0, max_value=3)),
)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=_V04_FOLD_MIN_SPANS, max_value=70), tags_column, tags_column)
def test_any_tags_decode_to_the_span_maps(n: int, meta_spec: Any, metrics_spec: Any) -> None:
    columns = {}
    for field, spec in (("meta", meta_spec), ("metrics", metrics_spec)):
        as_metrics = (lambda d: {k: len(v) for k, v in d.items()}) if field == "metrics" else (lambda d: d)
        if spec[0] == "same":
            columns[field] = [as_metrics(spec[1]) for _ in range(n)]
        elif spec[0] == "one":
            columns[field] = [as_metrics({"k": "v"}) for _ in range(n)]
            columns[field][min(spec[1], n - 1)] = as_metrics(spec[2])
        else:
            columns[field] = [as_metrics({"k": f"v{i % (spec[1] + 2)}"}) for i in range(n)]
    chunk = chunk_of(n)
    for field, values in columns.items():
        chunk[_V04_KEYS.index(field) :: RECORD_LEN] = values
    body = flat_encode(PayloadV04(), chunk)
    # The rule restated: a dict every span but the first and the last has.
    tags = [f for f in ("meta", "metrics") if all(v == columns[f][1] for v in columns[f][1:-1])]
    assert [k for k in folded_keys(body, 1) if k in ("meta", "metrics")] == tags
    if tags:
        assert keys_of(body, 0) == keys_of(body, -1) == list(_V04_KEYS)
    assert decoded(body) == decoded(wire_maps(chunk))
