"""Bytes → traces, leniently, like the Datadog agent's decoder.

Pure functions, no I/O. Called by the server's handler threads.

Lenient where the real agent is (its ``decoder_bytes.go`` / ``decoder_v05.go``):
a nil span field, meta value or metrics value takes its zero value, signed
and unsigned integers are interchangeable (negative ids wrap to uint64),
strings may arrive as bin and invalid UTF-8 is repaired (U+FFFD), unknown
span keys are skipped. Strict where it is: the body and each trace must be
arrays (nil is not), span keys are strings, integer fields take integers
only (no float, no bool), and in v0.5 a string index is an integer (not nil)
and meta/metrics are maps (not nil). Everything else raises
``PayloadError(reason)``, which the server turns into a 400 whose body is
the reason. One leniency beyond the agent's: a bool metrics value counts as
1.0/0.0 (the test agent accepts it too; refusing it would cost a type check
per value on the hot path). ``tests/agent_sim/test_decode_differential.py``
holds these rules against Datadog's test agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import msgpack

from agent_sim.model import MASK64, SPAN_FIELDS, Span, Trace

try:  # the optional C unpacker (setup.py builds it); msgpack alone without it
    from agent_sim._cdecode import unpackb as _fast_unpackb
except ImportError:  # pragma: no cover - no compiler at install time
    _fast_unpackb = None

# Hard caps below the msgpack defaults (which scale with the body size): a
# 25 MiB body could otherwise declare millions of empty containers.
MAX_SPANS = 2_000_000
_INT64 = 1 << 63
_FIELDS = frozenset(SPAN_FIELDS)
_ARRAYS = (tuple, list)  # msgpack arrays arrive as tuples, JSON arrays as lists


class PayloadError(ValueError):
    """The body cannot be read as a trace payload; ``str(exc)`` names the problem."""


def _unpack(body: bytes) -> Any:
    """``body`` unpacked (arrays as tuples: cheaper to build than lists).

    The C unpacker gives msgpack's result with a payload's repeated short
    strings built once (keys, services, names, tag values: about half the
    decode's instructions); anything it does not handle (ext types, errors)
    it hands back as NotImplemented, and msgpack decides."""
    if _fast_unpackb is not None:
        out = _fast_unpackb(body)
        if out is not NotImplemented:
            return out
    return _plain_unpack(body)


def _plain_unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, unicode_errors="replace", strict_map_key=False,
                               use_list=False)
    except msgpack.ExtraData:
        raise PayloadError("msgpack: extra bytes after the payload") from None
    except msgpack.exceptions.StackError:
        raise PayloadError("msgpack: nesting too deep") from None
    except msgpack.OutOfData:
        raise PayloadError("msgpack: truncated body (incomplete input)") from None
    except (ValueError, msgpack.UnpackException) as exc:
        # FormatError, oversized headers; unpackb reports truncation as a ValueError.
        if "incomplete input" in str(exc):
            raise PayloadError("msgpack: truncated body (incomplete input)") from None
        name = type(exc).__name__
        raise PayloadError(f"msgpack: cannot decode body ({name}: {exc})") from None
    except Exception as exc:  # TypeError on unhashable map keys, RecursionError, ...
        raise PayloadError(f"msgpack: cannot decode body ({type(exc).__name__}: {exc})") from None


def _uint(value: Any, field: str) -> int:
    t = type(value)
    if t is int and -_INT64 <= value <= MASK64:
        return value & MASK64 if value < 0 else value
    if value is None:
        return 0
    raise PayloadError(f"span field {field!r}: expected an integer, got {_tname(value)}")


def _int(value: Any, field: str) -> int:
    t = type(value)
    if t is int and -_INT64 <= value <= MASK64:
        return value - (1 << 64) if value >= _INT64 else value
    if value is None:
        return 0
    raise PayloadError(f"span field {field!r}: expected an integer, got {_tname(value)}")


def _str(value: Any, field: str) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    raise PayloadError(f"span field {field!r}: expected a string, got {_tname(value)}")


def _tname(value: Any) -> str:
    if value is None:
        return "nil"
    return {dict: "map", list: "array", tuple: "array", str: "string", bytes: "bin", bool: "bool",
            int: "integer", float: "float"}.get(type(value), type(value).__name__)


def _meta(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise PayloadError(f"span field 'meta': expected a map, got {_tname(value)}")
    for k, v in value.items():
        if type(k) is not str or type(v) is not str:
            # Slow path only when something is off: repair bin, reject the rest.
            return {_str(k, "meta key"): _str(v, "meta value") for k, v in value.items()}
    return value


def _metrics(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise PayloadError(f"span field 'metrics': expected a map, got {_tname(value)}")
    for k, v in value.items():
        tv = type(v)
        if type(k) is not str or (tv is not float and tv is not int):
            out = {}
            for k2, v2 in value.items():
                if type(v2) not in (float, int):
                    if v2 is None:
                        v2 = 0.0
                    elif type(v2) is bool:
                        v2 = float(v2)
                    else:
                        raise PayloadError(f"span field 'metrics': value for {k2!r} is {_tname(v2)}, not a number")
                out[_str(k2, "metrics key")] = v2
            return out
    return value


get_fields = itemgetter(*SPAN_FIELDS)  # a span map's 12 fields, in SPAN_FIELDS order (KeyError if one is missing)


def wire_typed(fields: tuple) -> bool:
    """True when ``get_fields(m)`` has the final wire types (what our tracer
    sends): ints in range, strings, and dicts for meta and metrics. The
    elements of meta and metrics are the caller's to check."""
    tid, sid, pid, service, name, resource, type_, start, duration, error, meta, metrics = fields
    return (type(tid) is int and type(sid) is int and type(pid) is int and type(start) is int
            and type(duration) is int and type(error) is int and type(service) is str
            and type(name) is str and type(resource) is str and type(type_) is str
            and type(meta) is dict and type(metrics) is dict
            and tid >= 0 and sid >= 0 and pid >= 0 and start < _INT64 and duration < _INT64)


def _well_formed(m: dict) -> bool:
    """True when ``m`` already has exactly the 12 fields with their final types
    (what our tracer sends): then it is used as is, no per-field rebuild."""
    try:
        fields = get_fields(m)
        if not wire_typed(fields):
            return False
        meta, metrics = fields[10], fields[11]
        # C-speed element checks: join() rejects non-str, sum() non-numbers.
        "".join(meta)
        "".join(meta.values())
        "".join(metrics)
        sum(metrics.values())
    except (KeyError, TypeError):
        return False
    return True


def decode_span(m: Any) -> Span:
    """One v0.4 span map → a span dict with the wire types (``m`` itself when
    it already is one). Raises PayloadError."""
    if type(m) is dict and len(m) == 12 and m.keys() == _FIELDS and _well_formed(m):
        return m
    if type(m) is not dict:
        raise PayloadError(f"v0.4: a span must be a map, got {_tname(m)}")
    if not m.keys() <= _FIELDS:  # unknown keys are skipped, but must be strings (or bin)
        try:
            "".join(m)  # C speed: str keys only
        except TypeError:
            for key in m:
                if type(key) is not str and type(key) is not bytes:
                    raise PayloadError(f"v0.4: span keys must be strings, got {_tname(key)}") from None
    get = m.get
    return {
        "trace_id": _uint(get("trace_id"), "trace_id"),
        "span_id": _uint(get("span_id"), "span_id"),
        "parent_id": _uint(get("parent_id"), "parent_id"),
        "service": _str(get("service"), "service"),
        "name": _str(get("name"), "name"),
        "resource": _str(get("resource"), "resource"),
        "type": _str(get("type"), "type"),
        "start": _int(get("start"), "start"),
        "duration": _int(get("duration"), "duration"),
        "error": _int(get("error"), "error"),
        "meta": _meta(get("meta")),
        "metrics": _metrics(get("metrics")),
    }


def _payload_v04(payload: Any, version: str) -> Sequence[Any]:
    if type(payload) not in _ARRAYS:
        raise PayloadError(f"{version}: the body must be an array of traces, got {_tname(payload)}")
    return payload


def check_trace(trace: Any, version: str) -> None:
    """Raise PayloadError unless ``trace`` is an array (nil is not)."""
    if type(trace) not in _ARRAYS:
        raise PayloadError(f"{version}: a trace must be an array of spans, got {_tname(trace)}")


def checked_traces(traces: Any, version: str) -> Iterator[Any]:
    """The payload's traces, each checked to be an array; PayloadError past
    ``MAX_SPANS`` spans in all."""
    count = 0
    for trace in traces:
        check_trace(trace, version)
        count += len(trace)
        if count > MAX_SPANS:
            raise PayloadError(f"{version}: more than {MAX_SPANS} spans in one payload")
        yield trace


def _traces_v04(payload: Any, version: str) -> list[Trace]:
    payload = _payload_v04(payload, version)
    traces: list[Trace] = []
    span = decode_span
    fields = _FIELDS
    well_formed = _well_formed
    for trace in checked_traces(payload, version):
        # the well-formed test inline: one call less per span on the common path
        traces.append([s if type(s) is dict and len(s) == 12 and s.keys() == fields and well_formed(s) else span(s)
                       for s in trace])
    return traces


def decode_v04(body: bytes) -> list[Trace]:
    """A v0.4 msgpack body → traces (lists of span dicts). Raises PayloadError."""
    return _traces_v04(_unpack(body), "v0.4")


def unpack_v04(body: bytes) -> Sequence[Any]:
    """A v0.4 msgpack body → its array of traces, unpacked but not checked
    further: the ingest path hands it to ``normalize.normalize_payload``,
    which applies this module's rules (``check_trace``, ``decode_span``) to
    each trace and span while it normalizes them, in one pass per span.
    Raises PayloadError."""
    return _payload_v04(_unpack(body), "v0.4")


def _json_int(text: str) -> int | float:
    # JSON has no integer width; msgpack cannot carry more than 64 bits, so
    # an out-of-range integer becomes a float (rejected for ids, kept as a metric).
    value = int(text)
    return value if -_INT64 <= value <= MASK64 else float(value)


# A \u escape of a UTF-16 surrogate. json.loads pairs them, but keeps a lone
# one in the str, which nothing downstream (msgpack, SQLite) can encode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _repair_surrogates(value: Any) -> Any:
    """Each lone surrogate → U+FFFD, as Go's encoding/json does."""
    t = type(value)
    if t is str:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if t is list:
        return [_repair_surrogates(v) for v in value]
    if t is dict:
        return {_repair_surrogates(k): _repair_surrogates(v) for k, v in value.items()}
    return value


def decode_json(body: bytes) -> list[Trace]:
    """A v0.4 body sent as JSON (Content-Type: application/json)."""
    try:
        payload = json.loads(body.decode("utf-8", "replace"), parse_int=_json_int)
        if _SURROGATE_ESCAPE.search(body):
            payload = _repair_surrogates(payload)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"json: cannot decode body ({exc})") from None
    return _traces_v04(payload, "v0.4 json")


