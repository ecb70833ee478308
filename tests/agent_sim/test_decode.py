"""Lenient decode (like the Datadog agent) and the reasons given for bad bodies."""

from __future__ import annotations

import json

import msgpack
import pytest

from agent_sim.decode import PayloadError, decode_json, decode_v04, decode_v05


def v04(*spans: dict) -> bytes:
    return msgpack.packb([list(spans)])


def test_nil_fields_take_zero_values_and_unknown_keys_are_skipped() -> None:
    (trace,) = decode_v04(v04({"trace_id": 1, "span_id": 2, "parent_id": None, "service": None, "name": "n",
                               "meta": None, "metrics": None, "error": None, "start": None, "unknown": [1, {}]}))
    assert trace == [{"trace_id": 1, "span_id": 2, "parent_id": 0, "service": "", "name": "n", "resource": "",
                      "type": "", "start": 0, "duration": 0, "error": 0, "meta": {}, "metrics": {}}]


def test_signed_unsigned_interchangeable() -> None:
    ((s,),) = decode_v04(v04({"trace_id": -1, "span_id": 2**64 - 1, "parent_id": 3, "start": 2**63 + 5,
                              "duration": 10, "error": 1}))
    assert (s["trace_id"], s["span_id"], s["parent_id"]) == (2**64 - 1, 2**64 - 1, 3)
    assert s["start"] == 5 - 2**63 and s["duration"] == 10 and s["error"] == 1


@pytest.mark.parametrize("field", ["trace_id", "span_id", "parent_id", "start", "duration", "error"])
@pytest.mark.parametrize("value", [3.0, True])
def test_floats_and_bools_are_not_integers(field: str, value: object) -> None:
    # the agent's parseUint64Bytes/parseInt64Bytes/parseInt32Bytes read msgpack ints only
    with pytest.raises(PayloadError, match=f"'{field}': expected an integer, got {type(value).__name__}"):
        decode_v04(v04({"trace_id": 1, "span_id": 1, field: value}))


def test_strings_as_bin_and_invalid_utf8_repaired() -> None:
    body = msgpack.packb([[{"trace_id": 1, "span_id": 1, "service": b"svc\xff", "name": "a\udcff".encode(
        "utf-8", "surrogatepass"), "meta": {b"k": b"v\xc3"}}]], use_bin_type=True)
    ((s,),) = decode_v04(body)
    assert s["service"] == "svc\ufffd" and "\ufffd" in s["name"] and s["meta"] == {"k": "v\ufffd"}
    raw = msgpack.packb([[{"trace_id": 1, "span_id": 1, "resource": "x"}]]).replace(b"\xa1x", b"\xa1\xff")
    ((s,),) = decode_v04(raw)
    assert s["resource"] == "\ufffd"


def test_metrics_nil_and_bool_values_become_numbers() -> None:
    ((s,),) = decode_v04(v04({"trace_id": 1, "span_id": 1, "metrics": {"a": None, "b": True, "c": 2}}))
    assert s["metrics"] == {"a": 0.0, "b": 1.0, "c": 2}


