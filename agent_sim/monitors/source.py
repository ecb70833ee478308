"""Where a monitor's numbers come from: the data-source seam.

``MetricSource.fetch(query, since, until)`` → ``{group key: (tags, [(t, v)])}``,
one point per 10 s bucket, through ``Aggregator.query`` (``agent_sim.dogstatsd``;
its signature is the contract, whatever stores the buckets). Group-by on
several keys queries by the first key, then by the next within each group;
contexts without a group-by tag are left out, as Datadog does.

``trace.<span>.hits|errors`` (per-second rates), ``.duration`` (seconds per
hit) and ``trace.<span>`` (latency distribution, ``p50:`` … ``p99:`` in
seconds) are the trace metrics, tags ``service`` and ``resource_name``: the
aggregator answers them when it has a ``traces`` provider; otherwise they are
read here from the receiver's trace stats. ``trace.<span>.error_rate`` is
ours: errors / hits per bucket. ``.as_count()`` turns per-second rates into
counts per bucket.

Called from the evaluation thread; each call holds the aggregator's (and
receiver's) lock only for its own read.
"""

from __future__ import annotations

from typing import Any

from agent_sim.monitors.query import MonitorError, Query
from agent_sim.monitors.state import GroupData, Points

BUCKET_S = 10
TRACE_TAGS = ("service", "resource_name", "env")

Keyed = dict[tuple[tuple[str, str], ...], Points]


class MetricSource:
    def __init__(self, aggregator: Any, receiver: Any = None) -> None:
        self.aggregator = aggregator
        self.receiver = receiver

    def fetch(self, q: Query, since: float, until: float) -> GroupData:
        if q.metric.startswith("trace.") and q.metric.endswith(".error_rate"):
            base = q.metric[: -len(".error_rate")]
            errors = self._keyed(base + ".errors", q.scope, since, until, "sum", q.by)
            hits = self._keyed(base + ".hits", q.scope, since, until, "sum", q.by)
            keyed: Keyed = {}
            for key, points in hits.items():
                errs = dict(errors.get(key, []))
                keyed[key] = [(t, errs.get(t, 0.0) / h) for t, h in points if h > 0]
        else:
            keyed = self._keyed(q.metric, q.scope, since, until, q.space_agg, q.by)
        out: GroupData = {}
        for key, points in keyed.items():
            if q.as_count:
                points = [(t, v * BUCKET_S) for t, v in points]
            out[",".join(f"{k}:{v}" for k, v in key) or "*"] = (dict(key), points)
        return out

    def _keyed(self, name: str, scope: tuple[str, ...], since: float, until: float, agg: str,
               by: tuple[str, ...]) -> Keyed:
        if name.startswith("trace.") and getattr(self.aggregator, "traces", None) is None and self.receiver:
            return trace_stats(self.receiver, name, scope, since, until, agg, by)
        series = self.aggregator.query(name, scope, since, until, agg, by[0] if by else "", BUCKET_S)
        out: Keyed = {}
        for s in series:
            points = [(float(t), float(v)) for t, v in s["points"] if v is not None]
            if not by:
                out[()] = points
                continue
            value = s["tags"].get(by[0], "")
            if not value:
                continue
            tag = (by[0], value)
            if len(by) == 1:
                out[(tag,)] = points
            else:
                inner = self._keyed(name, tuple(sorted({*scope, f"{tag[0]}:{tag[1]}"})), since, until, agg, by[1:])
                out.update({(tag, *k): p for k, p in inner.items()})
        return out


def trace_stats(rx: Any, name: str, scope: tuple[str, ...], since: float, until: float, agg: str,
                by: tuple[str, ...]) -> Keyed:
    """The trace metrics from ``Receiver.stats_entries``, one 10 s bucket at a time
    (until the aggregator serves them itself). ``env`` is accepted and not filtered on."""
    from agent_sim.stats import Entry

    span, _, suffix = name[len("trace."):].rpartition(".")
    if suffix not in ("hits", "errors", "duration"):
        span, suffix = name[len("trace."):], ""
    want = dict(t.partition(":")[::2] for t in scope)
    bad = sorted(k for k in (*want, *by) if k not in TRACE_TAGS)
    if bad:
        raise MonitorError("query", f"trace metrics are tagged {', '.join(TRACE_TAGS)}; not {', '.join(bad)}")
    keyed: dict[tuple[tuple[str, str], ...], dict[int, Entry]] = {}
    start = int(since) - int(since) % BUCKET_S
    for bucket in range(start, int(until) + 1, BUCKET_S):
        entries = rx.stats_entries(bucket * 10**9, (bucket + BUCKET_S) * 10**9, want.get("service"))
        for (service, span_name, resource, _type), entry in entries.items():
            if span_name != span or want.get("resource_name", resource) != resource:
                continue
            tags = {"service": service, "resource_name": resource}
            key = tuple((k, tags.get(k, "")) for k in by)
            merged = keyed.setdefault(key, {}).setdefault(bucket, Entry())
            merged.merge(entry)
    out: Keyed = {}
    for key, buckets in keyed.items():
        points = []
        for bucket, e in sorted(buckets.items()):
            if not e.hits:
                continue
            if suffix in ("hits", "errors"):
                value = getattr(e, suffix) / BUCKET_S
            elif suffix == "duration" or agg in ("avg", "sum"):
                value = e.duration / e.hits / 1e9
            else:
                e.ok.merge(e.err)
                value = (e.ok.max if agg == "max" else e.ok.quantile(0.0 if agg == "min" else int(agg[1:]) / 100)) / 1e9
            points.append((float(bucket), value))
        out[key] = points
    return out
