"""v0.4 / v0.5 encoders: exact shapes (DESIGN "Wire compatibility"), decoded back
with plain msgpack."""

from __future__ import annotations

import collections
import enum
from typing import Any

import msgpack
import pytest

from tests.conftest import SpanSink
from tracer import encoding, tracer
from tracer.encoding import PayloadV04, PayloadV05, TraceTooBig, encode_v04, encode_v05, v05_to_v04
from tracer.span import records

_MASK64 = (1 << 64) - 1
V04_KEYS = {
    "trace_id",
    "span_id",
    "parent_id",
    "service",
    "name",
    "resource",
    "type",
    "start",
    "duration",
    "error",
    "meta",
    "metrics",
}


def spans_to_v04(chunks: list[list[Any]]) -> list[list[dict[str, Any]]]:
    """What DESIGN says each span must look like on the wire."""
    return [
        [
            {
                "trace_id": s.trace_id & _MASK64,
                "span_id": s.span_id,
                "parent_id": s.parent_id,
                "service": s.service or "",
                "name": s.name,
                "resource": s.resource,
                "type": s.span_type or "",
                "start": s.start_ns,
                "duration": s.duration_ns,
                "error": s.error,
                "meta": s.meta,
                "metrics": s.metrics,
            }
            for s in chunk
        ]
        for chunk in chunks
    ]


def flat(chunks: list[list[Any]]) -> list[list[Any]]:
    """Span views back to the flat records the encoders take."""
    return [[value for span in chunk for value in span] for chunk in chunks]


def v05_to_dicts(body: bytes) -> list[list[dict[str, Any]]]:
    strings, traces = msgpack.unpackb(body, strict_map_key=False)
    assert isinstance(strings, list) and all(isinstance(s, str) for s in strings)
    assert strings[0] == ""
    assert len(strings) == len(set(strings)), "the string table has no duplicates"
    out = []
    for trace in traces:
        spans = []
        for s in trace:
            assert isinstance(s, list) and len(s) == 12
            spans.append(
                {
                    "service": strings[s[0]],
                    "name": strings[s[1]],
                    "resource": strings[s[2]],
                    "trace_id": s[3],
                    "span_id": s[4],
                    "parent_id": s[5],
                    "start": s[6],
                    "duration": s[7],
                    "error": s[8],
                    "meta": {strings[k]: strings[v] for k, v in s[9].items()},
                    "metrics": {strings[k]: v for k, v in s[10].items()},
                    "type": strings[s[11]],
                }
            )
        out.append(spans)
    return out


@pytest.fixture
def chunks(test_spans: SpanSink) -> list[list[Any]]:
    with tracer.trace("root", service="svc", resource="GET /ünï", span_type="web") as root:
        root.set_tag("unicode", "✓ ünïcode 🚀")
        root.set_tag("empty", "")
        root.set_metric("float", 0.5)
        root.set_metric("int", 7)
        root.set_metric("negative", -3)
        with tracer.trace("child", service=None) as child:
            child.span_type = None
        try:
            with tracer.trace("boom"):
                raise KeyError("x")
        except KeyError:
            pass
    with tracer.trace("second", service="other") as second:
        second.service = None  # encoded as ""
    assert root.trace_id >> 64, "128-bit trace id"
    return test_spans.processed()


def test_v04_round_trip(chunks: list[list[Any]]) -> None:
    decoded = msgpack.unpackb(encode_v04(flat(chunks)))
    assert decoded == spans_to_v04(chunks)
    for trace in decoded:
        for span in trace:
            assert set(span) == V04_KEYS
            assert type(span["error"]) is int and type(span["duration"]) is int
            assert 0 <= span["trace_id"] <= _MASK64
    first = decoded[0][0]
    assert first["meta"]["_dd.p.tid"] == f"{chunks[0][0].trace_id >> 64:016x}"
    assert decoded[1][0]["service"] == "" and decoded[0][0]["type"] in ("", "web")
    by_name = {s["name"]: s for t in decoded for s in t}
    assert by_name["root"]["meta"]["unicode"] == "✓ ünïcode 🚀"
    assert by_name["root"]["meta"]["empty"] == ""
    assert by_name["root"]["metrics"]["int"] == 7 and by_name["root"]["metrics"]["float"] == 0.5
    assert by_name["child"]["type"] == ""
    assert by_name["boom"]["error"] == 1 and by_name["boom"]["meta"]["error.type"] == "builtins.KeyError"


