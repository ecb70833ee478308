"""Distributed tracing headers: ``inject`` into outgoing, ``extract`` from incoming.

Styles (``TRACER_PROPAGATION_STYLE_EXTRACT`` / ``_INJECT``):

- ``datadog``: ``x-datadog-trace-id`` (decimal low 64 bits), ``-parent-id``,
  ``-sampling-priority``, ``-origin``, ``-tags`` (``_dd.p.*`` list; ``_dd.p.tid``
  carries the high 64 bits as 16 hex);
- ``tracecontext``: W3C ``traceparent`` and ``tracestate`` (our ``dd=`` member
  first, other vendors' members kept);
- ``b3multi`` (``x-b3-*``) and ``b3`` (single ``b3`` header).

Extraction: the first listed style that yields a context wins; when W3C
headers carry the same trace, their ``tracestate`` is kept and their parent
id wins (a proxy may have updated only ``traceparent``), as ddtrace does.

Both functions run on app threads, never raise, and treat malformed headers
as absent (a debug log says which). Header names are matched
case-insensitively; WSGI-environ keys (``HTTP_X_DATADOG_TRACE_ID``) work too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING

from tracer._errors import internal_error
from tracer.config import config as _config
from tracer.context import Context
from tracer.span import Span

if TYPE_CHECKING:
    from tracer.buffer import _Trace

log = logging.getLogger("tracer")

_MASK64 = (1 << 64) - 1
_MAX_ID128 = (1 << 128) - 1

# ddtrace's default DD_TRACE_X_DATADOG_TAGS_MAX_LENGTH.
MAX_TAGS_HEADER_LEN = 512
MAX_TRACESTATE_MEMBERS = 32
# W3C: a vendor's member should stay within 256 characters.
MAX_DD_MEMBER_LEN = 256
PROPAGATION_ERROR = "_dd.propagation_error"
LAST_PARENT_ID = "_dd.parent_id"

H_TRACE_ID = "x-datadog-trace-id"
H_PARENT_ID = "x-datadog-parent-id"
H_PRIORITY = "x-datadog-sampling-priority"
H_ORIGIN = "x-datadog-origin"
H_TAGS = "x-datadog-tags"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
H_B3_TRACE_ID = "x-b3-traceid"
H_B3_SPAN_ID = "x-b3-spanid"
H_B3_SAMPLED = "x-b3-sampled"
H_B3_FLAGS = "x-b3-flags"
H_B3 = "b3"

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_B3_ID = re.compile(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}")
_B3_SPAN = re.compile(r"[0-9a-fA-F]{16}")
# _dd.p.* keys: printable ASCII without space, comma or '='; values: printable, no comma.
_TAG_KEY = re.compile(r"_dd\.p\.[\x21-\x2b\x2d-\x3c\x3e-\x7e]+")
_TAG_VALUE = re.compile(r"[\x20-\x2b\x2d-\x7e]*")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# Characters W3C forbids in our tracestate member, replaced by '_' (ddtrace's rule).
_TS_BAD_KEY = re.compile(r"[^\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TS_BAD_VALUE = re.compile(r"[^\x20-\x2b\x2d-\x3a\x3c-\x7d]")


# -- header lookup --------------------------------------------------------------
def _normalized(headers: Mapping[str, str]) -> dict[str, str]:
    """Lowercased copy of the headers we might read (one pass per extract)."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        if type(key) is not str or not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):  # WSGI environ
            key = key[5:].replace("_", "-")
        out[key.lower()] = value
    return out


# -- datadog --------------------------------------------------------------------
def _parse_uint(raw: str | None, limit: int = _MASK64) -> int | None:
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or not raw.isascii():
        return None
    value = int(raw)
    return value if 0 <= value <= limit else None


