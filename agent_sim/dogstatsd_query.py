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

Cost: the aggregator's index (name, then tag) gives the matching contexts,
so a query visits those contexts in the window's buckets only (plus the
store's rows of the name). ``Batch(aggregator).query`` (same signature and
answers) is for many queries at one moment, as a monitors cycle makes: each
name is read and valued once, and each query only filters and groups.
``Batch(aggregator, WindowCache())`` (the monitors' source) also keeps, across
cycles, each query shape's value per closed 10 s bucket, so a cycle reads only
the buckets closed since the last one and those still open (see ``WindowCache``).
"""

from __future__ import annotations

import math
import re
from array import array
from collections import OrderedDict
from typing import Any

from agent_sim.dogstatsd import AGGS, BUCKET_S, HISTOGRAM_FIELDS, Aggregator, Tags, percentile
from agent_sim.stats import Sketch
from agent_sim.views import _label


def query(aggregator: Aggregator, name: str, tags: Tags = (), since: float = 0, until: float = math.inf,
          agg: str = "avg", by: str = "", rollup: int = BUCKET_S) -> list[dict[str, Any]]:
    """See the module docstring."""
    since = _check(since, until, agg, rollup)
    return _series(read(aggregator, name, since, until, tags), tags, since, until, agg, by, rollup)

MAX_CACHED_VALUES = 2_000_000  # a WindowCache's bucket values: 16 MB of doubles


class Batch:
    """``query`` for many queries at one moment (a monitors evaluation cycle):
    each metric name is read once (again only when a query's window reaches
    past what was read: then over both), its points valued once, and every
    query of that name filters and groups them. Answers equal ``query``'s
    over the data as it was at the name's read. One thread; not shared."""

    def __init__(self, aggregator: Aggregator, cache: WindowCache | None = None) -> None:
        self.aggregator = aggregator
        self.cache = cache
        self._read: dict[str, tuple[float, float, tuple[Valued, float]]] = {}
        self._changes: dict[str, tuple[int, int, tuple[int, int, int]]] = {}

    def changes(self, name: str) -> tuple[int, int, tuple[int, int, int]]:
        """``Aggregator.changes(name)`` as it was before this batch first read ``name``."""
        got = self._changes.get(name)
        if got is None:
            got = self._changes[name] = self.aggregator.changes(name)
        return got

    def query(self, name: str, tags: Tags = (), since: float = 0, until: float = math.inf, agg: str = "avg",
              by: str = "", rollup: int = BUCKET_S) -> list[dict[str, Any]]:
        since = _check(since, until, agg, rollup)
        if self.cache is not None and rollup == BUCKET_S and not name.startswith("trace."):
            return self.cache.query(self, name, tags, since, until, agg, by)
        return _series(self.valued(name, since, until), tags, since, until, agg, by, rollup)

    def valued(self, name: str, since: float, until: float) -> tuple[Valued, float]:
        """``read``'s answer for ``name`` covering [since, until] (and maybe more)."""
        if self.cache is not None:
            self.changes(name)
        got = self._read.get(name)
        if got is None or until > got[1]:
            lo, hi = (since, until) if got is None else (min(since, got[0]), max(until, got[1]))
            got = self._read[name] = (lo, hi, read(self.aggregator, name, lo, hi))
        elif since < got[0]:  # a longer window: read only the buckets ending before what was read
            valued, scale = got[2]
            older, _scale = read(self.aggregator, name, since, got[0])
            for ctags, points in older.items():
                mine = valued.setdefault(ctags, [])
                mine[:0] = [p for p in points if p[0] + p[1] - 1 < got[0]]
            got = self._read[name] = (since, got[1], (valued, scale))
        return got[2]


class _Shape:
    """One query shape's cached values: per group, its value per 10 s bucket from ``lo`` to ``hi``."""

    __slots__ = ("mark", "lo", "hi", "span", "groups")

    def __init__(self, mark: tuple[int, ...], lo: int) -> None:
        self.mark = mark
        self.lo = lo
        self.hi = lo - BUCKET_S
        self.span = 0  # the longest window asked: older buckets are trimmed
        self.groups: dict[str, array[float]] = {}  # NaN: no point in that bucket

    def size(self) -> int:
        return len(self.groups) * (self.hi - self.lo + BUCKET_S) // BUCKET_S


class WindowCache:
    """Across monitor cycles (``Batch(aggregator, cache)``): per query shape (name, tags,
    agg, by; 10 s points), each group's value in every closed bucket, as ``_series``
    computes it. A cycle then reads only the buckets not yet closed (or closed since)
    instead of the whole window: closed buckets rarely change.

    Never stale: ``Aggregator.changes`` is read before the data; a shape whose name's mark
    moved (a late ``|T`` sample, a context coming or going) is recomputed, and a window
    reaching before ``floor`` (roll-ups, retention) bypasses the cache, as do ``trace.*``
    names (their stats have no marker). Bounded: at most ``max_values`` bucket values
    (8 bytes each), least recently used shapes evicted (counted in ``evictions``)."""

    def __init__(self, max_values: int = MAX_CACHED_VALUES) -> None:
        self.max_values = max_values
        self.values = 0
        self.hits = self.misses = self.evictions = 0
        self._shapes: OrderedDict[tuple[str, Tags, str, str], _Shape] = OrderedDict()

    def stats(self) -> dict[str, int]:
        return {"shapes": len(self._shapes), "values": self.values, "max_values": self.max_values,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}

    def query(self, batch: Batch, name: str, tags: Tags, since: float, until: float, agg: str,
              by: str) -> list[dict[str, Any]]:
        sealed, floor, mark = batch.changes(name)
        first = math.ceil((since - BUCKET_S + 1) / BUCKET_S) * BUCKET_S  # the window's first bucket start
        last = sealed - BUCKET_S if until >= sealed else int(until // BUCKET_S) * BUCKET_S  # its last closed one
        if since < floor or first > last:
            return _series(batch.valued(name, since, until), tags, since, until, agg, by, BUCKET_S)
        key = (name, tags, agg, by)
        shape = self._shapes.pop(key, None)
        if shape is not None:
            self.values -= shape.size()
            if shape.mark != mark or shape.lo > first or shape.hi < first - BUCKET_S:
                shape = None
        if shape is None:
            self.misses += 1
            shape = _Shape(mark, first)
        else:
            self.hits += 1
        shape.span = max(shape.span, last - first)
        tail_from = shape.hi + BUCKET_S
        tail = _series(batch.valued(name, tail_from, until), tags, tail_from, until, agg, by,
                       BUCKET_S) if tail_from <= until else []
        fresh = {s["tags"][by] if by else "": s["points"] for s in tail}
        if last > shape.hi and not self._keep(shape, fresh, last):
            return _series(batch.valued(name, since, until), tags, since, until, agg, by, BUCKET_S)
        self._shapes[key] = shape
        self.values += shape.size()
        self._bound()
        return _answer(shape, fresh, first, until, by)

    def _keep(self, shape: _Shape, fresh: dict[str, list[list[Any]]], last: int) -> bool:
        """The fresh points of buckets up to ``last`` into ``shape``; False (and nothing kept) on a NaN
        value or a point before ``shape.lo`` (a 1 h point: the floor should have kept it out)."""
        grow = (last - shape.hi) // BUCKET_S
        width = (shape.hi - shape.lo) // BUCKET_S + 1
        for group, points in fresh.items():
            for t, v in points:
                if t <= last and (v != v or t < shape.lo):
                    return False
            if group not in shape.groups:
                shape.groups[group] = _NAN * width
        for values in shape.groups.values():
            values.extend(_NAN * grow)
        for group, points in fresh.items():
            values = shape.groups[group]
            for t, v in points:
                if t <= last:
                    values[(t - shape.lo) // BUCKET_S] = v
        shape.hi = last
        drop = (shape.hi - shape.span - BUCKET_S - shape.lo) // BUCKET_S  # older than any window asked
        if drop > width:  # trimmed now and then, not every cycle
            for values in shape.groups.values():
                del values[:drop]
            shape.lo += drop * BUCKET_S
        return True

    def _bound(self) -> None:
        while self.values > self.max_values and self._shapes:
            _key, shape = self._shapes.popitem(last=False)
            self.values -= shape.size()
            self.evictions += 1


_NAN = array("d", [math.nan])


def _answer(shape: _Shape, fresh: dict[str, list[list[Any]]], first: int, until: float, by: str) -> list[dict[str, Any]]:
    """``_series``'s answer from the cached buckets from ``first`` on and the fresh points after them."""
    series = []
    lo, hi = shape.lo, min(shape.hi, until)
    i0, i1 = (first - lo) // BUCKET_S, int((hi - lo) // BUCKET_S) + 1
    for group in sorted(shape.groups.keys() | fresh.keys()):
        values = shape.groups.get(group)
        points = [] if values is None else [[lo + i * BUCKET_S, v] for i in range(i0, i1) if (v := values[i]) == v]
        points += [p for p in fresh.get(group, ()) if p[0] > shape.hi]
        if points:
            series.append({"tags": {by: group} if by else {}, "points": points})
    return series

# per context tags: [(bucket start, width, value: a float, or a Sketch for distributions)] by start
Valued = dict[Tags, list[tuple[int, int, Any]]]


def _check(since: float, until: float, agg: str, rollup: int) -> float:
    if agg not in AGGS:
        raise ValueError(f"agg must be one of {', '.join(AGGS)}")
    if rollup < BUCKET_S or rollup % BUCKET_S:
        raise ValueError(f"rollup must be a positive multiple of {BUCKET_S} seconds")
    since = max(since, 0.0)
    if math.isnan(since) or math.isnan(until) or since == math.inf:
        raise ValueError("since and until must be Unix seconds")
    return since


def read(aggregator: Aggregator, name: str, since: float, until: float, tags: Tags = ()) -> tuple[Valued, float]:
    """``name``'s points in the window (the contexts carrying ``tags``, or, for trace
    metrics, all of them) by context, each valued once (``point_value``), and the
    factor for the combined values."""
    traces = aggregator.traces
    found = traces.points(name, since, until) if traces is not None else None
    scale = 1.0
    if found is not None:
        what, points, scale = found
    else:
        what, points = aggregator.points(name, since, until, tags)
    valued: Valued = {}
    last: Tags | None = None
    mine: list[tuple[int, int, Any]] = []
    for ctags, kind, width, start, state in points:  # a context's points mostly come in a run
        if ctags is not last:
            mine = valued.setdefault(ctags, [])
            last = ctags
        mine.append((start, width, point_value(kind, state, width, what)))
    for mine in valued.values():
        mine.sort(key=_start)
    return valued, scale


def _start(point: tuple[int, int, Any]) -> int:
    return point[0]


def _series(read_: tuple[Valued, float], tags: Tags, since: float, until: float, agg: str, by: str,
            rollup: int) -> list[dict[str, Any]]:
    valued, scale = read_
    want = set(tags)
    members: dict[str, list[list[tuple[int, int, Any]]]] = {}
    for ctags, points in valued.items():
        if want.issubset(ctags):
            group = next((t.partition(":")[2] for t in ctags if t.partition(":")[0] == by), "") if by else ""
            members.setdefault(group, []).append(points)
    series = []
    for group in sorted(members):
        inside = [[p for p in points if since <= p[0] + p[1] - 1 and p[0] <= until] for points in members[group]]
        starts = [p[0] for p in inside[0]]
        if rollup == BUCKET_S and _plain(starts) and all(
                points and not isinstance(points[0][2], Sketch) and [p[0] for p in points] == starts for points in inside):
            # The same buckets in every context, one per window: the per-bucket lists by columns
            if len(inside) == 1:  # one context: what _combine gives for one value, 0 + v (sum()'s start)
                points_out = [[start, (0 + value) * scale] for start, _width, value in inside[0]]
            else:
                columns = zip(*[[p[2] for p in points] for points in inside], strict=True)
                points_out = [[start, _combine([list(column)], agg) * scale]
                              for start, column in zip(starts, columns, strict=True)]
        else:
            per_bucket: dict[int, list[Any]] = {}
            for points in inside:
                for start, _width, value in points:
                    per_bucket.setdefault(start, []).append(value)
            windows: dict[int, list[Any]] = {}
            for start in sorted(per_bucket):
                windows.setdefault(start - start % rollup, []).append(per_bucket[start])
            points_out = [[w, _combine(lists, agg) * scale] for w, lists in sorted(windows.items())]
        if points_out:
            series.append({"tags": {by: group} if by else {}, "points": points_out})
    return series


def _plain(starts: list[int]) -> bool:
    """Distinct starts aligned on ``BUCKET_S`` (sorted): one bucket per ``BUCKET_S`` window."""
    return len(set(starts)) == len(starts) and all(start % BUCKET_S == 0 for start in starts)


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
