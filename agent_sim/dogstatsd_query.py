"""Metric queries: ``query``, the contract charts and monitors build on.

    query(aggregator, name, tags=(), since=0, until=inf, agg="avg", by="", rollup=10)
        -> [{"tags": {by: value} or {}, "points": [[unix_seconds, value], ...]}, ...]

(also ``Aggregator.query(name, ...)``, and ``GET /api/metrics/query``).

- ``name``: a DogStatsD metric (a histogram's ``<name>.max|.median|.avg|.count|.95percentile``),
  or a trace metric (``dogstatsd_trace``): ``trace.<span name>.hits`` and
  ``.errors`` (per-second rates), ``.duration`` (seconds per hit), and the
  distribution ``trace.<span name>`` (seconds; ask ``agg=p50|p95|p99|avg|max``),
  tagged ``service``, ``resource_name``, ``env``.
- ``tags``: ``("k:v", ...)``, every one must be on a series' context.
- ``since`` / ``until``: Unix seconds; a bucket counts when it overlaps them.
- ``agg``: one of ``AGGS``. Per bucket the contexts of a group are combined
  with it (space aggregation); the buckets of a ``rollup``-second window
  (a multiple of 10) are then averaged. Distributions instead merge their
  sketches per group and window and read ``agg`` from the merged sketch.
- ``by``: a tag key; one series per value (contexts without it: value "").
- Units: counts are per-second rates; 1 h buckets (data older than 24 h)
  give one point at the hour's start.

Raises ValueError (a message for the user) on a bad ``agg`` or ``rollup``.
Any thread; reads memory under the aggregator's lock and SQLite under the store's.
"""

from __future__ import annotations

import math
import re
from typing import Any

from agent_sim.dogstatsd import AGGS, BUCKET_S, HISTOGRAM_FIELDS, Aggregator, Tags, percentile
from agent_sim.stats import Sketch
from agent_sim.views import _label


def query(aggregator: Aggregator, name: str, tags: Tags = (), since: float = 0, until: float = math.inf,
          agg: str = "avg", by: str = "", rollup: int = BUCKET_S) -> list[dict[str, Any]]:
    """See the module docstring."""
    if agg not in AGGS:
        raise ValueError(f"agg must be one of {', '.join(AGGS)}")
    if rollup < BUCKET_S or rollup % BUCKET_S:
        raise ValueError(f"rollup must be a positive multiple of {BUCKET_S} seconds")
    since = max(since, 0.0)
    if math.isnan(since) or math.isnan(until) or since == math.inf:
        raise ValueError("since and until must be Unix seconds")
    scale = 1.0
    traces = aggregator.traces
    found = traces.points(name, since, until) if traces is not None else None
    if found is not None:
        what, points, scale = found
    else:
        what, points = aggregator.points(name, since, until)
    want = set(tags)
    groups: dict[str, dict[int, list[Any]]] = {}
    for ctags, kind, width, start, state in points:
        if not want.issubset(ctags):
            continue
        group = next((t.partition(":")[2] for t in ctags if t.partition(":")[0] == by), "") if by else ""
        groups.setdefault(group, {}).setdefault(start, []).append(point_value(kind, state, width, what))
    series = []
    for group in sorted(groups):
        per_bucket = groups[group]
        windows: dict[int, list[Any]] = {}
        for start in sorted(per_bucket):
            windows.setdefault(start - start % rollup, []).append(per_bucket[start])
        points_out = [[w, _combine(lists, agg) * scale] for w, lists in sorted(windows.items())]
        series.append({"tags": {by: group} if by else {}, "points": points_out})
    return series


def point_value(kind: str, state: Any, width: int, what: str) -> Any:
    """One bucket's value of one context (a Sketch for distributions)."""
    if kind == "c":
        return state[0] / width
    if kind == "g":
        return state[0] if width == BUCKET_S else state[1] / state[2]
    if kind == "s":
        return state[0] / state[1]
    if kind == "d":
        return state
    count, top, avg, median, p95 = state
    return {"count": count / width, "max": top, "avg": avg, "median": median, "95percentile": p95}[what or "avg"]


def _space(values: list[float], agg: str) -> float:
    if agg == "avg":
        return sum(values) / len(values)
    if agg == "sum":
        return sum(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    return percentile(values, int(agg[1:]) / 100)


def _combine(buckets: list[list[Any]], agg: str) -> float:
    if isinstance(buckets[0][0], Sketch):
        merged = Sketch()
        for sketches in buckets:
            for s in sketches:
                merged.merge(s)
        if merged.count <= 0:
            return 0.0
        if agg == "avg":
            return merged.sum / merged.count
        if agg == "sum":
            return merged.sum
        if agg == "max":
            return merged.max
        return merged.quantile(0.0 if agg == "min" else int(agg[1:]) / 100)
    per_bucket = [_space(values, agg) for values in buckets]
    return sum(per_bucket) / len(per_bucket)


def _om_name(name: str) -> str:
    return "dogstatsd_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _om_labels(tags: Tags, extra: str = "") -> str:
    labels: dict[str, list[str]] = {}
    for tag in tags:
        key, _, value = tag.partition(":")
        key = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        if not key or key[0].isdigit():
            key = "tag_" + key
        labels.setdefault(key, []).append(value)
    parts = [f'{k}="{_label(",".join(v))}"' for k, v in sorted(labels.items())] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def openmetrics(aggregator: Aggregator, now: float) -> list[str]:
    """OpenMetrics lines (no ``# EOF``) for ``/metrics``: each DogStatsD
    context's newest 10 s bucket of the last minute, as ``dogstatsd_<name>``
    with its tags as labels. Counts are per-second rates (gauges); a
    histogram gives ``_max _median _avg _count _95percentile`` gauges; a
    distribution a summary (0.5, 0.95, 0.99, ``_sum``, ``_count``)."""
    families: dict[str, tuple[str, list[str]]] = {}

    def add(name: str, kind: str, line: str) -> None:
        families.setdefault(name, (kind, []))[1].append(line)

    for name, tags, kind, state in aggregator.latest(now - 60):
        base = _om_name(name)
        if kind == "d":
            labels = _om_labels(tags)
            for q, v in zip((0.5, 0.95, 0.99), state.quantiles((0.5, 0.95, 0.99)), strict=True):
                quantile = f'quantile="{q}"'
                add(base, "summary", f"{base}{_om_labels(tags, quantile)} {v:.9g}")
            add(base, "summary", f"{base}_sum{labels} {state.sum:.9g}")
            add(base, "summary", f"{base}_count{labels} {state.count:.9g}")
        elif kind in ("h", "ms"):
            for field in HISTOGRAM_FIELDS:
                fam = f"{base}_{field}"
                add(fam, "gauge", f"{fam}{_om_labels(tags)} {point_value(kind, state, BUCKET_S, field):.9g}")
        else:
            add(base, "gauge", f"{base}{_om_labels(tags)} {point_value(kind, state, BUCKET_S, ''):.9g}")
    lines = []
    for fam, (kind, samples) in sorted(families.items()):
        lines.append(f"# TYPE {fam} {kind}")
        lines += samples
    return lines
