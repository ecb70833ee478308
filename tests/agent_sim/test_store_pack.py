"""The C packer that encodes stored trace chunks (``agent_sim._cdecode.packb``,
used by ``store.pack_chunk``) gives exactly ``msgpack.packb``'s bytes, or
hands the value back to msgpack (NotImplemented), which packs or raises."""

from __future__ import annotations

import collections
import importlib.util
import os
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sim import store
from agent_sim.decode import unpack_v04
from agent_sim.normalize import normalize_payload
from tests.utils import REPO

pytestmark = pytest.mark.skipif(store._fast_packb is None, reason="agent_sim._cdecode not built")


def outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(value)
    except Exception as exc:  # msgpack's own errors: the same ones through pack_chunk
        return "error", f"{type(exc).__name__}: {exc}"


def check(value: Any) -> None:
    fast = store._fast_packb(value)
    if fast is not NotImplemented:
        assert fast == msgpack.packb(value), value
    assert outcome(store.pack_chunk, value) == outcome(msgpack.packb, value)


_text = st.one_of(st.sampled_from(["", "a", "é", "\u20ac" * 11, "x" * 31, "x" * 32, "y" * 255, "y" * 256]),
                  st.text(max_size=40))
_ints = st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-(2**70), 2**70),
                  st.sampled_from([-(2**63) - 1, -(2**31) - 1, -(2**31), -32769, -32768, -129, -128, -33, -32,
                                   -1, 0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                                   2**64 - 1, 2**64]))
_scalars = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=True), _text, st.binary(max_size=300))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=20), st.lists(inner, max_size=20).map(tuple),
                            st.dictionaries(st.one_of(_text, _ints), inner, max_size=20)),
    max_leaves=100,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values)
def test_fast_pack_equals_msgpack(value: Any) -> None:
    check(value)


@pytest.mark.parametrize("value", [
    "\ud800", {"meta": {"k": "\udcff"}},  # lone surrogates: msgpack's error
    2**64, -(2**63) - 1, [1, 2**70],  # beyond 64 bits: msgpack's OverflowError
    bytearray(b"ab"), memoryview(b"ab"), {1, 2}, collections.OrderedDict(a=1), object(),  # not exact types
    [], {}, "x" * 65535, "x" * 65536, b"x" * 255, b"x" * 256, b"x" * 65536,  # length-format edges
    list(range(15)), list(range(16)), list(range(65536)), {str(i): i for i in range(16)},
    {str(i): i for i in range(65536)}, [1.5, -0.0, float("inf")],
])
def test_edge_values_same_outcome(value: Any) -> None:
    check(value)


def test_deep_nesting_is_msgpacks_to_refuse() -> None:
    for depth in (100, 600, 2000):
        value: Any = None
        for _ in range(depth):
            value = [value]
        check(value)


def test_stored_chunks_take_the_fast_path() -> None:
    # the receiver's own data (normalized spans of the benchmark's payloads)
    # must never fall back, or the store silently loses the speed-up
    spec = importlib.util.spec_from_file_location("bench_ingest", os.path.join(REPO, "benchmarks", "bench_ingest.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    traces, _dropped, _count = normalize_payload(unpack_v04(bench.make_payload(random.Random(3))))
    for spans in traces:
        fast = store._fast_packb(spans)
        assert fast is not NotImplemented
        assert fast == msgpack.packb(spans)
        assert msgpack.unpackb(fast, strict_map_key=False) == spans
