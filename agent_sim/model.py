"""Span and trace shapes shared by the receiver's modules, and id helpers.

Inside agent_sim a span is a plain dict with the v0.4 wire keys
(``trace_id``, ``span_id``, ``parent_id`` as unsigned 64-bit ints, ``start``
and ``duration`` in ns, ``error`` 0/1, ``meta`` str→str, ``metrics``
str→number). Plain dicts keep decode and re-encode in msgpack's C code.
The JSON API renders ids as lowercase hex strings (DESIGN "Ids").
"""

from __future__ import annotations

from typing import Any

MASK64 = (1 << 64) - 1
SPAN_FIELDS = ("trace_id", "span_id", "parent_id", "service", "name", "resource", "type",
               "start", "duration", "error", "meta", "metrics")

Span = dict[str, Any]
Trace = list[Span]


def trace_id_hex(low: int, high_hex: str | None) -> str:
    """The 32-hex form of a trace id from its wire low half and ``_dd.p.tid``."""
    high = 0
    if high_hex:
        try:
            high = int(high_hex, 16) & MASK64
        except ValueError:
            high = 0
    return f"{high:016x}{low & MASK64:016x}"


def span_id_hex(value: int) -> str:
    return f"{value & MASK64:016x}"


def parse_trace_id(text: str) -> list[int]:
    """Candidate low 64 bits of a trace id given as 32 hex, 16 hex or decimal;
    empty if malformed.

    A 16- or 32-digit string is read as hex first (the forms the API shows)
    and, when it is all digits, also as decimal: the caller tries each."""
    text = text.strip().lower()
    if not text or len(text) > 40:
        return []
    out = []
    if len(text) in (16, 32):
        try:
            out.append(int(text[-16:], 16))
        except ValueError:
            pass
    if text.isdigit():
        value = int(text)
        if value <= MASK64 and value not in out:
            out.append(value)
    return out


def to_signed(value: int) -> int:
    """uint64 → int64 for SQLite INTEGER columns."""
    return value - (1 << 64) if value >= (1 << 63) else value


def span_json(span: Span, high_hex: str | None) -> dict[str, Any]:
    """One span as the JSON API shows it (ids as strings, parent null on a root)."""
    parent = span["parent_id"]
    return {
        "trace_id": trace_id_hex(span["trace_id"], span["meta"].get("_dd.p.tid", high_hex)),
        "span_id": span_id_hex(span["span_id"]),
        "parent_id": span_id_hex(parent) if parent else None,
        "service": span["service"],
        "name": span["name"],
        "resource": span["resource"],
        "type": span["type"],
        "start_ns": span["start"],
        "duration_ns": span["duration"],
        "error": span["error"],
        "meta": span["meta"],
        "metrics": span["metrics"],
    }
