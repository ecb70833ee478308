"""The trace-level tags written by the C encoder (tracer/_cencode_tags.c):
``_cencode.encode_v04_item`` on the writer's chunk descriptor gives exactly
the bytes of ``processor._tag`` putting the tags into the span dicts followed
by the encoders (C and pure Python), and leaves the span dicts as they were;
what it refuses, the writer tags in Python (``processor.settle``)."""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer import encoding, processor
from tracer.encoding import PayloadV04
from tracer.span import RECORD_LEN

pytestmark = pytest.mark.skipif(encoding._cencode is None, reason="tracer._cencode is not built or TRACER_PURE_PYTHON is set")

# Keys the tags go under, so that the rare path (a tag already there, or two
# tags with one key) comes up often.
LEVEL_KEYS = ["env", "version", "language", "runtime-id", "process_id", "_sampling_priority_v1", "_dd.p.dm",
              "_dd.p.tid", "_dd.origin", "_dd.p.usr", "team"]
key = st.one_of(st.sampled_from(LEVEL_KEYS), st.text(max_size=12))
text = st.one_of(st.sampled_from(["", "prod", "1.2", "é", "😀"]), st.text(max_size=20))
number = st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(allow_nan=False))


def settings_of(env: Any, version: Any, tags: Any, runtime: str = "rt", pid: int = 4242) -> tuple[Any, ...]:
    return (env, version, tags, runtime, pid, True, *processor._TAG_KEYS)


@st.composite
def items(draw: Any) -> tuple[Any, ...]:
    spans = draw(st.integers(min_value=1, max_value=4))
    trace_id = draw(st.one_of(st.integers(min_value=0, max_value=2**64 - 1),
                              st.integers(min_value=2**64, max_value=2**128 - 1),
                              # the edges of the high half (0, 1, 2**63, 2**64 - 1) and of a signed low half
                              st.sampled_from([2**63, 2**64 - 1, 2**64, 2**127, 2**128 - 1])))
    chunk: list[Any] = []
    for i in range(spans):
        chunk += [trace_id, i + 1, 0, "svc", "op", "res", None, 10, 5, 0,
                  draw(st.dictionaries(key, text, max_size=4)), draw(st.dictionaries(key, number, max_size=3))]
    env = draw(st.sampled_from(["", "prod", None]))
    tags = draw(st.one_of(st.just({}), st.dictionaries(key, text, max_size=3)))
    root = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=spans - 1).map(lambda i: i * RECORD_LEN)))
    priority = draw(st.sampled_from([1, 2, 0, -1]))
    mechanism = None if priority <= 0 else draw(st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)))
    origin = draw(st.sampled_from([None, "", "synthetics"]))
    dd_tags = draw(st.one_of(st.just({}), st.dictionaries(key, text, max_size=3)))
    return (settings_of(env, draw(st.sampled_from(["", "1.2"])), tags), chunk, priority, root, mechanism, trace_id,
            origin, dd_tags)


