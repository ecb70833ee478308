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

from agent_sim.model import Span, Trace
from agent_sim.obfuscate import obfuscate_error_message, obfuscate_sql

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
    if not spans:
        return "empty trace"
    trace_id = spans[0]["trace_id"]
    if trace_id == 0:
        return "trace_id 0"
    tid = None
    for span in spans:
        if span["span_id"] == 0:
            return "span_id 0"
        if span["trace_id"] != trace_id:
            return "spans of different trace ids in one trace"
        service = span["service"]
        if not 0 < len(service) <= MAX_SERVICE // 4:
            span["service"] = truncate(service, MAX_SERVICE) if service else DEFAULT_SERVICE
        name = span["name"]
        if not 0 < len(name) <= MAX_NAME // 4:
            name = span["name"] = truncate(name, MAX_NAME) if name else DEFAULT_NAME
        type_ = span["type"]
        if type_:
            if len(type_) > MAX_TYPE // 4:
                type_ = span["type"] = truncate(type_, MAX_TYPE)
            if type_ == "sql":
                _obfuscate_span(span, span["meta"])
        resource = span["resource"]
        if not 0 < len(resource) <= MAX_RESOURCE // 4:
            span["resource"] = truncate(resource, MAX_RESOURCE) if resource else name
        meta = span["meta"]
        if meta:
            if max(map(len, meta)) > MAX_META_KEY // 4 or max(map(len, meta.values())) > MAX_META_VALUE // 4:
                meta = span["meta"] = _fix_meta(meta)
            status = meta.get("http.status_code")
            if status is not None and status not in _VALID_STATUS and not _status_ok(status):
                del meta["http.status_code"]
            if tid is None:
                tid = meta.get("_dd.p.tid")
        start = span["start"]
        duration = span["duration"]
        if duration < 0 or start < _YEAR_2000_NS or start + duration > _MAX_INT64:
            _fix_times(span)
        if span["error"] not in (0, 1):
            span["error"] = 1
    if tid is not None:
        for span in spans:
            meta = span["meta"]
            if meta.get("_dd.p.tid") != tid:
                meta["_dd.p.tid"] = tid
    return None


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