def test_v05_round_trip(chunks: list[list[Any]]) -> None:
    assert v05_to_dicts(encode_v05(flat(chunks))) == spans_to_v04(chunks)


def test_v05_to_v04_conversion(chunks: list[list[Any]]) -> None:
    assert v05_to_v04(encode_v05(flat(chunks))) == encode_v04(flat(chunks))


def test_empty_and_large_counts(test_spans: SpanSink) -> None:
    assert msgpack.unpackb(encode_v04([])) == []
    assert msgpack.unpackb(encode_v05([])) == [[""], []]
    for _ in range(70000 // 7):  # > 65535 spans and > 15 traces exercise every array header size
        with tracer.trace("r"):
            for _ in range(6):
                with tracer.trace("c"):
                    pass
    with tracer.trace("wide"):
        for _ in range(20):
            with tracer.trace("leaf"):
                pass
    chunks = test_spans.processed()
    decoded = msgpack.unpackb(encode_v04(flat(chunks)))
    assert len(decoded) == len(chunks) and len(decoded[-1]) == 21
    assert v05_to_dicts(encode_v05(flat(chunks))) == decoded


def test_zero_ids_and_limits_of_uint64(test_spans: SpanSink) -> None:
    with tracer.trace("edge") as span:
        span.span_id = _MASK64
    (chunk,) = test_spans.processed()
    chunk[0] = chunk[0]._replace(trace_id=(_MASK64 << 64) | _MASK64)
    (trace,) = msgpack.unpackb(encode_v04(flat([chunk])))
    assert trace[0]["trace_id"] == _MASK64 and trace[0]["span_id"] == _MASK64 and trace[0]["parent_id"] == 0
    (trace5,) = v05_to_dicts(encode_v05(flat([chunk])))
    assert trace5 == trace


@pytest.mark.parametrize("payload_cls", [PayloadV04, PayloadV05])
def test_payload_limit(test_spans: SpanSink, payload_cls: Any) -> None:
    for i in range(10):
        with tracer.trace("t") as span:
            span.set_tag("blob", str(i) * 1000)
    chunks = test_spans.processed()
    payload = payload_cls(limit=4000)
    added = [payload.put(c) for c in flat(chunks[:5])]
    assert added[:2] == [True, True] and added[-1] is False
    body = payload.finish()
    assert len(body) <= 4000
    decoded = msgpack.unpackb(body, strict_map_key=False)
    traces = decoded[1] if payload_cls is PayloadV05 else decoded
    assert len(traces) == added.count(True) == payload.traces
    tiny = payload_cls(limit=500)
    with pytest.raises(TraceTooBig):
        tiny.put(flat(chunks)[0])


def test_unencodable_values_are_coerced(test_spans: SpanSink) -> None:
    with tracer.trace("odd") as span:
        span.meta["obj"] = object()  # type: ignore[assignment]
        span.meta["surrogate"] = "\udcff"
        span.metrics["huge"] = 1 << 80
    chunks = test_spans.processed()
    (v4,) = msgpack.unpackb(encode_v04(flat(chunks)))
    assert v4[0]["meta"]["obj"].startswith("<object object at") and v4[0]["meta"]["surrogate"] == "?"
    assert v4[0]["metrics"]["huge"] == float(1 << 80)
    assert v05_to_dicts(encode_v05(flat(chunks))) == [v4]


class _Str(str):
    pass


class _Level(enum.IntEnum):
    HIGH = 7


def _odd_types_chunk() -> list[Any]:
    """Two spans whose fields are subclasses of str, int, float and dict, and
    a tuple: what the v0.4 encoder's strict packer refuses."""
    tid = (5 << 64) | 9
    return [
        tid, 1, 0, _Str("svc"), "op", _Str("res"), None, 10, 20, 0,
        collections.OrderedDict([(_Str("k"), _Str("v")), ("t", "x")]), {"e": _Level.HIGH, "b": True},
        tid, 2, 1, None, _Str("child"), "r", "web", 11, 5, 1,
        {"tuple": ("a", 1)}, collections.defaultdict(float, {"f": 1.5}),
    ]  # fmt: skip


def _exact_types_chunk() -> list[Any]:
    tid = (5 << 64) | 9
    return [
        tid, 1, 0, "svc", "op", "res", None, 10, 20, 0, {"k": "v", "t": "x"}, {"e": 7, "b": True, "f": -1.5},
        tid, 2, 1, None, "child", "r", "web", 2**64 - 1, 5, 1, {"bin": b"\xff"}, {"n": -(2**63)},
    ]  # fmt: skip


@pytest.mark.parametrize("make", [_exact_types_chunk, _odd_types_chunk])
def test_v04_python_encoder_writes_msgpacks_default_bytes(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Differential: the v0.4 Python encoder (strict packer, refilled span maps,
    # msgpack's default packer for what the strict one refuses) against the
    # plain reference encoding of the same records; and the C encoder, built.
    chunk = make()
    expected = msgpack.packb(spans_to_v04([records(chunk)]))
    if encoding._cencode is not None:
        assert encode_v04([make()]) == expected
    monkeypatch.setattr(encoding, "_cencode", None)
    assert encode_v04([chunk]) == expected
    payload = PayloadV04()  # the strict packer is reused after a refusal
    assert payload.put(make()) and payload.put(_exact_types_chunk())
    assert payload.finish() == encode_v04([make(), _exact_types_chunk()])


@pytest.mark.parametrize("payload_cls", [PayloadV04, PayloadV05])
def test_put_many_writes_what_put_writes_and_stops_where_put_must_take_over(
    test_spans: SpanSink, payload_cls: Any
) -> None:
    """``put_many`` over the writer's batch (``(trace, chunk)`` pairs, None
    skipped) gives the bytes of one ``put`` per chunk; it stops, returning
    the index, at a chunk that does not fit or does not encode as it is (left
    to ``put``: its fallback or a new payload), and resumes from ``start``."""
    for i in range(8):
        with tracer.trace("t", service=f"s{i % 3}") as span:
            span.set_tag("blob", str(i) * 300)
    with tracer.trace("odd") as span:
        span.meta["obj"] = object()  # type: ignore[assignment]
    chunks = flat(test_spans.processed())
    batch: list[Any] = [(None, c) for c in chunks]
    batch[2] = batch[5] = None
    one_by_one = payload_cls()
    for item in batch:
        if item is not None:
            one_by_one.put(item[1])
    expected = one_by_one.finish()

    payload = payload_cls()
    stop = payload.put_many(batch)
    # v0.4 encodes in one loop and leaves the fallback to put; v0.5 puts each.
    assert stop == (8 if payload_cls is PayloadV04 else len(batch))
    if stop < len(batch):
        assert payload.put(batch[stop][1])
        assert payload.put_many(batch, stop + 1) == len(batch)
    assert (payload.traces, payload.spans) == (one_by_one.traces, one_by_one.spans)
    assert payload.finish() == expected

    reference = payload_cls(limit=1700)
    fits = [reference.put(item[1]) for item in batch[:8] if item is not None]
    limited = payload_cls(limit=1700)
    stop = limited.put_many(batch[:8])
    assert 0 < stop < 8 and not limited.put(batch[stop][1]), "full: put agrees"
    assert limited.traces == sum(item is not None for item in batch[:stop]) == fits.index(False)
    assert limited.finish() == reference.finish()
    assert payload_cls().put_many([]) == 0 and payload_cls().put_many([None, None]) == 2
