"""Per-trace normalization, as the Datadog agent's normalizer does it.

Pure functions, called on the handler thread after decode. Limits (DESIGN
"Wire compatibility"): service and name ≤ 100 bytes, resource ≤ 5000, meta
keys ≤ 200, meta values ≤ 25000 — truncated on a UTF-8 boundary, never
rejected. Empty service/name get the agent's defaults, an empty resource
takes the name. A trace with a zero trace or span id, or spans of different
trace ids, is dropped (the reason is returned for counting).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agent_sim.decode import checked_traces, decode_span, get_fields
from agent_sim.model import Span, Trace
from sql_obfuscation import obfuscate_error_message, obfuscate_sql

try:  # the optional C normalization of a chunk's common case (setup.py builds it)
    from agent_sim._cdecode import normalize_clean as _fast_normalize
except ImportError:  # pragma: no cover - no compiler at install time
    _fast_normalize = None

MAX_SERVICE = 100
MAX_NAME = 100
MAX_TYPE = 100
MAX_RESOURCE = 5000
MAX_META_KEY = 200
MAX_META_VALUE = 25000
DEFAULT_SERVICE = "unnamed-service"
DEFAULT_NAME = "unnamed_operation"
_YEAR_2000_NS = 946_684_800 * 10**9
_MAX_INT64 = (1 << 63) - 1
_INT64 = 1 << 63
_VALID_STATUS = frozenset(str(code) for code in range(100, 600))
# SQL may hide in these besides the resource; they are stored obfuscated too.
_SQL_META_KEYS = ("sql.query", "db.statement")


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    if len(text) * 4 <= limit:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def _fix_meta(meta: dict[str, str]) -> dict[str, str]:
    """Truncated copy; called only when some key or value may be too long."""
    return {truncate(k, MAX_META_KEY): truncate(v, MAX_META_VALUE) for k, v in meta.items()}


def _status_ok(value: str) -> bool:
    try:
        code = int(value)
    except ValueError:
        return False
    return 100 <= code <= 599


def normalize_trace(spans: Trace) -> str | None:
    """Normalize one decoded trace chunk in place.

    Returns None when the trace is kept, else the reason it must be dropped.
    Also copies ``_dd.p.tid`` from whichever span carries it to every span,
    and obfuscates SQL of ``type == "sql"`` spans."""
    out = normalize_chunk(spans)
    if isinstance(out, str):
        return out
    spans[:] = out  # spans decoded leniently were rebuilt
    return None


def normalize_payload(traces: Sequence[Any], version: str = "v0.4") -> tuple[list[Trace], int, int]:
    """Check and normalize every trace of a payload: ``(kept traces, dropped
    count, span count)``.

    ``traces`` is a body's array of traces, either only unpacked
    (``decode.unpack_v04``) or already decoded. Raises PayloadError, with the
    reason decode gives, if any trace or span of the payload (dropped traces
    included) cannot be read."""
    kept: list[Trace] = []
    dropped = 0
    count = 0
    memo: dict[str, str] = {}  # the payload's SQL resources obfuscated (see normalize_chunk)
    for trace in checked_traces(traces, version):
        count += len(trace)
        out = normalize_chunk(trace, memo)
        if isinstance(out, str):
            dropped += 1
        else:
            kept.append(out)
    return kept, dropped, count


# Checking a span and normalizing it are one pass over its fields (each alone
# cost as much bytecode as msgpack takes to decode the span). The common case
# — every field with its wire type and nothing to fix — is decided with one
# field fetch and decode's ``wire_typed`` tests (inline); anything else goes to decode's lenient
# ``decode_span`` or to ``_apply_limits``. Meta and metrics keys already
# seen to be short strings are remembered (bounded), so a span's key check is
# one set comparison.
_KNOWN_KEYS_MAX = 4096
_known_keys: set[str] = set()


def normalize_chunk(trace: Sequence[Any], memo: dict[str, str] | None = None) -> Trace | str:
    """One chunk (an array of span maps) → its normalized spans, or the reason
    it is dropped. Span dicts are normalized in place; a span without the wire
    types is rebuilt by ``decode.decode_span``, which raises PayloadError for
    what leniency cannot repair (checked for every span, dropped or not).
    ``memo``: a dict kept for one payload, in which the C path remembers each
    SQL resource it obfuscated (a payload repeats a few statements)."""
    spans = list(trace)
    if not spans:
        return "empty trace"
    if _fast_normalize is not None:
        # C does the common case in one call (~0.1 µs a span against ~1 µs of
        # bytecode below): every span typed and within the limits, SQL spans
        # as our integrations send them; it leaves other SQL spans to Python
        done = _fast_normalize(spans, obfuscate_sql, memo)
        if done is not False:
            if type(done) is tuple:
                tid, todo = done
                for i in todo:
                    if i < 0:  # obfuscated, now past a limit
                        _apply_limits(spans[~i])
                        continue
                    span = spans[i]
                    if _normalize_sql(span, span["meta"], False) or not 0 < len(span["resource"]) <= MAX_RESOURCE // 4:
                        _apply_limits(span)
                if tid is not None:
                    _copy_tid(spans, tid)
            return spans
    reason = None
    trace_id = -1
    tid = None
    known = _known_keys
    join = "".join
    for i, span in enumerate(spans):
        ok = long_meta = False
        try:
            fields = get_fields(span)
            span_trace_id, span_id, parent_id, service, name, resource, type_, start, duration, error, meta, metrics = (
                fields
            )
            if (
                len(span) == 12
                # decode.wire_typed, inline (a call per span costs more than these tests)
                and type(span_trace_id) is int and type(span_id) is int and type(parent_id) is int
                and type(start) is int and type(duration) is int and type(error) is int
                and type(service) is str and type(name) is str and type(resource) is str and type(type_) is str
                and type(meta) is dict and type(metrics) is dict
                and span_trace_id >= 0 and span_id >= 0 and parent_id >= 0 and start < _INT64 and duration < _INT64
            ):
                # join() rejects anything but str, sum() anything but numbers
                if meta.keys() <= known:
                    long_meta = len(join(meta.values())) > MAX_META_VALUE // 4 and _long_meta(meta)
                else:
                    join(meta)
                    join(meta.values())
                    long_meta = _long_meta(meta)
                    _remember_keys(meta)
                if not metrics.keys() <= known:
                    join(metrics)
                    _remember_keys(metrics)
                sum(metrics.values())
                ok = True
        except (KeyError, TypeError):
            pass
        if not ok:
            span = spans[i] = decode_span(span)
            span_trace_id, span_id, parent_id, service, name, resource, type_, start, duration, error, meta, metrics = (
                get_fields(span)
            )
            long_meta = _long_meta(meta)
        if reason is not None:
            continue  # the chunk is dropped: its later spans are only checked
        if span_trace_id != trace_id:
            if trace_id == -1:
                trace_id = span_trace_id
                if trace_id == 0:
                    reason = "trace_id 0"
                    continue
            else:
                reason = "spans of different trace ids in one trace" if span_id else "span_id 0"
                continue
        if span_id == 0:
            reason = "span_id 0"
            continue
        if type_ == "sql":
            # before the limits, as the agent does: the obfuscated text is what is truncated
            long_meta = _normalize_sql(span, meta, long_meta)
            resource = span["resource"]
        if (
            long_meta
            or not 0 < len(service) <= MAX_SERVICE // 4
            or not 0 < len(name) <= MAX_NAME // 4
            or len(type_) > MAX_TYPE // 4
            or not 0 < len(resource) <= MAX_RESOURCE // 4
            or duration < 0
            or start < _YEAR_2000_NS
            or start + duration > _MAX_INT64
            or (error != 0 and error != 1)
        ):
            _apply_limits(span)
            meta = span["meta"]
        elif meta:
            status = meta.get("http.status_code")
            if status is not None and status not in _VALID_STATUS:
                _apply_limits(span)
        if tid is None and meta:
            tid = meta.get("_dd.p.tid")
    if reason is not None:
        return reason
    if tid is not None:
        _copy_tid(spans, tid)
    return spans


def _copy_tid(spans: Trace, tid: str) -> None:
    for span in spans:
        meta = span["meta"]
        if meta.get("_dd.p.tid") != tid:
            meta["_dd.p.tid"] = tid


def _normalize_sql(span: Span, meta: dict[str, str], long_meta: bool) -> bool:
    """Obfuscate a ``type == "sql"`` span in place; returns whether some meta
    value may now be over its limit (``long_meta``: it may already be)."""
    resource = span["resource"]
    if resource and "sql.query" not in meta and "db.statement" not in meta and "error.message" not in meta:
        # what our integrations send: _obfuscate_span's work, less its
        # lookups; a sql.query over its limit implies a resource over its own
        span["resource"] = meta["sql.query"] = obfuscate_sql(resource)
        return long_meta
    _obfuscate_span(span, meta)
    return long_meta or _long_sql_meta(meta)


def _long_meta(meta: dict[str, str]) -> bool:
    """Some key or value may be over its limit (then ``_fix_meta`` decides)."""
    return bool(meta) and (
        max(map(len, meta)) > MAX_META_KEY // 4 or max(map(len, meta.values())) > MAX_META_VALUE // 4
    )


def _remember_keys(mapping: dict[str, Any]) -> None:
    """Add the str keys of ``mapping`` short enough to never need truncation."""
    if len(_known_keys) < _KNOWN_KEYS_MAX:
        _known_keys.update(k for k in mapping if len(k) <= MAX_META_KEY // 4)


def _long_sql_meta(meta: dict[str, str]) -> bool:
    """A value that ``_obfuscate_span`` rewrote may be over its limit."""
    limit = MAX_META_VALUE // 4
    return (
        len(meta["sql.query"]) > limit
        or len(meta.get("db.statement") or "") > limit
        or len(meta.get("error.message") or "") > limit
    )


def _apply_limits(span: Span) -> None:
    """The per-span rules other than SQL obfuscation (see the module docstring),
    on a span with the wire types; a no-op on a span ``normalize_chunk`` lets pass."""
    service = span["service"]
    if not 0 < len(service) <= MAX_SERVICE // 4:
        span["service"] = truncate(service, MAX_SERVICE) if service else DEFAULT_SERVICE
    name = span["name"]
    if not 0 < len(name) <= MAX_NAME // 4:
        name = span["name"] = truncate(name, MAX_NAME) if name else DEFAULT_NAME
    type_ = span["type"]
    if len(type_) > MAX_TYPE // 4:
        span["type"] = truncate(type_, MAX_TYPE)
    resource = span["resource"]
    if not 0 < len(resource) <= MAX_RESOURCE // 4:
        span["resource"] = truncate(resource, MAX_RESOURCE) if resource else name
    meta = span["meta"]
    if meta:
        if _long_meta(meta):
            meta = span["meta"] = _fix_meta(meta)
        status = meta.get("http.status_code")
        if status is not None and status not in _VALID_STATUS and not _status_ok(status):
            del meta["http.status_code"]
    start = span["start"]
    duration = span["duration"]
    if duration < 0 or start < _YEAR_2000_NS or start + duration > _MAX_INT64:
        _fix_times(span)
    if span["error"] not in (0, 1):
        span["error"] = 1


def _fix_times(span: Span) -> None:
    if span["duration"] < 0:
        span["duration"] = 0
    if span["start"] < _YEAR_2000_NS:
        # the agent's rule: a start before 2000 is a clock or unit bug; use now
        span["start"] = time.time_ns() - span["duration"]
    if span["start"] + span["duration"] > _MAX_INT64:
        # keep the end time representable (SQLite and msgpack int64)
        span["duration"] = max(0, _MAX_INT64 - span["start"])


def _obfuscate_span(span: Span, meta: dict[str, str]) -> None:
    raw = span["resource"]
    if raw:
        span["resource"] = obfuscate_sql(raw)
    # the decoded meta dict belongs to this span alone: edit it in place
    for key in _SQL_META_KEYS:
        value = meta.get(key)
        if value:
            meta[key] = obfuscate_sql(value)
    meta["sql.query"] = span["resource"] or meta.get("sql.query", "")
    message = meta.get("error.message")
    if message:
        meta["error.message"] = obfuscate_error_message(message)
