"""The C unpacker's map copies (agent_sim/_cdecode.c): a small map of
scalars whose exact bytes came earlier in the body is a copy of the dict
built then. The result stays msgpack's, every map its own dict (normalize
adds to a span's meta in place), keys interned; anything else is decoded
as before."""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import decode
from tests.agent_sim.test_decode_fast import check, plain, same

pytestmark = pytest.mark.skipif(decode._fast_unpackb is None, reason="agent_sim._cdecode not built")

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.sampled_from(["", "mysql", "db.system", "x" * 40, "y" * 300, "é"]), st.text(max_size=10),
    st.binary(max_size=8),
)
_key = st.one_of(st.sampled_from(["component", "span.kind", "a", "b"]), st.text(max_size=6),
                 st.integers(-5, 300), st.binary(max_size=3))
_small_map = st.dictionaries(_key, _scalar, max_size=6)
# maps at the cache's limits (32 entries; 2,048 bytes) and past them, nested (never copied)
_edge_map = st.sampled_from([
    {f"k{i}": i for i in range(32)}, {f"k{i}": i for i in range(33)},
    {"a": "z" * 2040}, {"a": "z" * 2050}, {"a": {"b": 1}}, {"a": [1, 2]}, {"a": msgpack.ExtType(1, b"x")},
])


def all_dicts(value: Any) -> list[dict]:
    out = []
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            out.append(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif type(v) in (tuple, list):
            stack.extend(v)
    return out


def check_copies(body: bytes) -> None:
    check(body)
    fast = decode._fast_unpackb(body)
    if fast is NotImplemented:
        return
    dicts = all_dicts(fast)
    assert len({id(d) for d in dicts}) == len(dicts)  # no dict shared
    for d in dicts:
        # a fresh equal string interns to k only if k is the interned one
        assert all(sys.intern((k + ".")[:-1]) is k for k in d if type(k) is str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps=st.lists(st.one_of(_small_map, _edge_map), min_size=1, max_size=6), data=st.data(),
       bin_type=st.booleans())
def test_repeated_maps_are_msgpacks_result_in_distinct_dicts(maps: list, data: st.DataObject,
                                                             bin_type: bool) -> None:
    # spans repeating a few maps in any order, as meta and metrics do
    picks = data.draw(st.lists(st.sampled_from(range(len(maps))), min_size=1, max_size=30))
    spans = [{"meta": maps[i], "n": k, "metrics": maps[picks[-1 - k]]} for k, i in enumerate(picks)]
    check_copies(msgpack.packb([spans, maps], use_bin_type=bin_type))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=_small_map, repeats=st.integers(2, 4), data=st.data())
def test_damaged_repeats_same_outcome(m: dict, repeats: int, data: st.DataObject) -> None:
    body = bytearray(msgpack.packb([m] * repeats, use_bin_type=False))
    edit = data.draw(st.sampled_from(["cut", "flip"]))
    at = data.draw(st.integers(0, len(body) - 1))
    if edit == "cut":  # often inside a later copy: its bytes end early
        body = body[:at]
    else:
        body[at] = data.draw(st.integers(0, 255))
    check_copies(bytes(body))


@pytest.mark.parametrize("body", [
    b"\x92\x81\xa1a\x01\x81\xa1a\x01",  # the same map twice
    b"\x92\x81\xa1a\x01\x81\xa1a",  # the second cut in its value
    b"\x92\x81\xa1a\x01\x81\xa1a\x02",  # the same but for the last byte
    b"\x92\x82\xa1a\x01\xa1b\x02\x81\xa1a\x01",  # the first's leading bytes, another count
    b"\x92\x81\xa1a\x01\x82\xa1a\x01\xa1b\x02",  # the first's bytes are the second's start
    b"\x92\x82\xa1a\x01\xa1a\x02\x82\xa1a\x01\xa1a\x02",  # a repeated key (the last value wins)
    b"\x93\x81\xa1a\x01\x81\xa1a\x01\x81\xa1a\xc1",  # then a reserved byte in a like map
    b"\x92\x81\xa1a\xc4\x01x\x81\xa1a\xc4\x01x",  # bin values
    b"\x92\x81\x01\xcb" + b"\x7f\xf8" + b"\x00" * 6 + b"\x81\x01\xcb" + b"\x7f\xf8" + b"\x00" * 6,  # NaN
])
def test_edge_repeats_same_outcome(body: bytes) -> None:
    check_copies(body)


def test_a_copy_is_its_own_dict() -> None:
    meta = {"component": "pymysql", "db.system": "mysql"}
    a, b, c = decode._fast_unpackb(msgpack.packb([meta, meta, meta]))
    a["sql.query"] = "SELECT 1"  # what normalize does to one span's meta
    assert same(b, meta) and same(c, meta) and b is not c
    assert same((a, b, c), plain(msgpack.packb([{**meta, "sql.query": "SELECT 1"}, meta, meta])))