def decode_v05(body: bytes) -> list[Trace]:
    """A v0.5 body ``[string_table, traces]`` → traces. Raises PayloadError."""
    payload = _unpack(body)
    if type(payload) not in _ARRAYS or len(payload) != 2:
        raise PayloadError(f"v0.5: the body must be an array of 2 elements [strings, traces], got {_tname(payload)}"
                           + (f" of {len(payload)}" if type(payload) in _ARRAYS else ""))
    strings, raw_traces = payload
    if type(strings) not in _ARRAYS:
        raise PayloadError(f"v0.5: the string table must be an array, got {_tname(strings)}")
    table = [_str(s, "string table entry") for s in strings]
    if type(raw_traces) not in _ARRAYS:
        raise PayloadError(f"v0.5: traces must be an array, got {_tname(raw_traces)}")
    n = len(table)

    def ref(value: Any, field: str) -> str:
        if type(value) is not int:
            raise PayloadError(f"v0.5: {field} must be a string index, got {_tname(value)}")
        if value < 0 or value >= n:
            raise PayloadError(f"v0.5: {field} string index {value} out of range (table has {n} entries)")
        return table[value]

    traces: list[Trace] = []
    count = 0
    for trace in raw_traces:
        if type(trace) not in _ARRAYS:
            raise PayloadError(f"v0.5: a trace must be an array of spans, got {_tname(trace)}")
        count += len(trace)
        if count > MAX_SPANS:
            raise PayloadError(f"v0.5: more than {MAX_SPANS} spans in one payload")
        spans: Trace = []
        for s in trace:
            if type(s) not in _ARRAYS or len(s) != 12:
                got = f"an array of {len(s)}" if type(s) in _ARRAYS else _tname(s)
                raise PayloadError(f"v0.5: a span must be an array of 12 elements, got {got}")
            meta_raw, metrics_raw = s[9], s[10]
            if type(meta_raw) is not dict:
                raise PayloadError(f"v0.5: span meta must be a map, got {_tname(meta_raw)}")
            if type(metrics_raw) is not dict:
                raise PayloadError(f"v0.5: span metrics must be a map, got {_tname(metrics_raw)}")
            meta = {ref(k, "meta key"): ref(v, "meta value") for k, v in meta_raw.items()}
            metrics: dict[str, float] = {}
            for k, v in metrics_raw.items():
                if type(v) not in (int, float):
                    if v is None or type(v) is bool:
                        v = float(v or 0)
                    else:
                        raise PayloadError(f"v0.5: span metrics value must be a number, got {_tname(v)}")
                metrics[ref(k, "metrics key")] = v
            spans.append({
                "trace_id": _uint(s[3], "trace_id"),
                "span_id": _uint(s[4], "span_id"),
                "parent_id": _uint(s[5], "parent_id"),
                "service": ref(s[0], "service"),
                "name": ref(s[1], "name"),
                "resource": ref(s[2], "resource"),
                "type": ref(s[11], "type"),
                "start": _int(s[6], "start"),
                "duration": _int(s[7], "duration"),
                "error": _int(s[8], "error"),
                "meta": meta,
                "metrics": metrics,
            })
        traces.append(spans)
    return traces
