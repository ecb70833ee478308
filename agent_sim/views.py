"""Read side of the receiver: the JSON API and the OpenMetrics text.

Each view takes the ``Receiver`` and the parsed query string and returns
``(status, body)`` where ``body`` is JSON-able (or ``bytes`` for /metrics).
Called on handler threads; may block on the store lock (briefly) and, for
``/api/traces?wait=``, on the receiver's condition up to the timeout.
Bad query values answer 400 with the reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent_sim.model import parse_trace_id, span_id_hex, span_json, to_signed, trace_id_hex
from agent_sim.stats import Sketch

if TYPE_CHECKING:
    from agent_sim.ingest import Receiver

Query = dict[str, str]
MAX_WAIT_S = 60.0

QUANTILES = (0.5, 0.95, 0.99)  # of the /metrics summaries


class BadQuery(ValueError):
    pass


def _int(q: Query, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name}: expected an integer, got {raw!r}")
    if lo is not None and value < lo:
        raise BadQuery(f"{name}: must be >= {lo}")
    if hi is not None and value > hi:
        value = hi
    return value


def _seconds(q: Query, name: str) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(float(raw) * 1e9)
    except ValueError:
        raise BadQuery(f"{name}: expected epoch seconds, got {raw!r}")


def api_stats(rx: Receiver, q: Query) -> tuple[int, Any]:
    """GET /api/stats?service=&since=&until= — one row per (service, name, resource, type)."""
    from agent_sim.stats import summarize

    entries = rx.stats_entries(_seconds(q, "since"), _seconds(q, "until"), q.get("service") or None)
    return 200, summarize(entries)


def api_services(rx: Receiver, q: Query) -> tuple[int, Any]:
    """GET /api/services — per service over top-level spans."""
    entries = rx.stats_entries(_seconds(q, "since"), _seconds(q, "until"), None)
    services: dict[str, list] = {}
    for (service, _name, _resource, _type), e in entries.items():
        if not e.top_level_hits:
            continue
        agg = services.get(service)
        if agg is None:
            agg = services[service] = [0, 0, Sketch()]
        agg[0] += e.top_level_hits
        agg[1] += e.errors
        agg[2].merge(e.ok)
        agg[2].merge(e.err)
    rows = [{"service": s, "hits": a[0], "errors": a[1], "p95_ns": int(a[2].quantile(0.95))}
            for s, a in services.items()]
    rows.sort(key=lambda r: r["service"])
    return 200, rows


MAX_SCAN = 20_000  # traces read per any-span search, newest first


def _tags(q: Query) -> list[tuple[str, str]]:
    """``tag=key:value`` (repeatable: the server joins repeats with NUL)."""
    raw = q.get("tag")
    if not raw:
        return []
    out = []
    for item in raw.split("\0"):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise BadQuery(f"tag: expected key:value, got {item!r}")
        out.append((key, value))
    return out


def _tag_value(span: dict[str, Any], key: str) -> str | None:
    value = span["meta"].get(key)
    if value is not None:
        return value
    number = span["metrics"].get(key)
    if number is None:
        return None
    return str(int(number)) if float(number).is_integer() else str(number)


def _span_filter(service: str | None, resource: str | None, error: int | None, min_ns: int | None,
                 max_ns: int | None, tags: list[tuple[str, str]]) -> Any:
    """A predicate: does this one span match every filter given?"""
    def match(s: dict[str, Any]) -> bool:
        return ((service is None or s["service"] == service)
                and (resource is None or s["resource"] == resource)
                and (error is None or bool(s["error"]) == bool(error))
                and (min_ns is None or s["duration"] >= min_ns)
                and (max_ns is None or s["duration"] <= max_ns)
                and all(_tag_value(s, k) == v for k, v in tags))
    return match


def _root_of(spans: list[dict[str, Any]]) -> dict[str, Any]:
    for s in spans:
        if s["parent_id"] == 0:
            return s
    return min(spans, key=lambda s: s["start"])


def _trace_rows(rx: Receiver, q: Query, limit: int) -> list[dict[str, Any]]:
    """A trace matches when any one of its spans matches every filter
    (``root=1``: its root span, as the index row describes it)."""
    error = q.get("error")
    if error not in (None, "", "0", "1", "true", "false"):
        raise BadQuery(f"error: expected 0 or 1, got {error!r}")
    root = q.get("root")
    if root not in (None, "", "0", "1", "true", "false"):
        raise BadQuery(f"root: expected 0 or 1, got {root!r}")
    service = q.get("service") or None
    resource = q.get("resource") or None
    err = None if error in (None, "") else int(error in ("1", "true"))
    min_ns = _int(q, "min_duration_ns", None, lo=0) or None
    max_ns = _int(q, "max_duration_ns", None, lo=0)
    tags = _tags(q)
    unfiltered = service is None and resource is None and err is None and min_ns is None and max_ns is None
    if (root in ("1", "true") or unfiltered) and not tags:  # the index answers
        rows = rx.store.list_traces(service=service, resource=resource, error=err, min_duration=min_ns, limit=limit,
                                    max_duration=max_ns)
    else:
        one = _span_filter(service, resource, err, min_ns, max_ns, tags)
        if root in ("1", "true"):
            def match(spans: list[dict[str, Any]]) -> bool:
                return one(_root_of(spans))
        else:
            def match(spans: list[dict[str, Any]]) -> bool:
                return any(map(one, spans))
        rows = rx.store.scan_traces(match, limit, MAX_SCAN)
    return [{"trace_id": trace_id_hex(tid, high), "service": service, "resource": resource, "name": name,
             "start_ns": start, "duration_ns": duration, "error": err, "span_count": count}
            for tid, high, service, resource, name, start, duration, err, count in rows]


def api_traces(rx: Receiver, q: Query) -> tuple[int, Any]:
    """GET /api/traces — newest first; ``wait=N&timeout=S`` blocks until N match."""
    limit = _int(q, "limit", 50, lo=1, hi=10_000) or 50
    wait = _int(q, "wait", None, lo=0, hi=10_000)
    if not wait:
        return 200, _trace_rows(rx, q, limit)
    raw_timeout = q.get("timeout") or "10"
    try:
        timeout = min(float(raw_timeout), MAX_WAIT_S)
    except ValueError:
        raise BadQuery(f"timeout: expected seconds, got {raw_timeout!r}")
    deadline = time.monotonic() + timeout
    limit = max(limit, wait)
    while True:
        generation = rx.generation
        rows = _trace_rows(rx, q, limit)
        remaining = deadline - time.monotonic()
        if len(rows) >= wait or remaining <= 0 or rx.stopping:
            return 200, rows
        rx.wait_for_ingest(generation, min(remaining, 1.0))


def api_trace(rx: Receiver, trace_id: str) -> tuple[int, Any]:
    """GET /api/traces/<id> — 32 hex, 16 hex or decimal low 64 bits."""
    candidates = parse_trace_id(trace_id)
    if not candidates:
        return 400, {"error": f"not a trace id: {trace_id!r} (32 or 16 hex digits, or decimal)"}
    found = None
    for low in candidates:
        found = rx.store.get_trace(to_signed(low))
        if found is not None:
            break
    if found is None:
        return 404, {"error": f"trace {trace_id} not found"}
    high, spans = found
    spans.sort(key=lambda s: (s["start"], s["span_id"]))
    out = [span_json(s, high) for s in spans]
    tid = out[0]["trace_id"] if out else trace_id_hex(low, high)
    return 200, {"trace_id": tid, "spans": out, "findings": _trace_findings(rx, spans)}


def _trace_findings(rx: Receiver, spans: list[Any]) -> list[dict[str, Any]]:
    """The detectors re-run on the whole stored trace (a few ms for 5,000
    spans): which spans each finding is made of, for the waterfall."""
    from agent_sim.insights import detect

    try:
        found = detect(spans, rx.findings.limits)
    except Exception:  # the trace view must not fail for a detector bug
        return []
    return [{"kind": f.kind, "fingerprint": f.fingerprint, "title": f.title,
             "span_ids": [span_id_hex(i) for i in f.span_ids]} for f in found]


def info(rx: Receiver, q: Query) -> tuple[int, Any]:
    from agent_sim import __version__

    counters = rx.counters()
    return 200, {
        "version": f"agent_sim-{__version__}",
        "endpoints": ["/v0.3/traces", "/v0.4/traces", "/v0.5/traces", "/v0.6/stats", "/info",
                      "/api/stats", "/api/services", "/api/traces", "/metrics"],
        "client_drop_p0s": False,
        "span_meta_structs": False,
        "long_running_spans": False,
        "config": {"default_sample_rate": rx.default_rate, "sample_rates": dict(rx.service_rates),
                   "retention_traces": rx.retention_traces, "retention_hours": rx.retention_hours,
                   "db": rx.store.path},
        "duplicate_span_ids": counters.get("duplicate_span_ids", 0),
        "counters": counters,
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metrics(rx: Receiver, q: Query) -> tuple[int, Any]:
    """GET /metrics — OpenMetrics text: per service/resource hits, errors, latency quantiles."""
    entries = rx.stats_entries(None, None, None)
    per: dict[tuple[str, str], list] = {}
    for (service, _name, resource, _type), e in entries.items():
        agg = per.get((service, resource))
        if agg is None:
            agg = per[(service, resource)] = [0, 0, 0, Sketch()]
        agg[0] += e.hits
        agg[1] += e.errors
        agg[2] += e.duration
        agg[3].merge(e.ok)
        agg[3].merge(e.err)
    lines = [
        "# TYPE agent_sim_hits counter",
        "# HELP agent_sim_hits Counted spans (top-level or measured) per service and resource.",
    ]
    keys = sorted(per)
    labels = {k: f'service="{_label(k[0])}",resource="{_label(k[1])}"' for k in keys}
    lines += [f"agent_sim_hits_total{{{labels[k]}}} {per[k][0]}" for k in keys]
    lines += ["# TYPE agent_sim_errors counter",
              "# HELP agent_sim_errors Counted spans with error=1."]
    lines += [f"agent_sim_errors_total{{{labels[k]}}} {per[k][1]}" for k in keys]
    lines += ["# TYPE agent_sim_duration_seconds summary",
              "# HELP agent_sim_duration_seconds Latency of counted spans (1% relative accuracy)."]
    for k in keys:
        sketch = per[k][3]
        for quantile, value in zip(QUANTILES, sketch.quantiles(QUANTILES), strict=True):
            lines.append(f'agent_sim_duration_seconds{{{labels[k]},quantile="{quantile}"}} '
                         f"{value / 1e9:.9g}")
        lines.append(f"agent_sim_duration_seconds_sum{{{labels[k]}}} {per[k][2] / 1e9:.9g}")
        lines.append(f"agent_sim_duration_seconds_count{{{labels[k]}}} {per[k][0]}")
    counters = rx.counters()
    for name in ("duplicate_span_ids", "payloads_rejected", "traces_dropped", "spans_received", "stats_keys_overflowed"):
        lines += [f"# TYPE agent_sim_{name} counter", f"agent_sim_{name}_total {counters.get(name, 0)}"]
    lines += ["# TYPE agent_sim_findings counter"]
    lines += [f'agent_sim_findings_total{{kind="{k}"}} {n}' for k, n in rx.findings.counts_by_kind().items()]
    lines += ["# TYPE agent_sim_traces_stored gauge", f"agent_sim_traces_stored {rx.store.trace_count}", "# EOF", ""]
    return 200, "\n".join(lines).encode()