BAD_V04 = [
    (b"", "truncated"),
    (msgpack.packb([[{"trace_id": 1}]])[:-3], "truncated"),
    (msgpack.packb({"traces": []}), "must be an array of traces, got map"),
    (msgpack.packb("hello"), "got string"),
    (msgpack.packb([{"trace_id": 1}]), "a trace must be an array of spans, got map"),
    (msgpack.packb([[[1, 2]]]), "a span must be a map, got array"),
    (v04({"trace_id": "1"}), "'trace_id': expected an integer, got string"),
    (v04({"service": 5}), "'service': expected a string, got integer"),
    (v04({"start": 1.5}), "'start': expected an integer, got float"),
    (v04({"meta": [1]}), "'meta': expected a map, got array"),
    (v04({"meta": {"k": 1}}), "meta value"),
    (v04({"metrics": {"k": "x"}}), "metrics"),
    (v04({"metrics": 3}), "'metrics': expected a map"),
    (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
    (b"\x91\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
    (b"\x91" * 5000, "nesting too deep"),
    (msgpack.packb([]) + b"\x00", "extra bytes"),
    (b"\xc1", "msgpack"),
    (msgpack.packb([[{"meta": {(1, 2): "x"}}]]), "'meta key': expected a string, got array"),
    # where the agent's decoder is strict too (and the test agent answers 400)
    (msgpack.packb(None), "the body must be an array of traces, got nil"),
    (msgpack.packb([[], None]), "a trace must be an array of spans, got nil"),
    (v04({"trace_id": 1, "span_id": 1, 7: "x"}), "span keys must be strings, got integer"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_V04)
def test_bad_v04_names_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_v04(body)
    assert reason in str(info.value)


def test_v05() -> None:
    body = msgpack.packb([["", "svc", "op", "res", "k", "v", "web"],
                          [[[1, 2, 3, 10, 11, 0, 100, 5, 0, {4: 5}, {4: 1.0}, 6]]]])
    ((s,),) = decode_v05(body)
    assert s == {"trace_id": 10, "span_id": 11, "parent_id": 0, "service": "svc", "name": "op", "resource": "res",
                 "type": "web", "start": 100, "duration": 5, "error": 0, "meta": {"k": "v"}, "metrics": {"k": 1.0}}


BAD_V05 = [
    (msgpack.packb([["a"]]), "array of 2 elements"),
    (msgpack.packb({"a": 1}), "array of 2 elements"),
    (msgpack.packb([{"a": 1}, []]), "string table must be an array"),
    (msgpack.packb([["a"], {}]), "traces must be an array"),
    (msgpack.packb([["a"], [[[0] * 11]]]), "12 elements, got an array of 11"),
    (msgpack.packb([["a"], [[[5] + [0] * 8 + [{}, {}, 0]]]]), "string index 5 out of range (table has 1 entries)"),
    (msgpack.packb([["a"], [[[-1] + [0] * 8 + [{}, {}, 0]]]]), "out of range"),
    (msgpack.packb([["a"], [[[0] * 9 + [{7: 0}, {}, 0]]]]), "meta key string index 7 out of range"),
    (msgpack.packb([["a"], [[[0] * 9 + [{0: 9}, {}, 0]]]]), "meta value string index 9"),
    (msgpack.packb([["a"], [[[0] * 9 + [{}, {3: 1}, 0]]]]), "metrics key string index 3"),
    (msgpack.packb([["a"], [[["a"] + [0] * 8 + [{}, {}, 0]]]]), "service must be a string index, got string"),
    (msgpack.packb([["a", 1], []]), "string table entry"),
    (msgpack.packb([["a"], [[[0] * 9 + [[], {}, 0]]]]), "span meta must be a map"),
    (msgpack.packb([["a"], [[[None] + [0] * 8 + [{}, {}, 0]]]]), "service must be a string index, got nil"),
    (msgpack.packb([["a"], [[[0] * 9 + [None, {}, 0]]]]), "span meta must be a map, got nil"),
    (msgpack.packb([["a"], [[[0] * 9 + [{}, None, 0]]]]), "span metrics must be a map, got nil"),
    (msgpack.packb([["a"], [[[0] * 9 + [{0: None}, {}, 0]]]]), "meta value must be a string index, got nil"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_V05)
def test_bad_v05_names_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_v05(body)
    assert reason in str(info.value)


def test_json() -> None:
    ((s,),) = decode_json(json.dumps([[{"trace_id": 1, "span_id": 2, "name": "x", "meta": {"a": "b"}}]]).encode())
    assert (s["trace_id"], s["name"], s["meta"]) == (1, "x", {"a": "b"})
    with pytest.raises(PayloadError, match="json"):
        decode_json(b"[[{")
    with pytest.raises(PayloadError, match="expected an integer, got float"):
        decode_json(b'[[{"trace_id": 100000000000000000000000}]]')


def test_json_lone_surrogate_escapes_become_replacement_characters() -> None:
    # json.loads keeps a lone "\\ud800" as a surrogate no encoder accepts (it was a 500);
    # Go's encoding/json, the agent's, reads it as U+FFFD. A proper pair stays one character.
    body = b'[[{"trace_id": 1, "span_id": 1, "service": "a\\ud800b", "name": "\\ud83d\\ude00",' \
           b' "meta": {"\\uDC00": "\\ud800\\ud800"}}]]'
    ((s,),) = decode_json(body)
    assert (s["service"], s["name"], s["meta"]) == ("a\ufffdb", "\U0001f600", {"\ufffd": "\ufffd\ufffd"})
