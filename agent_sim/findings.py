"""Findings persistence (one row per fingerprint, in the receiver's SQLite
file) and the ``GET /api/insights`` view.

Thread model: uses ``Store.db`` under ``Store.lock`` like the store itself;
called from ingest handler threads (``record``) and view threads (``query``).
Bounded: at most ``MAX_FINDINGS`` rows, the least recently seen evicted first;
each keeps at most ``MAX_EXAMPLES`` example trace ids.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from agent_sim.insights import DEFAULT_LIMITS, KINDS, BreakdownKey, Finding, Thresholds, breakdown, detect
from agent_sim.model import Trace, trace_id_hex
from agent_sim.stats import HOUR_NS, OVERFLOW
from agent_sim.store import window_select

if TYPE_CHECKING:
    from agent_sim.ingest import Receiver
    from agent_sim.store import Store

log = logging.getLogger(__name__)

MAX_FINDINGS = 10_000
MAX_EXAMPLES = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS findings (
    fingerprint TEXT PRIMARY KEY,
    kind TEXT NOT NULL, service TEXT NOT NULL, resource TEXT NOT NULL,
    title TEXT NOT NULL, detail TEXT NOT NULL,
    count INTEGER NOT NULL, total_duration_ns INTEGER NOT NULL,
    first_seen_ns INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL,
    examples TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_last_seen ON findings(last_seen_ns);
CREATE TABLE IF NOT EXISTS breakdown (
    width INTEGER NOT NULL, bucket INTEGER NOT NULL,
    service TEXT NOT NULL, resource TEXT NOT NULL, span_service TEXT NOT NULL, span_type TEXT NOT NULL,
    exclusive_ns INTEGER NOT NULL,
    PRIMARY KEY (width, bucket, service, resource, span_service, span_type)
) WITHOUT ROWID;
"""
_ADD_BREAKDOWN = ("INSERT INTO breakdown VALUES (10, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE"
                  " SET exclusive_ns = exclusive_ns + excluded.exclusive_ns")
MAX_ENDPOINTS = 10_000  # distinct (service, resource) endpoints in the breakdown; more share OVERFLOW


