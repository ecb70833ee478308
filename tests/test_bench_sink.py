"""The benchmarks' sink counts spans by walking each body with msgpack's
parser instead of building it: the counts must equal a full decode's, and a
truncated or overlong body must not be counted (the delivery check relies
on it)."""

from __future__ import annotations

import os
import sys

import msgpack
import pytest

from tests.utils import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import _sink  # noqa: E402


def _span(i: int) -> dict[str, object]:
    return {"trace_id": i, "span_id": i + 1, "parent_id": 0, "service": "s", "name": "n", "resource": "r",
            "type": "", "start": 1, "duration": 2, "error": 0, "meta": {"a": "x" * i}, "metrics": {"m": 1.5}}


@pytest.mark.parametrize("shape", [[], [0], [1], [3, 0, 101], [1] * 70_000])
def test_walking_counts_what_a_full_decode_counts(shape: list[int]) -> None:
    v04 = msgpack.packb([[_span(i) for i in range(n)] for n in shape])
    v05 = msgpack.packb([["s", "n"], [[[0] * 12 for _ in range(n)] for n in shape]])
    for path, body in (("/v0.4/traces", v04), ("/v0.5/traces", v05)):
        _sink._full_decode = True
        try:
            expected = _sink._count_datadog(path, body)
        finally:
            _sink._full_decode = False
        assert _sink._count_datadog(path, body) == expected == (len(shape), sum(shape))


def test_a_truncated_or_overlong_body_is_not_counted() -> None:
    body = msgpack.packb([[_span(1), _span(2)]])
    for bad in (body[:-1], body + b"\xc0", body[:1]):
        with pytest.raises((ValueError, msgpack.OutOfData)):
            _sink._count_datadog("/v0.4/traces", bad)
    with pytest.raises(ValueError, match="strings, traces"):
        _sink._count_datadog("/v0.5/traces", msgpack.packb([["s"], [], []]))
