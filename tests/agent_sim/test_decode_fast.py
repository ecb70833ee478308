"""The C unpacker (agent_sim/_cdecode.c) gives exactly msgpack's result, or
hands the body back to msgpack (NotImplemented): same values, same types
(tuple, not list; int, not bool), same errors through ``decode._unpack``."""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent_sim import decode
from agent_sim.decode import PayloadError

pytestmark = pytest.mark.skipif(decode._fast_unpackb is None, reason="agent_sim._cdecode not built")


def plain(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, unicode_errors="replace", strict_map_key=False, use_list=False)


def same(a: Any, b: Any) -> bool:
    """Equal with the same type at every level: the reprs of these types
    tell ``1`` from ``True`` and ``1.0``, a tuple from a list, str from bytes."""
    return repr(a) == repr(b)


def outcome(fn: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(body)
    except PayloadError as exc:
        return "error", str(exc)


def check(body: bytes) -> None:
    fast = decode._fast_unpackb(body)
    if fast is not NotImplemented:
        assert same(fast, plain(body)), body
    got, want = outcome(decode._unpack, body), outcome(decode._plain_unpack, body)
    assert got[0] == want[0] and same(got[1], want[1]), body


# Repeated short strings (the cache's hits), long ones (past its 128-byte
# limit), invalid UTF-8 (bytes packed as str with use_bin_type=False).
_words = st.sampled_from(["", "a", "service", "mysql.query", "é", "x" * 128, "y" * 129, "z" * 300])
_text = st.one_of(_words, st.text(max_size=40))
_keys = st.one_of(_text, st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True), _text,
    st.binary(max_size=300), st.sampled_from([b"\xff\xfe", b"ok\x80", "x" * 128, "a"]),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=20), st.dictionaries(_keys, inner, max_size=12)),
    max_leaves=200,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, bin_type=st.booleans(), single_float=st.booleans())
def test_fast_unpack_equals_msgpack(value: Any, bin_type: bool, single_float: bool) -> None:
    try:
        body = msgpack.packb(value, use_bin_type=bin_type, use_single_float=single_float)
    except OverflowError:  # a double beyond float32's range
        assume(False)
    check(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, data=st.data())
def test_damaged_bodies_same_outcome(value: Any, data: st.DataObject) -> None:
    body = bytearray(msgpack.packb(value, use_bin_type=False))
    edit = data.draw(st.sampled_from(["cut", "flip", "extra"]))
    if edit == "cut":
        body = body[:data.draw(st.integers(0, len(body)))]
    elif edit == "flip":
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    else:
        body += data.draw(st.binary(min_size=1, max_size=3))
    check(bytes(body))


@pytest.mark.parametrize("body", [
    b"", b"\xc1", b"\x91", b"\x90\x90", b"\x81\x80\x01",  # empty, reserved byte, truncated, extra, map key {}
    b"\xd4\x01\x02", b"\xc7\x01\x05x",  # ext types
    b"\xd0\x80", b"\xd1\x80\x00", b"\xd2\xff\xff\xff\xfe", b"\xd3\x80" + b"\x00" * 7, b"\xcf" + b"\xff" * 8,
    b"\xca\x3f\x80\x00\x00", b"\xa2\xff\xfe", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\x91" * 513 + b"\xc0", b"\x91" * 1100 + b"\xc0",  # past the C depth limit; past msgpack's
])
def test_edge_bodies_same_outcome(body: bytes) -> None:
    check(body)


def test_not_bytes_is_msgpacks_to_refuse() -> None:
    assert decode._fast_unpackb("not bytes") is NotImplemented
    with pytest.raises(PayloadError, match="TypeError"):
        decode._unpack("not bytes")  # type: ignore[arg-type]


def test_many_distinct_strings_past_the_cache() -> None:
    # more distinct strings than the cache keeps, then each again (hits and misses)
    words = [f"k{i}" for i in range(3000)]
    check(msgpack.packb([{w: w for w in words}, words, words[::-1]]))


def test_repeated_strings_are_shared_and_keys_interned() -> None:
    body = msgpack.packb([[{"service": "web-1", "meta": {"kind": "web-1"}}, {"service": "web-1"}]])
    ((a, b),) = decode._fast_unpackb(body)
    assert a["service"] is b["service"] is a["meta"]["kind"]
    assert all(sys.intern(key) is key for span in (a, b, a["meta"]) for key in span)
