"""Where a monitor's numbers come from: the data-source seam.

``MetricSource.fetch(query, since, until)`` → ``{group key: (tags, [(t, v)])}``,
one point per 10 s bucket, through ``Aggregator.query`` (``agent_sim.dogstatsd``;
its signature is the contract, whatever stores the buckets). Group-by on
several keys queries by the first key, then by the next within each group;
contexts without a group-by tag are left out, as Datadog does.

The aggregator also answers the trace metrics (``agent_sim.dogstatsd_trace``):
``trace.<span>.hits|errors`` (per-second rates), ``.duration`` (seconds per
hit) and ``trace.<span>`` (latency distribution, ``p50:`` … ``p99:`` in
seconds), tags ``service``, ``resource_name``, ``env``.
``trace.<span>.error_rate`` is ours: errors / hits per bucket.
``.as_count()`` turns per-second rates into counts per bucket.

Called from the evaluation thread; each call holds the aggregator's (and
the store's) lock only for its own read. Within ``cycle()`` (the engine wraps
each evaluation in it) the queries go through one ``dogstatsd_query.Batch``:
a metric name is read once per cycle (more only when a longer window needs
it), and its points are shared by every monitor and group on it; the
source's ``WindowCache`` (bounded; ``cache.stats()``) keeps each query's
values of closed buckets from one cycle to the next, so only the buckets
closed since the last cycle and the open ones are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent_sim.dogstatsd_query import Batch, WindowCache
from agent_sim.monitors.query import Query
from agent_sim.monitors.state import GroupData, Points

BUCKET_S = 10

Keyed = dict[tuple[tuple[str, str], ...], Points]


class MetricSource:
    def __init__(self, aggregator: Any, cache: WindowCache | None = None) -> None:
        self.aggregator = aggregator
        self.cache = cache if cache is not None else WindowCache()
        self._batch: Batch | None = None

    @contextmanager
    def cycle(self) -> Iterator[None]:
        """One evaluation: queries inside share their reads (see the module docstring)."""
        self._batch = Batch(self.aggregator, self.cache)
        try:
            yield
        finally:
            self._batch = None

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
        source = self._batch if self._batch is not None else self.aggregator
        series = source.query(name, scope, since, until, agg, by[0] if by else "", BUCKET_S)
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