def tagged_in_python(item: tuple[Any, ...]) -> list[Any]:
    """A copy of the chunk, with its span dicts tagged by the processor."""
    chunk = [copy.copy(v) if isinstance(v, dict) else v for v in item[1]]
    return processor.settle((item[0], chunk, *item[2:]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items())
def test_encoder_writes_the_bytes_the_processor_and_encoders_make(item: tuple[Any, ...]) -> None:
    before = copy.deepcopy(item[1])
    chunk = tagged_in_python(item)
    expected = encoding._cencode.encode_v04(chunk)
    assert PayloadV04()._encode(chunk) == expected, "the pure-Python encoder agrees"
    assert encoding._cencode.encode_v04_item(item) == expected
    assert item[1] == before, "the span dicts are left as they were"
    assert encoding._cencode.encode_v04_item((None, chunk)) == expected, "a (trace, chunk) pair is encoded as it is"


def test_a_one_span_trace_gets_every_tag_in_processor_order() -> None:
    """The usual case, decoded: the tags after the span's own, in the order
    the processor adds them (root ones, then the chunk's)."""
    chunk = [(5 << 64) | 7, 1, 0, "svc", "op", "res", "web", 10, 5, 0, {"a": "b"}, {"m": 1}]
    item = (settings_of("prod", "1.2", {"team": "core"}, "rt", 99), chunk, 2, 0, 4, (5 << 64) | 7, "synthetics",
            {"_dd.p.usr": "x"})
    (span,) = msgpack.unpackb(encoding._cencode.encode_v04_item(item))
    assert list(span["meta"].items()) == [
        ("a", "b"), ("env", "prod"), ("version", "1.2"), ("team", "core"), ("language", "python"), ("runtime-id", "rt"),
        ("_dd.p.dm", "-4"), ("_dd.p.tid", "0000000000000005"), ("_dd.origin", "synthetics"), ("_dd.p.usr", "x"),
    ]
    assert list(span["metrics"].items()) == [("m", 1), ("process_id", 99), ("_sampling_priority_v1", 2)]
    assert chunk[10] == {"a": "b"} and chunk[11] == {"m": 1}


@pytest.mark.parametrize(
    "change",
    [
        {4: "3"},  # a mechanism that is not an int
        {4: True},  # bool: the processor's table says "-1"
        {7: [("k", "v")]},  # dd_tags not a dict
        {5: -(1 << 64)},  # negative high half
        {5: 1 << 128},  # high half beyond 64 bits
        {3: 5},  # root not at a record
        {0: ("short",)},  # settings of the wrong size
    ],
)
def test_what_the_encoder_refuses_the_writer_tags_in_python(change: dict[int, Any]) -> None:
    chunk = [(1 << 64) | 2, 1, 0, "svc", "op", "res", None, 10, 5, 0, {}, {}]
    item = [settings_of("prod", "", {}), chunk, 1, 0, 1, (1 << 64) | 2, None, {}]
    for index, value in change.items():
        item[index] = value
    with pytest.raises((TypeError, ValueError, OverflowError)):
        encoding._cencode.encode_v04_item(tuple(item))
    assert chunk[10] == {} and chunk[11] == {}


def test_unusual_dicts_are_refused_not_misencoded() -> None:
    """A meta dict subclass (its setdefault may differ) is left to Python."""

    class Meta(dict):  # type: ignore[type-arg]
        pass

    chunk = [3, 1, 0, "svc", "op", "res", None, 10, 5, 0, Meta(a="b"), {}]
    with pytest.raises(TypeError):
        encoding._cencode.encode_v04_item((settings_of("", "", {}), chunk, 1, 0, None, 3, None, {}))
    with pytest.raises(TypeError):
        encoding._cencode.encode_v04_item((1, 2, 3))


def test_no_reference_leaks() -> None:
    """Refcounts of everything the descriptor holds are unchanged after many
    encodes, on both paths (fresh tags and tags already in the dicts)."""
    env, runtime, origin = "prod-" + str(os.getpid()), "rt-" + str(os.getpid()), "o-" + str(os.getpid())
    meta_fresh, meta_taken = {"a": "b"}, {"language": "ruby", "_dd.p.usr": "y"}
    dd_tags = {"_dd.p.usr": "x"}
    objects = [env, runtime, origin, meta_fresh, meta_taken, dd_tags]
    before = [sys.getrefcount(o) for o in objects]
    for meta in (meta_fresh, meta_taken):
        chunk = [(9 << 64) | 1, 1, 0, "svc", "op", "res", None, 10, 5, 0, meta, {}]
        item = (settings_of(env, "", {}, runtime), chunk, 1, 0, 2, (9 << 64) | 1, origin, dd_tags)
        for _ in range(1000):
            encoding._cencode.encode_v04_item(item)
        del chunk, item
    del meta
    assert [sys.getrefcount(o) for o in objects] == before


class _Interrupting(str):
    """A service whose truth test raises what ``except Exception`` lets through."""

    def __bool__(self) -> bool:
        raise KeyboardInterrupt


def test_put_many_in_c_stops_where_the_python_loop_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_cencode.put_many_v04`` (PayloadV04.put_many with the C encoder)
    adds the same entries, stops at the same index (an entry that does not
    encode, or does not fit) and counts the same as the pure-Python loop; an
    exception that is not an ``Exception`` goes through."""

    def chunk(span_id: int, service: Any = "svc") -> list[Any]:
        return [(1 << 64) | 5, span_id, 0, service, "op", "res", None, 10, 5, 0, {"a": "b"}, {}]

    settings = settings_of("prod", "", {})
    batch: list[Any] = [
        None,
        (None, chunk(1)),
        (settings, chunk(2), 1, 0, 0, (1 << 64) | 5, None, {}),
        None,
        (None, chunk(3) + chunk(4)),
        (None, chunk(5, service=object())),  # does not encode
        (None, chunk(6)),
    ]

    def run(limit: int, start: int) -> tuple[int, bytes, int, int, int]:
        payload = PayloadV04(limit)
        index = payload.put_many([tagged(item) for item in batch] if encoding._cencode is None else batch, start)
        return index, payload.finish(), payload.size, payload.traces, payload.spans

    def tagged(item: Any) -> Any:  # what the writer does without the C encoder: tags in the dicts
        return item if item is None or len(item) == 2 else (None, tagged_in_python(item))

    sizes = [len(encoding._cencode.encode_v04_item(item)) for item in batch[1:5] if item is not None]
    cases = [(1 << 30, 0), (1 << 30, 6), (1 << 30, 7), (5 + sum(sizes[:2]), 0), (5 + sum(sizes[:2]) - 1, 1), (4, 0)]
    in_c = [run(limit, start) for limit, start in cases]
    assert [r[0] for r in in_c] == [5, 7, 7, 4, 2, 1]
    monkeypatch.setattr(encoding, "_cencode", None)
    assert [run(limit, start) for limit, start in cases] == in_c
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):
        PayloadV04().put_many([(None, chunk(7, service=_Interrupting("svc")))])


class _Meddling(str):
    """A meta key that looks like the tag ``env`` to the dict (same hash)
    and changes things when compared with it."""

    def __init__(self, value: str) -> None:
        self.act = lambda: None

    def __hash__(self) -> int:
        return hash("env")

    def __eq__(self, other: object) -> bool:
        self.act()
        return str.__eq__(self, other)


@pytest.mark.parametrize("change", ["the chunk cleared", "a meta key removed", "a meta key added"])
def test_python_code_run_while_tagging_cannot_corrupt_the_output(change: str) -> None:
    """Looking up the tags in a span dict can run a key's ``__eq__``; what it
    changes (the chunk under the encoder, the dict whose size was counted)
    gives an error, which the writer answers by tagging the chunk in Python,
    not freed memory read or a map header that lies."""
    meddling = _Meddling("tag")
    meta = {meddling: "v", "a": "b"}
    chunk = [5, 1, 0, "svc", "op", "res", None, 10, 5, 0, meta, {}]
    meddling.act = {
        "the chunk cleared": chunk.clear,
        "a meta key removed": lambda: meta.pop("a", None),
        "a meta key added": lambda: meta.setdefault("c", "d"),
    }[change]
    item = (settings_of("prod", "", {}), chunk, 1, 0, 0, 5, None, {})
    with pytest.raises(RuntimeError, match="changed while it was encoded"):
        encoding._cencode.encode_v04_item(item)
