"""The C chunk encoders (tracer/_cencode.c) write exactly the bytes of the
pure-Python encoders (msgpack's packer): same payloads for generated chunks,
including the values that send both down the sanitizing path."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.utils import assert_clean_output
from tracer import encoding
from tracer.span import MAX_VALUE_LEN, RECORD_LEN

pytestmark = pytest.mark.skipif(encoding._cencode is None, reason="tracer._cencode is not built or TRACER_PURE_PYTHON is set")

text = st.one_of(
    st.sampled_from(["", "web", "flask.request", "GET /users/<int:id>", "é", "日本", "😀"]),
    st.text(max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é"]), st.sampled_from([31, 32, 255, 256, 65535, 65536])),
)
number = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    # every boundary of msgpack's int forms, on both sides
    st.sampled_from([b + d for b in (0, 127, 255, 2**16 - 1, 2**32 - 1, 2**63 - 1) for d in (0, 1)]
                    + [b - d for b in (-32, -128, -(2**15), -(2**31), -(2**63) + 1) for d in (0, 1)]
                    + [2**64 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
# Meta values within MAX_VALUE_LEN: the pure-Python v0.4 encoder cuts a
# longer one and the C one leaves it (the C span cut it when set; the
# difference: tests/tracer/test_encoding_cut.py).
meta_text = text.filter(lambda value: len(value) <= MAX_VALUE_LEN)
# msgpack (>= 1.1) packs objects up to 1024 levels below the top one; a span
# field sits 2 levels down, so a value nested 1022 deep is the first it refuses.
MSGPACK_DEPTH_LIMIT = 1022


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


# Values the Python packer takes as they are: bytes (bin), nested lists (the
# limit itself is tested below: hypothesis cannot repr a value 1022 deep).
odd_value = st.one_of(st.binary(max_size=300), st.sampled_from([bytearray(b"\xff"), nested(3), [b"x", {"k": 1}]]))
# Falsy non-str service/type/duration: the v0.5 encoders' slow path sends "" / 0.
falsy = st.sampled_from([None, 0, False, 0.0, ""])


@st.composite
def chunks(draw: Any, odd: bool = False) -> list[Any]:
    trace_id = draw(st.integers(min_value=1, max_value=2**128 - 1))
    out: list[Any] = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        meta = draw(st.dictionaries(text, meta_text, max_size=5))
        metrics = draw(st.dictionaries(text, number, max_size=4))
        if odd:  # what the sanitizing path exists for
            meta.update(draw(st.dictionaries(st.sampled_from(["bad", "\ud800"]), st.sampled_from(["\udfff", "x"]), max_size=2)))
            metrics.update(draw(st.dictionaries(st.sampled_from(["huge", "neg"]), st.sampled_from([2**70, -(2**70)]), max_size=1)))
            meta.update(draw(st.dictionaries(st.sampled_from(["bin", "deep"]), odd_value, max_size=2)))
            metrics.update(draw(st.dictionaries(st.sampled_from(["deep"]), odd_value, max_size=1)))
        out += (
            trace_id,
            draw(u64),
            draw(u64),
            draw(st.one_of(falsy, text) if odd else st.one_of(st.none(), text)),
            draw(text),
            draw(text),
            draw(st.one_of(falsy, text) if odd else st.one_of(st.none(), text)),
            draw(st.integers(min_value=0, max_value=2**63 - 1)),
            draw(st.one_of(falsy, st.integers(min_value=0, max_value=2**40)) if odd else st.integers(min_value=0, max_value=2**40)),
            draw(st.sampled_from([0, 1])),
            meta,
            metrics,
        )
    return out


def both(payload: type, chunk_list: list[list[Any]], monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    def encode() -> bytes:
        p = payload()
        for chunk in chunk_list:
            assert p.put(chunk)
        return p.finish()

    c = encode()
    with monkeypatch.context() as m:
        m.setattr(encoding, "_cencode", None)
        python = encode()
    return c, python


@settings(max_examples=150, deadline=None)
@given(st.lists(chunks(), min_size=1, max_size=4))
@pytest.mark.parametrize("payload", [encoding.PayloadV04, encoding.PayloadV05])
def test_same_bytes_as_the_python_encoder(payload: type, chunk_list: list[list[Any]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        c, python = both(payload, chunk_list, monkeypatch)
    assert c == python


@settings(max_examples=60, deadline=None)
@given(st.lists(chunks(odd=True), min_size=1, max_size=3))
@pytest.mark.parametrize("payload", [encoding.PayloadV04, encoding.PayloadV05])
def test_same_bytes_on_the_sanitizing_path(payload: type, chunk_list: list[list[Any]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        c, python = both(payload, chunk_list, monkeypatch)
    assert c == python
    msgpack.unpackb(c, strict_map_key=False)  # well-formed


def test_a_decoded_v04_chunk_has_the_spans_fields() -> None:
    chunk = [(7 << 64) | 5, 1, 0, None, "n", "r", None, 10, 20, 0, {"k": "v"}, {"m": 1.5, "n": -3}]
    (span,) = msgpack.unpackb(encoding._cencode.encode_v04(chunk))
    assert span == {
        "trace_id": 5, "span_id": 1, "parent_id": 0, "service": "", "name": "n", "resource": "r", "type": "",
        "start": 10, "duration": 20, "error": 0, "meta": {"k": "v"}, "metrics": {"m": 1.5, "n": -3},
    }
    nan = msgpack.unpackb(encoding._cencode.encode_v04(chunk[:11] + [{"x": math.nan}]))[0]["metrics"]["x"]
    assert math.isnan(nan)


@pytest.mark.parametrize("bad", [[], [1] * (RECORD_LEN + 1), "not a list", None])
def test_malformed_chunks_raise_not_crash(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        encoding._cencode.encode_v04(bad)
    with pytest.raises((TypeError, ValueError)):
        encoding._cencode.encode_v05(bad, {"": 0}, lambda s: 0)


def test_an_object_msgpack_cannot_pack_raises_type_error() -> None:
    chunk = [1, 1, 0, "s", "n", "r", "t", 1, 1, 0, {"k": object()}, {}]
    with pytest.raises(TypeError):
        encoding._cencode.encode_v04(chunk)
    encoding._cencode.encode_v04(chunk[:10] + [{"k": nested(MSGPACK_DEPTH_LIMIT - 1)}, {}])
    with pytest.raises(ValueError):
        encoding._cencode.encode_v04(chunk[:10] + [{"k": nested(MSGPACK_DEPTH_LIMIT)}, {}])


@pytest.mark.parametrize("payload", [encoding.PayloadV04, encoding.PayloadV05])
@pytest.mark.parametrize("depth", [MSGPACK_DEPTH_LIMIT - 1, MSGPACK_DEPTH_LIMIT])
def test_nesting_at_msgpacks_limit_gives_the_same_bytes(payload: type, depth: int) -> None:
    # v0.5 meta values are table strings (a list is sanitized whole): nest in a metric there.
    meta = {"k": nested(depth)} if payload is encoding.PayloadV04 else {"k": "v"}
    chunk = [1, 1, 0, "s", "n", "r", "t", 1, 1, 0, meta, {"m": nested(depth)}]
    with pytest.MonkeyPatch.context() as monkeypatch:
        c, python = both(payload, [chunk], monkeypatch)
    assert c == python


def test_v05_meta_keys_that_sanitize_to_the_same_text_decode_the_same() -> None:
    """The one documented difference (docs/performance.md): two meta keys
    that clean to the same text (lone surrogates) are one map entry in
    Python, two entries with the same key in C; decoders keep the last,
    which is the value Python sends."""
    chunk = [1, 1, 0, "s", "n", "r", "t", 1, 1, 0, dict(zip(["a\ud800", "a\udfff"], ["1", "2"], strict=True)), {}]
    with pytest.MonkeyPatch.context() as monkeypatch:
        c, python = both(encoding.PayloadV05, [chunk], monkeypatch)
    assert msgpack.unpackb(c, strict_map_key=False) == msgpack.unpackb(python, strict_map_key=False)
    assert len(c) == len(python) + 2  # the extra (key, value) pair: two fixint indices


_CHANGED_DURING_ENCODING = r"""
import sys
import msgpack
from tracer import encoding