def _parse_priority(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        log.debug("tracer: ignoring malformed sampling priority %r", raw)
        return None


def _decode_dd_tags(raw: str) -> dict[str, str]:
    """``_dd.p.k=v,...`` → dict; a malformed or oversized header is dropped
    whole and only ``_dd.propagation_error`` is kept (ddtrace's behaviour)."""
    if len(raw) > MAX_TAGS_HEADER_LEN:
        log.debug("tracer: ignoring x-datadog-tags longer than %d", MAX_TAGS_HEADER_LEN)
        return {PROPAGATION_ERROR: "extract_max_size"}
    tags: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not _TAG_KEY.fullmatch(key) or not _TAG_VALUE.fullmatch(value):
            log.debug("tracer: ignoring malformed x-datadog-tags %r", raw)
            return {PROPAGATION_ERROR: "decoding_error"}
        tags[key] = value
    return tags


def _extract_datadog(h: dict[str, str]) -> Context | None:
    raw_trace_id = h.get(H_TRACE_ID)
    if raw_trace_id is None:
        return None
    trace_id = _parse_uint(raw_trace_id)
    if not trace_id:
        log.debug("tracer: ignoring malformed x-datadog-trace-id %r", raw_trace_id)
        return None
    raw_parent = h.get(H_PARENT_ID)
    parent_id = 0 if raw_parent is None else _parse_uint(raw_parent)
    if parent_id is None:
        log.debug("tracer: ignoring malformed x-datadog-parent-id %r", raw_parent)
        return None
    origin = h.get(H_ORIGIN)
    if origin is not None and (not origin or not _PRINTABLE.fullmatch(origin)):
        log.debug("tracer: ignoring malformed x-datadog-origin %r", origin)
        origin = None
    raw_tags = h.get(H_TAGS)
    dd_tags = _decode_dd_tags(raw_tags) if raw_tags else {}
    tid = dd_tags.pop("_dd.p.tid", None)
    if tid is not None:
        if _HEX16.fullmatch(tid):
            trace_id |= int(tid, 16) << 64
        else:
            dd_tags[PROPAGATION_ERROR] = f"malformed_tid {tid}"[:100]
    return Context(trace_id, parent_id, _parse_priority(h.get(H_PRIORITY)), origin, dd_tags)


def _inject_datadog(trace_id: int, span_id: int, priority: int | None, origin: str | None,
                    tags: dict[str, str], headers: MutableMapping[str, str], trace: _Trace | None) -> None:
    headers[H_TRACE_ID] = str(trace_id & _MASK64)
    headers[H_PARENT_ID] = str(span_id)
    if priority is not None:
        headers[H_PRIORITY] = str(priority)
    if origin:
        headers[H_ORIGIN] = origin
    if tags:
        encoded = ",".join(f"{k}={v}" for k, v in tags.items())
        if len(encoded) <= MAX_TAGS_HEADER_LEN:
            headers[H_TAGS] = encoded
        else:
            log.debug("tracer: x-datadog-tags over %d characters not sent", MAX_TAGS_HEADER_LEN)
            if trace is not None:
                trace.dd_tags[PROPAGATION_ERROR] = "inject_max_size"


# -- W3C trace context ----------------------------------------------------------
def _split_tracestate(raw: str) -> tuple[str | None, list[str]]:
    """→ (our ``dd`` member value or None, other vendors' members, in order)."""
    dd = None
    others = []
    for member in raw.split(","):
        member = member.strip()
        if not member:
            continue
        if member.startswith("dd="):
            dd = member[3:]
        elif "=" in member:
            others.append(member)
    return dd, others[: MAX_TRACESTATE_MEMBERS - 1]


def _parse_dd_member(value: str) -> tuple[int | None, str | None, dict[str, str]]:
    priority = None
    origin = None
    tags: dict[str, str] = {}
    for item in value.split(";"):
        key, colon, val = item.partition(":")
        if not colon:
            continue
        if key == "s":
            try:
                priority = int(val)
            except ValueError:
                log.debug("tracer: ignoring malformed tracestate priority %r", val)
        elif key == "o":
            origin = val.replace("~", "=") or None
        elif key == "p":
            if _HEX16.fullmatch(val) and val != "0000000000000000":
                tags[LAST_PARENT_ID] = val
        elif key.startswith("t.") and len(key) > 2 and key != "t.tid":  # traceparent has the high bits
            tags["_dd.p." + key[2:]] = val.replace("~", "=")
    return priority, origin, tags


def _w3c_priority(sampled: int, state_priority: int | None, origin: str | None) -> int | None:
    # ddtrace's reconciliation: the traceparent flag wins when the two disagree,
    # except for RUM traces that sent no priority (the decision is left to us).
    if not state_priority and origin == "rum":
        return state_priority
    if sampled and (state_priority is None or state_priority <= 0):
        return 1
    if not sampled and (state_priority is None or state_priority > 0):
        return 0
    return state_priority  # type: ignore[return-value]


def _extract_tracecontext(h: dict[str, str]) -> Context | None:
    raw = h.get(H_TRACEPARENT)
    if raw is None:
        return None
    match = _TRACEPARENT.fullmatch(raw.strip())
    if match is None:
        log.debug("tracer: ignoring malformed traceparent %r", raw)
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        log.debug("tracer: ignoring traceparent with invalid version %r", raw)
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        log.debug("tracer: ignoring traceparent with a zero id %r", raw)
        return None
    sampled = int(flags_hex, 16) & 1  # other bits (e.g. 02, random trace id) are informational
    priority: int | None = sampled
    origin = None
    dd_tags: dict[str, str] = {}
    tracestate = None
    raw_state = h.get(H_TRACESTATE)
    if raw_state:
        if not _PRINTABLE.fullmatch(raw_state):
            log.debug("tracer: ignoring tracestate with non-printable characters %r", raw_state)
        else:
            dd, others = _split_tracestate(raw_state)
            tracestate = ",".join(others) or None
            if dd is not None:
                state_priority, origin, dd_tags = _parse_dd_member(dd)
                priority = _w3c_priority(sampled, state_priority, origin)
    return Context(trace_id, span_id, priority, origin, dd_tags, tracestate)


def _encode_ts(pattern: re.Pattern[str], value: str) -> str:
    return pattern.sub("_", value).replace("=", "~")


def _inject_tracecontext(trace_id: int, span_id: int, priority: int | None, origin: str | None,
                         tags: dict[str, str], tracestate: str | None, local: bool,
                         headers: MutableMapping[str, str]) -> None:
    sampled = priority is not None and priority > 0
    headers[H_TRACEPARENT] = f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
    parts = []
    if priority is not None:
        parts.append(f"s:{priority}")
    if origin:
        parts.append("o:" + _encode_ts(_TS_BAD_VALUE, origin))
    if local:
        parts.append(f"p:{span_id:016x}")
    size = 3 + len(";".join(parts))
    for key, value in tags.items():
        if key == "_dd.p.tid":  # already in traceparent
            continue
        item = _encode_ts(_TS_BAD_KEY, "t." + key[6:]) + ":" + _encode_ts(_TS_BAD_VALUE, value)
        if size + len(item) + 1 > MAX_DD_MEMBER_LEN:
            continue
        parts.append(item)
        size += len(item) + 1
    members = ["dd=" + ";".join(parts)] if parts else []
    if tracestate:
        members.extend(tracestate.split(",")[: MAX_TRACESTATE_MEMBERS - len(members)])
    if members:
        headers[H_TRACESTATE] = ",".join(members)


# -- B3 -------------------------------------------------------------------------
def _b3_priority(sampled: str | None, flags: str | None) -> int | None:
    if flags is not None and flags.strip() == "1":
        return 2  # debug: force keep
    if sampled is None:
        return None
    sampled = sampled.strip().lower()
    if sampled in ("1", "true"):
        return 1
    if sampled in ("0", "false"):
        return 0
    if sampled == "d":
        return 2
    log.debug("tracer: ignoring malformed b3 sampling state %r", sampled)
    return None


def _b3_ids(trace_hex: str, span_hex: str) -> tuple[int, int] | None:
    trace_hex = trace_hex.strip()
    span_hex = span_hex.strip()
    if not _B3_ID.fullmatch(trace_hex) or not _B3_SPAN.fullmatch(span_hex):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id


def _extract_b3multi(h: dict[str, str]) -> Context | None:
    trace_hex = h.get(H_B3_TRACE_ID)
    span_hex = h.get(H_B3_SPAN_ID)
    if trace_hex is None or span_hex is None:
        return None
    ids = _b3_ids(trace_hex, span_hex)
    if ids is None:
        log.debug("tracer: ignoring malformed b3 ids %r %r", trace_hex, span_hex)
        return None
    return Context(ids[0], ids[1], _b3_priority(h.get(H_B3_SAMPLED), h.get(H_B3_FLAGS)))


def _extract_b3(h: dict[str, str]) -> Context | None:
    raw = h.get(H_B3)
    if raw is None:
        return None
    parts = raw.strip().split("-")
    if len(parts) == 1:
        # "0", "1", "d" alone carry a sampling decision but no trace to
        # continue: a Context with zero ids starts a new trace that keeps it.
        priority = _b3_priority(parts[0], None)
        return None if priority is None else Context(0, 0, priority)
    if len(parts) > 4:
        log.debug("tracer: ignoring malformed b3 header %r", raw)
        return None
    ids = _b3_ids(parts[0], parts[1])
    if ids is None:
        log.debug("tracer: ignoring malformed b3 header %r", raw)
        return None
    priority = _b3_priority(parts[2], None) if len(parts) > 2 else None
    return Context(ids[0], ids[1], priority)


def _b3_trace_hex(trace_id: int) -> str:
    return f"{trace_id:032x}" if trace_id > _MASK64 else f"{trace_id:016x}"


def _inject_b3multi(trace_id: int, span_id: int, priority: int | None, headers: MutableMapping[str, str]) -> None:
    headers[H_B3_TRACE_ID] = _b3_trace_hex(trace_id)
    headers[H_B3_SPAN_ID] = f"{span_id:016x}"
    if priority is not None:
        if priority >= 2:
            headers[H_B3_FLAGS] = "1"
        else:
            headers[H_B3_SAMPLED] = "1" if priority > 0 else "0"


def _inject_b3(trace_id: int, span_id: int, priority: int | None, headers: MutableMapping[str, str]) -> None:
    value = f"{_b3_trace_hex(trace_id)}-{span_id:016x}"
    if priority is not None:
        value += "-d" if priority >= 2 else ("-1" if priority > 0 else "-0")
    headers[H_B3] = value


_EXTRACTORS: dict[str, Callable[[dict[str, str]], Context | None]] = {
    "datadog": _extract_datadog,
    "tracecontext": _extract_tracecontext,
    "b3multi": _extract_b3multi,
    "b3": _extract_b3,
}


# -- public ---------------------------------------------------------------------
def extract(headers: Mapping[str, str]) -> Context | None:
    """The remote parent described by ``headers``, or None (no usable
    headers, a style not enabled, or malformed values). Never raises."""
    try:
        styles = _config.propagation_style_extract
        if not styles or not headers:
            return None
        h = _normalized(headers)
        primary = None
        primary_style = None
        for style in styles:
            extractor = _EXTRACTORS.get(style)
            if extractor is None:
                continue
            primary = extractor(h)
            if primary is not None:
                primary_style = style
                break
        if primary is None:
            return None
        if primary_style != "tracecontext" and "tracecontext" in styles and H_TRACEPARENT in h:
            _merge_w3c(primary, _extract_tracecontext(h))
        return primary
    except Exception:
        internal_error("propagation.extract")
        return None


def _merge_w3c(primary: Context, w3c: Context | None) -> None:
    if w3c is None or (w3c.trace_id & _MASK64) != (primary.trace_id & _MASK64):
        return
    if primary.trace_id >> 64 == 0:
        primary.trace_id = w3c.trace_id
    elif primary.trace_id != w3c.trace_id:
        return
    primary.tracestate = w3c.tracestate
    if w3c.span_id != primary.span_id:
        # A proxy between us may have updated traceparent only: its parent id wins,
        # and the last Datadog parent is kept for the backend to reconnect spans.
        last = w3c.dd_tags.get(LAST_PARENT_ID) or f"{primary.span_id:016x}"
        primary.dd_tags[LAST_PARENT_ID] = last
        primary.span_id = w3c.span_id


def inject(span_or_context: Span | Context, headers: MutableMapping[str, str]) -> None:
    """Write the headers of every ``TRACER_PROPAGATION_STYLE_INJECT`` style
    for ``span_or_context`` into ``headers``. For a span, the trace's sampling
    decision is made first if it is still open (downstream services must
    receive it). App thread; never raises."""
    try:
        styles = _config.propagation_style_inject
        if not styles:
            return
        trace: _Trace | None = None
        if isinstance(span_or_context, Span):
            span = span_or_context
            trace = span._trace
            if trace.priority is None:
                import tracer as _pkg

                _pkg.tracer.sampler.decide(trace, trace.root or span)
            trace_id, span_id = span.trace_id, span.span_id
            priority, origin, tracestate = trace.priority, trace.origin, trace.tracestate
            source_tags = trace.dd_tags
            local = True
        elif isinstance(span_or_context, Context):
            ctx = span_or_context
            trace_id, span_id = ctx.trace_id, ctx.span_id
            priority, origin, tracestate = ctx.sampling_priority, ctx.origin, ctx.tracestate
            source_tags = ctx.dd_tags
            local = False
        else:
            log.debug("tracer: inject() needs a Span or a Context, got %r", type(span_or_context))
            return
        tags = {k: v for k, v in source_tags.items() if k.startswith("_dd.p.") and k != "_dd.p.tid"}
        if trace is not None and trace.mechanism is not None and priority is not None and priority > 0:
            tags.setdefault("_dd.p.dm", f"-{trace.mechanism}")
        high = trace_id >> 64
        if high:
            tags["_dd.p.tid"] = f"{high:016x}"
        for style in styles:
            if style == "datadog":
                _inject_datadog(trace_id, span_id, priority, origin, tags, headers, trace)
            elif style == "tracecontext":
                _inject_tracecontext(trace_id, span_id, priority, origin, tags, tracestate, local, headers)
            elif style == "b3multi":
                _inject_b3multi(trace_id, span_id, priority, headers)
            elif style == "b3":
                _inject_b3(trace_id, span_id, priority, headers)
    except Exception:
        internal_error("propagation.inject")

