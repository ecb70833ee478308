"""Performance detectors: one normalized trace in, findings out; no I/O.

Modelled on the ideas of Sentry's performance-issue detectors (consecutive
repeated spans under one parent, a fingerprint per problem) with two
deliberate differences: no duration floor by default (local databases answer
in microseconds), and spans that are neither DB nor HTTP client spans between
the repeated ones do not break a run (getsentry/sentry#93090).

Called by the ingest path on a handler thread; pure and thread-safe; never
raises on well-formed normalized spans (the caller guards anyway).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from agent_sim.model import Span, Trace

try:  # the optional C common cases (setup.py builds them); the Python code alone without them
    from agent_sim._cdecode import breakdown_chunk as _fast_breakdown
    from agent_sim._cdecode import detect_clear as _fast_detect_clear
except ImportError:  # pragma: no cover - no compiler at install time
    _fast_breakdown = _fast_detect_clear = None

N_PLUS_ONE_DB = "n_plus_one_db"
N_PLUS_ONE_HTTP = "n_plus_one_http"
SLOW_QUERY = "slow_query"
ERROR_GROUP = "error_group"
KINDS = (N_PLUS_ONE_DB, N_PLUS_ONE_HTTP, SLOW_QUERY, ERROR_GROUP)


@dataclass(frozen=True)
class Thresholds:
    """Detector settings (``agent-sim serve --n-plus-one-min`` …)."""
    n_plus_one_min: int = 5
    n_plus_one_min_total_ns: int = 0
    slow_query_ns: int = 500_000_000


DEFAULT_LIMITS = Thresholds()


@dataclass
class Finding:
    """One occurrence of a problem in one trace; the store aggregates by fingerprint."""
    kind: str
    fingerprint: str
    service: str
    resource: str  # the endpoint: the top-level resource of that service
    title: str
    detail: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    total_duration_ns: int = 0
    span_ids: list[int] = field(default_factory=list)


_RESOURCE = itemgetter("resource")


def _fingerprint(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:16]


# Cursor fetch spans (``TRACER_DB_TRACE_FETCH``, ddtrace's ``*.query.fetchall``)
# carry the SQL of the query they read from: they are neither part of a run
# nor a break in one, else a loop of 20 queries counted 40.
_FETCH_SUFFIXES = (".fetchone", ".fetchmany", ".fetchall")


def _is_db(span: Span) -> bool:
    return (span["type"] == "sql" or "db.system" in span["meta"]) and not span["name"].endswith(_FETCH_SUFFIXES)


def _is_http_client(span: Span) -> bool:
    meta = span["meta"]
    return span["type"] == "http" and meta.get("span.kind") == "client"


# Numbers, hex ids, UUIDs and quoted values in error messages → "?" so the
# same failure with a different id is one group.
_MESSAGE_VARIABLE = re.compile(
    r"'[^']*'|\"[^\"]*\"|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
    r"|\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]*\d[0-9a-fA-F]*\b")


def normalize_message(message: str) -> str:
    message = message[:1000]
    # str(KeyError("order 7 not found")) is the repr "'order 7 not found'":
    # a message that is one quoted string is unwrapped, not reduced to "?".
    if len(message) >= 2 and message[0] == message[-1] and message[0] in "'\"" \
            and message[0] not in message[1:-1]:
        message = message[1:-1]
    return _MESSAGE_VARIABLE.sub("?", message)


def _is_client(span: Span) -> bool:
    """A DB (query or fetch) or outbound call span: never an endpoint of its own."""
    meta = span["meta"]
    return span["type"] == "sql" or "db.system" in meta or meta.get("span.kind") == "client"


def _endpoints(spans: Trace) -> tuple[dict[int, Span], dict[str, str]]:
    """Spans by id, and each service's top-level resource (its entry span:
    no parent in the trace, or a parent of another service)."""
    by_id = {s["span_id"]: s for s in spans}
    endpoint: dict[str, str] = {}
    for s in sorted(spans, key=lambda s: s["start"]):
        svc = s["service"]
        if svc in endpoint:
            continue
        parent = by_id.get(s["parent_id"])
        if parent is None or parent["service"] != svc:
            endpoint[svc] = s["resource"]
    return by_id, endpoint


def _endpoint_of(span: Span, by_id: dict[int, Span], endpoint: dict[str, str]) -> tuple[str, str]:
    """(service, endpoint) a span belongs to: the nearest ancestor that is
    not a DB or HTTP client span names the service (a query's span has the
    database's service)."""
    s = span
    for _ in range(1000):
        if not (_is_db(s) or _is_http_client(s)):
            break
        parent = by_id.get(s["parent_id"])
        if parent is None:
            break
        s = parent
    svc = s["service"]
    return svc, (endpoint.get(svc) or s["resource"])


def detect(spans: Trace, limits: Thresholds = DEFAULT_LIMITS) -> list[Finding]:
    """Findings in one trace (or one chunk of it).

    Cost: one pass over the spans; the tree helpers run only for a trace
    that has a candidate (a parent with enough DB/HTTP children, a slow
    query, an error). The C ``detect_clear`` does that pass for the usual
    chunk, which has none (~0.1 of this code's time)."""
    if _fast_detect_clear is not None and _fast_detect_clear(spans, limits.slow_query_ns, limits.n_plus_one_min):
        return []
    children: dict[int, list[Span]] = {}
    slow: list[Span] = []
    failed: list[Span] = []
    slow_ns = limits.slow_query_ns
    for s in spans:
        if (s["type"] == "sql" or "db.system" in s["meta"]) and not s["name"].endswith(_FETCH_SUFFIXES):
            children.setdefault(s["parent_id"], []).append(s)
            if s["duration"] >= slow_ns:
                slow.append(s)
        elif s["type"] == "http" and s["meta"].get("span.kind") == "client":
            children.setdefault(s["parent_id"], []).append(s)
        if s["error"]:
            failed.append(s)
    least = limits.n_plus_one_min
    # a run needs one resource at least ``least`` times among the kids: most
    # parents with many queries (a view running several different ones) stop here
    groups = [(pid, kids) for pid, kids in children.items()
              if len(kids) >= least and max(Counter(map(_RESOURCE, kids)).values()) >= least]
    if not (groups or slow or failed):
        return []
    by_id, endpoint = _endpoints(spans)
    out: list[Finding] = []
    for parent_id, kids in groups:
        kids.sort(key=lambda s: s["start"])
        out.extend(_runs(kids, by_id.get(parent_id), by_id, endpoint, limits))
    for s in slow:
        svc, ep = _endpoint_of(s, by_id, endpoint)
        out.append(Finding(SLOW_QUERY, _fingerprint(SLOW_QUERY, s["service"], s["resource"]), svc, ep,
                           f"Slow query: {s['resource'][:200]}",
                           {"query": s["resource"], "db_service": s["service"]},
                           1, s["duration"], [s["span_id"]]))
    errors: dict[str, Finding] = {}  # an exception bubbling through spans is one error per trace
    for s in failed:
        e = _error_group(s, endpoint)
        errors.setdefault(e.fingerprint, e)
    out.extend(errors.values())
    return out


def _error_group(s: Span, endpoint: dict[str, str]) -> Finding:
    meta = s["meta"]
    svc = s["service"]
    ep = (endpoint.get(svc) or s["resource"])
    etype = meta.get("error.type", "")
    message = normalize_message(meta.get("error.message", ""))
    title = f"{etype or 'error'}: {message}"[:300] if message else (etype or f"error in {s['name']}")
    return Finding(ERROR_GROUP, _fingerprint(ERROR_GROUP, svc, ep, etype, message), svc, ep, title,
                   {"error_type": etype, "message": message, "span_name": s["name"]},
                   1, s["duration"], [s["span_id"]])


def _runs(kids: list[Span], parent: Span | None, by_id: dict[int, Span], endpoint: dict[str, str],
          limits: Thresholds) -> list[Finding]:
    """Runs of consecutive same-kind spans with the same resource. A DB run
    is not broken by HTTP spans and vice versa; other spans were never in
    ``kids`` so they cannot break a run."""
    out: list[Finding] = []
    for is_kind, kind in ((_is_db, N_PLUS_ONE_DB), (_is_http_client, N_PLUS_ONE_HTTP)):
        seq = [s for s in kids if is_kind(s)]
        i = 0
        while i < len(seq):
            j = i + 1
            while j < len(seq) and seq[j]["resource"] == seq[i]["resource"] and \
                    seq[j]["service"] == seq[i]["service"]:
                j += 1
            run = seq[i:j]
            total = sum(s["duration"] for s in run)
            if len(run) >= limits.n_plus_one_min and total >= limits.n_plus_one_min_total_ns:
                source = seq[i - 1]["resource"] if i > 0 else None
                out.append(_n_plus_one(kind, run, source, parent, by_id, endpoint, total))
            i = j
    return out


def _n_plus_one(kind: str, run: list[Span], source: str | None, parent: Span | None,
                by_id: dict[int, Span], endpoint: dict[str, str], total: int) -> Finding:
    first = run[0]
    svc, ep = _endpoint_of(first, by_id, endpoint)
    parent_name = f"{parent['name']} {parent['resource']}" if parent else ""
    what = "queries" if kind == N_PLUS_ONE_DB else "HTTP calls"
    return Finding(kind, _fingerprint(kind, svc, ep, parent["name"] if parent else "", first["resource"]),
                   svc, ep, f"N+1 {what}: {first['resource'][:200]}",
                   {"repeated": first["resource"], "source": source, "parent": parent_name,
                    "target_service": first["service"]},
                   len(run), total, [s["span_id"] for s in run])


BUCKET_NS = 10 * 10**9  # as agent_sim.stats: breakdown rows share the stats' 10-second buckets
# (bucket, endpoint service, endpoint resource, span service, span type) -> exclusive ns
BreakdownKey = tuple[int, str, str, str, str]


def breakdown(spans: Trace, out: dict[BreakdownKey, int]) -> None:
    """Add one trace chunk's exclusive time to ``out``.

    A span's exclusive time is its duration minus its children's (clipped at
    0: concurrent children can add up to more than their parent). It counts
    for every endpoint that encloses it: the entry spans on its path to the
    root that are not DB or HTTP client spans and have no parent in the chunk
    or a parent of another service (a client span cut from its parent by a
    partial flush counts for no endpoint rather than pose as one). So a frontend's ``GET /checkout`` shows the time of
    the backend it called when both arrive in one chunk; a backend's own chunk
    counts for the backend's endpoint. The bucket is the entry span's end,
    aligned to 10 s, as the stats do. Cost: two dict passes over the spans,
    plus one short walk up per span (memoized); the C ``breakdown_chunk``
    does the common chunk (one endpoint) in ~0.1 of that."""
    if _fast_breakdown is not None and _fast_breakdown(spans, out, BUCKET_NS):
        return
    by_id = {s["span_id"]: s for s in spans}
    child_ns: dict[int, int] = {}
    entries = []
    stray = False  # a DB/HTTP client span whose parent is in another chunk (a partial flush)
    for s in spans:
        pid = s["parent_id"]
        parent = by_id.get(pid)
        if parent is None:
            if _is_client(s):
                stray = True
            else:
                entries.append(s)
            continue
        child_ns[pid] = child_ns.get(pid, 0) + s["duration"]
        if parent["service"] != s["service"] and s["type"] != "sql" and not _is_client(s):
            entries.append(s)
    if len(entries) == 1 and not stray:
        # The common chunk: one endpoint encloses every span; sum per
        # (service, type) first, then key by the endpoint once.
        (entry,) = entries
        end = entry["start"] + entry["duration"]
        prefix = (end - end % BUCKET_NS, entry["service"], entry["resource"])
        sums: dict[tuple[str, str], int] = {}
        get = child_ns.get
        for s in spans:
            exclusive = s["duration"] - get(s["span_id"], 0)
            if exclusive > 0:
                k = (s["service"], s["type"])
                sums[k] = sums.get(k, 0) + exclusive
        for (service, type_), ns in sums.items():
            key = (*prefix, service, type_)
            out[key] = out.get(key, 0) + ns
        return
    enclosing: dict[int, tuple[tuple[int, str, str], ...]] = {}
    limit = len(spans)
    for s in spans:
        exclusive = s["duration"] - child_ns.get(s["span_id"], 0)
        if exclusive <= 0:
            continue
        found = enclosing.get(s["span_id"])
        if found is None:
            found = _enclosing(s, by_id, enclosing, limit)
        service, type_ = s["service"], s["type"]
        for bucket, ep_service, ep_resource in found:
            key = (bucket, ep_service, ep_resource, service, type_)
            out[key] = out.get(key, 0) + exclusive


def _enclosing(span: Span, by_id: dict[int, Span], memo: dict[int, tuple[tuple[int, str, str], ...]],
               limit: int) -> tuple[tuple[int, str, str], ...]:
    """The endpoints enclosing ``span`` (outermost first), memoized per span
    id; a parent cycle (bad input) ends the walk after ``limit`` steps."""
    path: list[Span] = []
    found: tuple[tuple[int, str, str], ...] = ()
    node: Span | None = span
    while node is not None and len(path) <= limit:
        known = memo.get(node["span_id"])
        if known is not None:
            found = known
            break
        path.append(node)
        node = by_id.get(node["parent_id"])
    for node in reversed(path):
        parent = by_id.get(node["parent_id"])
        if (parent is None or parent["service"] != node["service"]) and not _is_client(node):
            end = node["start"] + node["duration"]
            found = (*found, (end - end % BUCKET_NS, node["service"], node["resource"]))
        memo[node["span_id"]] = found
    return found


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def add_insight_flags(p: argparse.ArgumentParser) -> None:
    """``agent-sim serve`` flags of the detectors (env vars give the defaults)."""
    d = Thresholds()
    p.add_argument("--n-plus-one-min", type=int,
                   default=int(_env_number("AGENT_SIM_N_PLUS_ONE_MIN", d.n_plus_one_min)),
                   help="repeated DB/HTTP spans under one parent that make an N+1 (env AGENT_SIM_N_PLUS_ONE_MIN;"
                        " default 5)")
    p.add_argument("--n-plus-one-min-ms", type=float,
                   default=_env_number("AGENT_SIM_N_PLUS_ONE_MIN_MS", d.n_plus_one_min_total_ns / 1e6),
                   help="their least total time, ms (env AGENT_SIM_N_PLUS_ONE_MIN_MS; default 0)")
    p.add_argument("--slow-query-ms", type=float,
                   default=_env_number("AGENT_SIM_SLOW_QUERY_MS", d.slow_query_ns / 1e6),
                   help="a DB span this long is a slow query (env AGENT_SIM_SLOW_QUERY_MS; default 500)")


def insight_limits(args: argparse.Namespace) -> Thresholds:
    return Thresholds(max(2, args.n_plus_one_min), int(args.n_plus_one_min_ms * 1e6), int(args.slow_query_ms * 1e6))
