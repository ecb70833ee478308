"""DogStatsD intake, the pure part: datagram parsing and Agent-like aggregation.

Format (Datadog docs, "Datagram Format and Shell Usage", protocol v1.1-v1.3)::

    name:value[:value...]|type[|@rate][|#tag,k:v][|c:container][|T<unix_s>]
    _e{title_len,text_len}:title|text[|d:ts][|h:host][|k:key][|p:prio][|s:src][|t:type][|#tags]
    _sc|name|status[|d:ts][|h:host][|#tags][|m:message]

Several lines per packet. ``parse_packet`` never raises: a bad line is
counted under one reason (``REASONS``) and the rest of the packet is kept.

``Aggregator`` keeps 10 s buckets in memory (no SQLite yet): counts are
scaled by 1/rate and reported as per-second rates; gauges keep the last
value; sets the number of distinct values; histograms and timers give
``.max .median .avg .count .95percentile``; distributions a DDSketch
(``agent_sim.stats.Sketch``). A sample with ``|T`` goes to the bucket of its
own timestamp. Thread-safe (one lock); costs one dict lookup and one update
per sample.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from agent_sim.stats import Sketch

BUCKET_S = 10
MAX_DATAGRAM = 8192  # the Agent's default dogstatsd_buffer_size
MAX_CONTEXTS = 10_000
KEEP_S = 24 * 3600
PARSE_CACHE_SIZE = 4096
TYPES = {"c": "count", "g": "gauge", "ms": "timer", "h": "histogram", "s": "set", "d": "distribution"}
HISTOGRAM_FIELDS = ("max", "median", "avg", "count", "95percentile")
AGGS = ("avg", "sum", "min", "max", "p50", "p75", "p90", "p95", "p99")
REASONS = ("oversized", "not_utf8", "bad_format", "empty_name", "bad_type", "bad_value", "bad_rate",
           "bad_timestamp", "bad_event", "bad_service_check")

Tags = tuple[str, ...]


class BadLine(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Sample:
    name: str
    type: str  # a key of TYPES
    values: list[Any]  # floats, or strings for sets
    rate: float = 1.0
    tags: Tags = ()
    container: str = ""
    timestamp: int | None = None


@dataclass
class Event:
    title: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)
    tags: Tags = ()


@dataclass
class ServiceCheck:
    name: str
    status: int
    fields: dict[str, str] = field(default_factory=dict)
    tags: Tags = ()
    message: str = ""


@dataclass
class Parsed:
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    checks: list[ServiceCheck] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def _tags(text: str) -> Tags:
    return tuple(sorted({t for t in text.split(",") if t}))


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise BadLine("bad_value") from None
    if not math.isfinite(v):
        raise BadLine("bad_value")
    return v


def _timestamp(text: str) -> int:
    try:
        ts = int(text)
    except ValueError:
        raise BadLine("bad_timestamp") from None
    if ts <= 0:
        raise BadLine("bad_timestamp")
    return ts


def parse_metric(line: str) -> Sample:
    head, sep, rest = line.partition("|")
    name, colon, raw_values = head.partition(":")
    if not sep or not colon or not raw_values:
        raise BadLine("bad_format")
    if not name.strip():
        raise BadLine("empty_name")
    fields = rest.split("|")
    kind = fields[0]
    if kind not in TYPES:
        raise BadLine("bad_type")
    parts = raw_values.split(":")
    values: list[Any] = parts if kind == "s" else [_number(p) for p in parts]
    sample = Sample(name, kind, values)
    for f in fields[1:]:
        if f.startswith("@"):
            try:
                sample.rate = float(f[1:])
            except ValueError:
                raise BadLine("bad_rate") from None
            if not 0.0 < sample.rate <= 1.0:
                raise BadLine("bad_rate")
        elif f.startswith("#"):
            sample.tags = _tags(f[1:])
        elif f.startswith("c:"):
            sample.container = f[2:]
        elif f.startswith("T"):
            sample.timestamp = _timestamp(f[1:])
        # other fields (e.g. v1.3's e: external data) are ignored, as the Agent does
    return sample


def _optional_fields(parts: list[str]) -> tuple[dict[str, str], Tags]:
    fields: dict[str, str] = {}
    tags: Tags = ()
    for f in parts:
        if f.startswith("#"):
            tags = _tags(f[1:])
        elif len(f) >= 2 and f[1] == ":":
            fields[f[0]] = f[2:]
    return fields, tags


def parse_event(line: str) -> Event:
    try:
        lengths, body = line[3:].split("}:", 1)
        title_len, text_len = (int(n) for n in lengths.split(","))
        raw = body.encode()
        title = raw[:title_len].decode()
        if raw[title_len:title_len + 1] != b"|":
            raise ValueError
        text = raw[title_len + 1:title_len + 1 + text_len].decode()
        tail = raw[title_len + 1 + text_len:].decode()
    except (ValueError, UnicodeDecodeError):
        raise BadLine("bad_event") from None
    if title_len < 0 or text_len < 0 or len(text.encode()) != text_len or (tail and not tail.startswith("|")):
        raise BadLine("bad_event")
    fields, tags = _optional_fields(tail.split("|")[1:])
    return Event(title, text.replace("\\n", "\n"), fields, tags)


def parse_service_check(line: str) -> ServiceCheck:
    parts = line.split("|")
    if len(parts) < 3 or not parts[1] or parts[2] not in ("0", "1", "2", "3"):
        raise BadLine("bad_service_check")
    message = ""
    rest = parts[3:]
    for i, f in enumerate(rest):
        if f.startswith("m:"):  # the message is the last field and may contain '|'
            message = "|".join(rest[i:])[2:]
            rest = rest[:i]
            break
    fields, tags = _optional_fields(rest)
    return ServiceCheck(parts[1], int(parts[2]), fields, tags, message.replace("\\n", "\n"))


def parse_packet(data: bytes, max_size: int = MAX_DATAGRAM, cache: dict[str, Any] | None = None) -> Parsed:
    """Every line of one datagram; never raises.

    ``cache`` (line -> ``Sample`` or bad-line reason, cleared at
    ``PARSE_CACHE_SIZE``) skips re-parsing a repeated metric line, the common
    case (``page.views:1|c|#...``): ~2.5x the ingest rate. Samples are shared,
    so callers must not change them."""
    out = Parsed()
    if len(data) > max_size:
        out.errors["oversized"] = 1
        return out
    try:
        text = data.decode()
    except UnicodeDecodeError:
        out.errors["not_utf8"] = 1
        return out
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        try:
            if line.startswith("_e{"):
                out.events.append(parse_event(line))
            elif line.startswith("_sc|"):
                out.checks.append(parse_service_check(line))
            elif cache is None:
                out.samples.append(parse_metric(line))
            else:
                hit = cache.get(line)
                if hit is None:
                    if len(cache) >= PARSE_CACHE_SIZE:
                        cache.clear()
                    try:
                        hit = cache[line] = parse_metric(line)
                    except BadLine as exc:
                        hit = cache[line] = exc.reason
                if isinstance(hit, Sample):
                    out.samples.append(hit)
                else:
                    out.errors[hit] = out.errors.get(hit, 0) + 1
        except BadLine as exc:
            out.errors[exc.reason] = out.errors.get(exc.reason, 0) + 1
    return out


# -- aggregation ----------------------------------------------------------------


class _Hist:
    """A bucket's raw values while it is open; ``freeze`` keeps only the five aggregates."""

    __slots__ = ("values", "count", "frozen")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.count = 0.0  # weighted by 1/rate
        self.frozen: dict[str, float] | None = None

    def freeze(self) -> None:
        self.frozen = {what: self.point(what) for what in HISTOGRAM_FIELDS}
        self.values = []

    def point(self, what: str) -> float:
        if self.frozen is not None:
            return self.frozen[what]
        v = sorted(self.values)
        if what == "max":
            return v[-1]
        if what == "avg":
            return sum(v) / len(v)
        if what == "count":
            return self.count / BUCKET_S
        return _percentile(v, 0.5 if what == "median" else 0.95)


def _percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


class Aggregator:
    """10 s buckets of DogStatsD samples, keyed by (name, sorted tags)."""

    def __init__(self, max_contexts: int = MAX_CONTEXTS, keep_s: int = KEEP_S) -> None:
        self.max_contexts = max_contexts
        self.keep_s = keep_s
        self.types: dict[tuple[str, Tags], str] = {}
        self.buckets: dict[int, dict[tuple[str, Tags], Any]] = {}
        self.events: list[Event] = []
        self.checks: list[ServiceCheck] = []
        self.counters: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.counters.update(samples=0, packets=0, contexts_overflowed=0, type_conflicts=0, late_histogram_samples=0)
        self._open_from = 0  # buckets before this are closed: their histograms keep aggregates only
        self._lock = threading.Lock()
        self._parse_cache: dict[str, Any] = {}

    def ingest(self, data: bytes, now: float) -> dict[str, int]:
        """Aggregate one datagram; returns its bad lines counted by reason."""
        parsed = parse_packet(data, cache=self._parse_cache)
        with self._lock:
            self.counters["packets"] += 1
            for reason, n in parsed.errors.items():
                self.counters[reason] += n
            for s in parsed.samples:
                self._add(s, now)
            self.events = (self.events + parsed.events)[-1000:]
            self.checks = (self.checks + parsed.checks)[-1000:]
        return parsed.errors

    def _add(self, s: Sample, now: float) -> None:
        key = (s.name, s.tags)
        kind = self.types.get(key)
        if kind is None:
            if len(self.types) >= self.max_contexts:
                self.counters["contexts_overflowed"] += 1
                return
            kind = self.types[key] = s.type
        elif kind != s.type and {kind, s.type} != {"h", "ms"}:
            self.counters["type_conflicts"] += 1
            return
        ts = s.timestamp if s.timestamp is not None else int(now)
        bucket = self.buckets.setdefault(ts - ts % BUCKET_S, {})
        self.counters["samples"] += len(s.values)
        if kind == "c":
            bucket[key] = bucket.get(key, 0.0) + sum(s.values) / s.rate
        elif kind == "g":
            bucket[key] = s.values[-1]
        elif kind == "s":
            bucket.setdefault(key, set()).update(s.values)
        elif kind == "d":
            sketch = bucket.get(key)
            if sketch is None:
                sketch = bucket[key] = Sketch()
            for v in s.values:
                sketch.add_weighted(v, 1.0 / s.rate)
        else:
            hist = bucket.get(key)
            if hist is None:
                hist = bucket[key] = _Hist()
            elif hist.frozen is not None:  # a |T sample for a closed bucket: its raw values are gone
                self.counters["late_histogram_samples"] += len(s.values)
                return
            hist.values.extend(s.values)
            hist.count += len(s.values) / s.rate

    def expire(self, now: float) -> None:
        """Drop buckets past ``keep_s``; reduce closed buckets' histograms to their aggregates
        (memory per closed bucket and context: 5 floats, not every value sent)."""
        close_before = int(now) - int(now) % BUCKET_S - BUCKET_S
        with self._lock:
            for start in [b for b in self.buckets if b < now - self.keep_s]:
                del self.buckets[start]
            for start, bucket in self.buckets.items():
                if self._open_from <= start < close_before:
                    for state in bucket.values():
                        if isinstance(state, _Hist) and state.frozen is None:
                            state.freeze()
            self._open_from = max(self._open_from, close_before)

    def metric_list(self) -> list[dict[str, Any]]:
        """``[{name, type, tag_keys}]``; a histogram is listed under its five derived names."""
        seen: dict[tuple[str, str], set[str]] = {}
        with self._lock:
            for (name, tags), kind in self.types.items():
                names = [f"{name}.{f}" for f in HISTOGRAM_FIELDS] if kind in ("h", "ms") else [name]
                for n in names:
                    seen.setdefault((n, TYPES[kind]), set()).update(t.partition(":")[0] for t in tags)
        return [{"name": n, "type": k, "tag_keys": sorted(keys)} for (n, k), keys in sorted(seen.items())]

    def _resolve(self, name: str) -> tuple[str, str]:
        base, _, suffix = name.rpartition(".")
        if suffix in HISTOGRAM_FIELDS and any(k[0] == base and t in ("h", "ms") for k, t in self.types.items()):
            return base, suffix
        return name, ""

    def query(self, name: str, tags: Tags = (), since: float = 0, until: float = math.inf, agg: str = "avg",
              by: str = "", rollup: int = BUCKET_S) -> list[dict[str, Any]]:
        """Series of ``name`` whose contexts carry all ``tags``, grouped by tag key ``by``.

        Per 10 s bucket the contexts of a group are combined with ``agg``
        (space aggregation); buckets are then averaged over ``rollup``-second
        windows. Distributions instead merge their sketches per group and
        window and read ``agg`` (a percentile, avg, sum, min, max) from it."""
        if agg not in AGGS:
            raise ValueError(f"agg must be one of {', '.join(AGGS)}")
        if rollup < BUCKET_S or rollup % BUCKET_S:
            raise ValueError(f"rollup must be a positive multiple of {BUCKET_S} seconds")
        want = set(tags)
        with self._lock:
            base, what = self._resolve(name)
            groups: dict[str, dict[int, list[Any]]] = {}
            for start, bucket in self.buckets.items():
                if not since <= start <= until:
                    continue
                for (n, ctags), state in bucket.items():
                    if n != base or not want.issubset(ctags):
                        continue
                    group = next((t.partition(":")[2] for t in ctags if t.partition(":")[0] == by), "") if by else ""
                    kind = self.types[(n, ctags)]
                    value: Any
                    if kind == "c":
                        value = state / BUCKET_S
                    elif kind == "s":
                        value = float(len(state))
                    elif kind in ("h", "ms"):
                        value = state.point(what or "avg")
                    else:
                        value = state
                    groups.setdefault(group, {}).setdefault(start, []).append(value)
        series = []
        for group in sorted(groups):
            per_bucket = groups[group]
            windows: dict[int, list[Any]] = {}
            for start in sorted(per_bucket):
                windows.setdefault(start - start % rollup, []).append(per_bucket[start])
            points = [[w, _combine(lists, agg)] for w, lists in sorted(windows.items())]
            series.append({"tags": {by: group} if by else {}, "points": points})
        return series


def _space(values: list[float], agg: str) -> float:
    if agg == "avg":
        return sum(values) / len(values)
    if agg == "sum":
        return sum(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    return _percentile(values, int(agg[1:]) / 100)


def _combine(buckets: list[list[Any]], agg: str) -> float:
    if isinstance(buckets[0][0], Sketch):
        merged = Sketch()
        for sketches in buckets:
            for s in sketches:
                merged.merge(s)
        if agg == "avg":
            return merged.sum / merged.count
        if agg == "sum":
            return merged.sum
        if agg == "max":
            return merged.max
        return merged.quantile(0.0 if agg == "min" else int(agg[1:]) / 100)
    per_bucket = [_space(values, agg) for values in buckets]
    return sum(per_bucket) / len(per_bucket)