table = encoding._StringTable()
meta = {"a": "".join(["value-", "a"]), "b": "".join(["value-", "b"])}
metrics = {"m": 1.0}
before = (dict(meta), dict(metrics))
calls = 0

def add(value):
    # Another thread's late set_tag on the finished span, as if it ran while
    # the table's add() had the GIL released: keys removed (their strings
    # freed) and added, under the encoder's feet.
    global calls
    calls += 1
    if calls in (1, 4):
        meta.pop("a", None)
        meta.pop("b", None)
        for i in range(6):
            meta["late%d-%d" % (calls, i)] = "v" * (i + 1) + str(calls)
        metrics.pop("m", None)
        metrics["late%d" % calls] = 2.0
    return table.add(value)

chunk = [5, 1, 0, "svc", "n", "r", "web", 10, 20, 0, meta, metrics]
body = encoding._cencode.encode_v05(chunk, table.index, add)
(span,) = msgpack.unpackb(body, strict_map_key=False)
s = table.strings
got_meta = {s[k]: s[v] for k, v in span[9].items()}
got_metrics = {s[k]: v for k, v in span[10].items()}
assert (got_meta, got_metrics) == before, (got_meta, got_metrics)
print("ok")
"""


def test_v05_tags_changed_while_encoding_are_in_the_payload_or_not_never_half() -> None:
    # encode_v05 held borrowed meta keys and values across the table's add()
    # callback and wrote each map header from a size that had changed since:
    # a use-after-free and malformed msgpack. It encodes a snapshot now.
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _CHANGED_DURING_ENCODING],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONMALLOC": "debug"},
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    assert run.stdout.strip() == "ok"
    assert_clean_output(run.stderr)