class FindingStore:
    def __init__(self, store: Store, limits: Thresholds = DEFAULT_LIMITS) -> None:
        self.store = store
        self.limits = limits
        self._warned = False
        with store.lock:
            store.db.executescript(_SCHEMA)
            self._endpoints = set(store.db.execute("SELECT DISTINCT service, resource FROM breakdown"))

    def detect_and_record(self, traces: list[Trace], all_traces: list[Trace] | None = None) -> dict[str, int]:
        """Run the detectors on stored traces, add the time breakdown of
        ``all_traces`` (default: ``traces``; sampled-out ones count, as in the
        stats) and persist; returns new occurrences per kind. Never raises: a
        detector bug is logged once."""
        try:
            times: dict[BreakdownKey, int] = {}
            for spans in traces if all_traces is None else all_traces:
                breakdown(spans, times)
            found: list[tuple[Finding, str, int]] = []
            for spans in traces:
                for f in detect(spans, self.limits):
                    first = spans[0]
                    tid = trace_id_hex(first["trace_id"], first["meta"].get("_dd.p.tid"))
                    found.append((f, tid, max(s["start"] + s["duration"] for s in spans)))
            if found or times:
                self._record(found, self._bounded(times))
            counts: dict[str, int] = {}
            for f, _tid, _end in found:
                counts[f.kind] = counts.get(f.kind, 0) + 1
            return counts
        except Exception:
            if not self._warned:
                self._warned = True
                log.exception("insights: detectors failed (logged once)")
            return {}

    def _bounded(self, times: dict[BreakdownKey, int]) -> list[tuple[int, str, str, str, str, int]]:
        """Rows to add; past ``MAX_ENDPOINTS`` endpoints a new one is counted
        under the stats' overflow resource (the key space stays bounded)."""
        known = self._endpoints
        rows = []
        for (bucket, service, resource, span_service, span_type), ns in times.items():
            if (service, resource) not in known:
                if len(known) < MAX_ENDPOINTS:
                    known.add((service, resource))
                else:
                    resource = OVERFLOW
            rows.append((bucket, service, resource, span_service, span_type, ns))
        return rows

    def _record(self, found: list[tuple[Finding, str, int]],
                times: list[tuple[int, str, str, str, str, int]]) -> None:
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN")
            try:
                if times:
                    db.executemany(_ADD_BREAKDOWN, times)
                for f, tid, end in found:
                    row = db.execute("SELECT examples FROM findings WHERE fingerprint = ?",
                                     (f.fingerprint,)).fetchone()
                    if row is None:
                        db.execute("INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   (f.fingerprint, f.kind, f.service, f.resource, f.title, json.dumps(f.detail),
                                    f.count, f.total_duration_ns, end, end, json.dumps([tid])))
                        continue
                    examples = json.loads(row[0])
                    if tid not in examples:
                        examples = [tid, *examples][:MAX_EXAMPLES]
                    db.execute("UPDATE findings SET count = count + ?, total_duration_ns = total_duration_ns + ?,"
                               " first_seen_ns = min(first_seen_ns, ?), last_seen_ns = max(last_seen_ns, ?),"
                               " examples = ? WHERE fingerprint = ?",
                               (f.count, f.total_duration_ns, end, end, json.dumps(examples), f.fingerprint))
                if found:
                    db.execute("DELETE FROM findings WHERE fingerprint IN (SELECT fingerprint FROM findings"
                               " ORDER BY last_seen_ns DESC LIMIT -1 OFFSET ?)", (MAX_FINDINGS,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def query(self, service: str | None = None, resource: str | None = None, kind: str | None = None,
              since_ns: int | None = None, until_ns: int | None = None) -> list[dict[str, Any]]:
        """Findings, worst first (total time, then count)."""
        where: list[str] = []
        args: list[Any] = []
        for col, value in (("service", service), ("resource", resource), ("kind", kind)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        if since_ns is not None:
            where.append("last_seen_ns >= ?")
            args.append(since_ns)
        if until_ns is not None:
            where.append("first_seen_ns < ?")
            args.append(until_ns)
        sql = ("SELECT kind, fingerprint, service, resource, title, detail, count, total_duration_ns,"
               " first_seen_ns, last_seen_ns, examples FROM findings"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY total_duration_ns DESC, count DESC LIMIT 1000")
        keys = ("kind", "fingerprint", "service", "resource", "title", "detail", "count", "total_duration_ns",
                "first_seen_ns", "last_seen_ns", "example_trace_ids")
        out = []
        for row in self.store.execute(sql, args):
            item = dict(zip(keys, row, strict=True))
            item["detail"] = json.loads(item["detail"])
            item["example_trace_ids"] = json.loads(item["example_trace_ids"])
            out.append(item)
        return out

    def breakdown(self, service: str | None = None, resource: str | None = None, since_ns: int | None = None,
                  until_ns: int | None = None) -> list[dict[str, Any]]:
        """Exclusive time per (span service, span type) of the endpoints
        matching ``service``/``resource``, over the buckets that overlap the
        window; largest first, with each row's share of the total."""
        window, args = window_select("breakdown", "span_service, span_type, exclusive_ns", since_ns, until_ns,
                                     [("service", service), ("resource", resource)])
        sql = ("SELECT span_service, span_type, sum(exclusive_ns) AS ns FROM (" + window
               + ") GROUP BY span_service, span_type ORDER BY ns DESC, span_service, span_type")
        rows = self.store.execute(sql, args)
        total = sum(r[2] for r in rows) or 1
        return [{"service": svc, "span_type": type_, "exclusive_ns": ns, "share": round(ns / total, 4)}
                for svc, type_, ns in rows]

    def rollup(self, now_ns: int, keep_10s_ns: int, keep_1h_ns: int) -> None:
        """As the stats: 10 s rows older than ``keep_10s_ns`` fold into hour
        rows; hour rows older than ``keep_1h_ns`` go (maintenance thread)."""
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN")
            try:
                cutoff = now_ns - keep_10s_ns
                db.execute("INSERT INTO breakdown SELECT 3600, bucket - bucket % ?, service, resource, span_service,"
                           " span_type, sum(exclusive_ns) FROM breakdown WHERE width = 10 AND bucket < ?"
                           " GROUP BY 2, 3, 4, 5, 6 ON CONFLICT DO UPDATE"
                           " SET exclusive_ns = exclusive_ns + excluded.exclusive_ns", (HOUR_NS, cutoff))
                db.execute("DELETE FROM breakdown WHERE width = 10 AND bucket < ?", (cutoff,))
                db.execute("DELETE FROM breakdown WHERE bucket < ?", (now_ns - keep_1h_ns,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._endpoints = set(db.execute("SELECT DISTINCT service, resource FROM breakdown"))

    def counts_by_kind(self) -> dict[str, int]:
        rows = dict(self.store.execute("SELECT kind, sum(count) FROM findings GROUP BY kind"))
        return {k: int(rows.get(k) or 0) for k in KINDS}


def api_insights(rx: Receiver, q: dict[str, str]) -> tuple[int, Any]:
    """GET /api/insights?service=&resource=&kind=&since=&until= (epoch seconds)."""
    from agent_sim.views import BadQuery, _int

    kind = q.get("kind") or None
    if kind and kind not in KINDS:
        raise BadQuery(f"kind: one of {', '.join(KINDS)}, got {kind!r}")
    since = _int(q, "since")
    until = _int(q, "until")
    return 200, rx.findings.query(q.get("service") or None, q.get("resource") or None, kind,
                                  since * 10**9 if since is not None else None,
                                  until * 10**9 if until is not None else None)


def api_breakdown(rx: Receiver, q: dict[str, str]) -> tuple[int, Any]:
    """GET /api/breakdown?service=&resource=&since=&until= (epoch seconds)."""
    from agent_sim.views import _seconds

    return 200, rx.findings.breakdown(q.get("service") or None, q.get("resource") or None,
                                      _seconds(q, "since"), _seconds(q, "until"))
