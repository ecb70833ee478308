"""STUB (to be replaced by the fast encoders). Contract:
    encode_v04(chunks: list[list[Span]]) -> bytes
    encode_v05(chunks: list[list[Span]]) -> bytes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgpack

if TYPE_CHECKING:
    from tracer.span import Span

_MASK64 = (1 << 64) - 1


def _span_v04(s: Span) -> dict:
    return {
        "trace_id": s.trace_id & _MASK64,
        "span_id": s.span_id,
        "parent_id": s.parent_id,
        "service": s.service or "",
        "name": s.name,
        "resource": s.resource,
        "type": s.span_type or "",
        "start": s.start_ns,
        "duration": s.duration_ns or 0,
        "error": s.error,
        "meta": s.meta,
        "metrics": s.metrics,
    }


def encode_v04(chunks: list[list[Span]]) -> bytes:
    return msgpack.packb([[_span_v04(s) for s in chunk] for chunk in chunks])


def encode_v05(chunks: list[list[Span]]) -> bytes:
    raise NotImplementedError
