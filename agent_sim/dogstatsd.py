"""DogStatsD intake, the pure part: datagram parsing and Agent-like aggregation.

Format (Datadog docs, "Datagram Format and Shell Usage", protocol v1.1-v1.3)::

    name:value[:value...]|type[|@rate][|#tag,k:v][|c:container][|T<unix_s>]
    _e{title_len,text_len}:title|text[|d:ts][|h:host][|k:key][|p:prio][|s:src][|t:type][|#tags]
    _sc|name|status[|d:ts][|h:host][|#tags][|m:message]

Several lines per packet. ``parse_packet`` never raises: a bad line is
counted under one reason (``REASONS``) and the rest of the packet is kept.

``Aggregator`` keeps the open 10 s buckets in memory: counts are
scaled by 1/rate and reported as per-second rates; gauges keep the last
value; sets the number of distinct values; histograms and timers give
``.max .median .avg .count .95percentile``; distributions a DDSketch
(``agent_sim.stats.Sketch``). A sample with ``|T`` goes to the bucket of its
own timestamp. Thread-safe (one lock); costs one dict lookup and one update
per sample. Closed buckets go to SQLite (``dogstatsd_store``); queries
(``dogstatsd_query.query``, the contract for charts and monitors) read both,
and the trace stats under ``trace.*`` names (``dogstatsd_trace``). An index
by name and by (name, tag), updated only when a context is created or
forgotten (bounded like the contexts; no cost per sample), lets a query
visit only the contexts it asks for. ``changes(name)`` is the change marker
for caches of closed buckets (one comparison per sample).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from agent_sim.dogstatsd_store import merge_state
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
        self.frozen: list[float] | None = None

    def freeze(self) -> None:
        self.frozen = self.state()
        self.values = []

    def state(self) -> list[float]:
        """``[count, max, avg, median, p95]`` (``dogstatsd_store``'s histogram state)."""
        if self.frozen is not None:
            return self.frozen
        v = sorted(self.values)
        return [self.count, v[-1], sum(v) / len(v), percentile(v, 0.5), percentile(v, 0.95)]


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def point_state(kind: str, live: Any) -> Any:
    """An open bucket's value of one context as its stored state (see ``dogstatsd_store``)."""
    if kind == "c":
        return [live]
    if kind == "g":
        return [live, live, 1]
    if kind == "s":
        return [float(len(live)), 1]
    if kind == "d":
        return live
    return live.state()


def _copy(kind: str, state: Any) -> Any:
    """A distribution's sketch copied (merging and caching must not change or follow the live one)."""
    if kind != "d":
        return state
    copy = Sketch()
    copy.merge(state)
    return copy


def _discard(index: dict[Any, set[Tags]], key: Any, tags: Tags) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(tags)
        if not found:
            del index[key]


class Aggregator:
    """10 s buckets of DogStatsD samples, keyed by (name, sorted tags).

    With a ``MetricStore``, ``flush`` moves closed buckets into SQLite and
    ``query`` reads both; without one (unit tests) buckets stay in memory for
    ``keep_s`` and ``flush`` only reduces closed histograms. ``traces``
    (``dogstatsd_trace.TraceMetrics``) answers the ``trace.*`` names."""

    def __init__(self, max_contexts: int = MAX_CONTEXTS, keep_s: int = KEEP_S, store: Any = None,
                 traces: Any = None) -> None:
        self.max_contexts = max_contexts
        self.keep_s = keep_s
        self.store = store
        self.traces = traces
        self.types: dict[tuple[str, Tags], str] = store.contexts() if store is not None else {}
        # The query index, over the contexts of ``types`` (so bounded like them), kept when a context
        # comes or goes: name -> its contexts' tags, and (name, tag) -> the contexts carrying the tag.
        self._by_name: dict[str, set[Tags]] = {}
        self._by_tag: dict[tuple[str, str], set[Tags]] = {}
        for key in self.types:
            self._index(key)
        self.buckets: dict[int, dict[tuple[str, Tags], Any]] = {}
        self.events: list[Event] = []
        self.checks: list[ServiceCheck] = []
        self.counters: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.counters.update(samples=0, packets=0, contexts_overflowed=0, type_conflicts=0, late_histogram_samples=0)
        self._open_from = 0  # buckets before this are closed: their histograms keep aggregates only
        # The change marker (``changes``), for caches of closed buckets' values (``dogstatsd_query.WindowCache``):
        # a sample into a bucket before ``sealed`` (a late ``|T``) or a new or forgotten context bumps its
        # name's mark; data before ``floor`` may be rolled up or deleted.
        self.sealed = 0
        self.floor = store.rolled_until() if store is not None else 0  # 1 h rows of an earlier run
        self._marks: dict[str, int] = {}
        self._mark_count = 0
        self._epoch = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # flush -> query: a bucket is in memory, pending or stored
        self._pending: list[tuple[str, Tags, str, int, int, Any]] = []  # taken from memory, not yet stored
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
            self.add_events(parsed.events, parsed.checks)
        return parsed.errors

    def add_events(self, events: list[Event], checks: list[ServiceCheck]) -> None:
        if events:
            self.events = (self.events + events)[-1000:]
        if checks:
            self.checks = (self.checks + checks)[-1000:]

    def submit(self, sample: Sample, now: float) -> None:
        """Aggregate one sample from inside the process (checks, host metrics); any thread."""
        with self._lock:
            self._add(sample, now)

    def submit_events(self, events: tuple[Event, ...] = (), checks: tuple[ServiceCheck, ...] = ()) -> None:
        """Record events and service checks from inside the process; any thread."""
        with self._lock:
            self.add_events(list(events), list(checks))

    def _add(self, s: Sample, now: float) -> None:
        key = (s.name, s.tags)
        kind = self.types.get(key)
        if kind is None:
            if len(self.types) >= self.max_contexts:
                self.counters["contexts_overflowed"] += 1
                return
            kind = self.types[key] = s.type
            self._index(key)
            self._mark(s.name)
        elif kind != s.type and {kind, s.type} != {"h", "ms"}:
            self.counters["type_conflicts"] += 1
            return
        ts = s.timestamp if s.timestamp is not None else int(now)
        start = ts - ts % BUCKET_S
        if start < self.sealed:
            self._mark(s.name)
        bucket = self.buckets.setdefault(start, {})
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
            self.floor = max(self.floor, math.ceil((now - self.keep_s) / BUCKET_S) * BUCKET_S)
            self.sealed = max(self.sealed, close_before)
            for start, bucket in self.buckets.items():
                if self._open_from <= start < close_before:
                    for state in bucket.values():
                        if isinstance(state, _Hist) and state.frozen is None:
                            state.freeze()
            self._open_from = max(self._open_from, close_before)

    def flush(self, now: float, everything: bool = False) -> None:
        """Move buckets closed for a full bucket (late UDP packets still land in
        the open one), or ``everything`` (shutdown), into the store
        (maintenance thread); SQLite errors propagate and the points are
        retried next time."""
        if self.store is None:
            self.expire(now)
            return
        close_before = math.inf if everything else int(now) - int(now) % BUCKET_S - BUCKET_S
        with self._flush_lock:
            with self._lock:
                for start in [b for b in self.buckets if b < close_before]:
                    for (name, tags), live in self.buckets.pop(start).items():
                        kind = self.types[(name, tags)]
                        self._pending.append((name, tags, kind, BUCKET_S, start, point_state(kind, live)))
                if not everything:
                    self.sealed = max(self.sealed, int(close_before))
            self.store.write(self._pending)
            self._pending = []

    def rollup(self, now: float, keep_10s_s: float, keep_1h_s: float) -> None:
        """The store's roll-up (see ``MetricStore.rollup``); contexts left without data are forgotten."""
        if self.store is None:
            return
        with self._flush_lock:
            with self._lock:  # a window from the next hour on sees none of the 1 h rows this makes
                self.floor = max(self.floor, math.ceil((now - keep_10s_s) / 3600) * 3600)
            gone = self.store.rollup(now, keep_10s_s, keep_1h_s)
            with self._lock:
                live = {key for bucket in self.buckets.values() for key in bucket}
                for key in gone:
                    if key not in live and self.types.pop(key, None) is not None:
                        self._unindex(key)
                        self._mark(key[0])

    def _mark(self, name: str) -> None:
        self._mark_count += 1
        if len(self._marks) >= 2 * self.max_contexts:  # names long gone: a new epoch, every mark changes
            self._marks.clear()
            self._epoch = self._mark_count
        self._marks[name] = self._mark_count

    def changes(self, name: str) -> tuple[int, int, tuple[int, int, int]]:
        """``(sealed, floor, mark)`` for a cache of ``name``'s closed buckets: buckets before
        ``sealed`` change only with ``mark`` (a late sample or a context coming or going; a
        histogram's ``.max`` etc. follows its base name's), and a window from ``floor`` on
        sees no rolled-up or deleted data. Read it before the data it vouches for."""
        with self._lock:
            marks = self._marks
            return self.sealed, self.floor, (self._epoch, marks.get(name, 0), marks.get(name.rpartition(".")[0], 0))

    def _index(self, key: tuple[str, Tags]) -> None:
        name, tags = key
        self._by_name.setdefault(name, set()).add(tags)
        for tag in tags:
            self._by_tag.setdefault((name, tag), set()).add(tags)

    def _unindex(self, key: tuple[str, Tags]) -> None:
        name, tags = key
        _discard(self._by_name, name, tags)
        for tag in tags:
            _discard(self._by_tag, (name, tag), tags)

    def contexts(self, name: str, tags: Tags = ()) -> list[Tags]:
        """The tags of ``name``'s contexts carrying every one of ``tags`` (sorted), from the
        index: proportional to the smallest of the tags' context sets. Caller holds ``_lock``."""
        if not tags:
            return sorted(self._by_name.get(name, ()))
        sets = sorted((self._by_tag.get((name, t), set()) for t in set(tags)), key=len)
        return sorted(sets[0].intersection(*sets[1:]))

    def metric_list(self, tags: Tags = ()) -> list[dict[str, Any]]:
        """``[{name, type, tag_keys}]`` of the contexts carrying every one of ``tags``;
        a histogram is listed under its five derived names."""
        seen: dict[tuple[str, str], set[str]] = {}
        want = set(tags)
        with self._lock:
            for (name, ctags), kind in self.types.items():
                if not want.issubset(ctags):
                    continue
                names = [f"{name}.{f}" for f in HISTOGRAM_FIELDS] if kind in ("h", "ms") else [name]
                for n in names:
                    seen.setdefault((n, TYPES[kind]), set()).update(t.partition(":")[0] for t in ctags)
        listed = [{"name": n, "type": k, "tag_keys": sorted(keys)} for (n, k), keys in sorted(seen.items())]
        return listed + (self.traces.metric_list(tags) if self.traces is not None else [])

    def query(self, name: str, tags: Tags = (), since: float = 0, until: float = math.inf, agg: str = "avg",
              by: str = "", rollup: int = BUCKET_S) -> list[dict[str, Any]]:
        """See ``agent_sim.dogstatsd_query.query`` (the stable contract)."""
        from agent_sim.dogstatsd_query import query

        return query(self, name, tags, since, until, agg, by, rollup)

    def points(self, name: str, since: float, until: float,
               tags: Tags = ()) -> tuple[str, list[tuple[Tags, str, int, int, Any]]]:
        """``(field, [(tags, kind, width, bucket, state)])`` of metric ``name``'s contexts carrying
        every one of ``tags`` (a histogram's ``.max`` etc. resolved to its base name and ``field``)
        from memory, the pending flush and the store; one entry per context and bucket.
        In memory it visits only the index's matching contexts in the window's buckets."""
        with self._flush_lock:  # SQLite is read outside ``_lock``: the intake never waits for it
            with self._lock:
                base, what = self._resolve(name)
                want = set(tags)
                pending = [(ctags, kind, width, start, _copy(kind, state))
                           for n, ctags, kind, width, start, state in self._pending
                           if n == base and since <= start + width - 1 and start <= until and want.issubset(ctags)]
                window = [(start, bucket) for start, bucket in sorted(self.buckets.items())
                          if since <= start + BUCKET_S - 1 and start <= until]
                memory = []  # by context, then start
                for ctags in self.contexts(base, tags) if window else ():
                    key = (base, ctags)
                    kind = self.types[key]
                    memory += [(ctags, kind, BUCKET_S, start, _copy(kind, point_state(kind, live)) if kind == "d"
                                else point_state(kind, live))
                               for start, bucket in window if (live := bucket.get(key)) is not None]
            stored = self.store.rows(base, since, until) if self.store is not None else []
        if not pending and not stored:  # one source: one point per context and bucket already
            return what, memory
        # A bucket can be in SQLite and in memory too (a late |T sample): merged, oldest first.
        # Only the newer points (memory: the last seconds) go through a dict; stored rows stream past.
        newer: dict[tuple[Tags, int, int], tuple[str, Any]] = {}
        for ctags, kind, width, start, state in pending + memory:
            k = (ctags, width, start)
            prev = newer.get(k)
            newer[k] = (kind, state if prev is None else merge_state(kind, prev[1], state))
        out = []
        for ctags, kind, width, start, state in stored:
            if not want or want.issubset(ctags):
                new = newer.pop((ctags, width, start), None) if newer else None
                out.append((ctags, kind, width, start, state if new is None else merge_state(kind, state, new[1])))
        out += [(ctags, kind, width, start, state) for (ctags, width, start), (kind, state) in newer.items()]
        return what, out

    def latest(self, since: float) -> list[tuple[str, Tags, str, Any]]:
        """``(name, tags, kind, state)`` of each context's newest 10 s bucket since ``since``."""
        found: dict[tuple[str, Tags], tuple[int, str, Any]] = {}
        with self._flush_lock:  # SQLite is read outside ``_lock``: the intake never waits for it
            stored = self.store.latest(since) if self.store is not None else []
            with self._lock:
                for name, tags, kind, _width, start, state in self._pending:
                    if start >= since and start >= found.get((name, tags), (-1,))[0]:
                        found[(name, tags)] = (start, kind, state)
                for start in sorted(b for b in self.buckets if b >= since):
                    for key, live in self.buckets[start].items():
                        kind = self.types[key]
                        found[key] = (start, kind, point_state(kind, live))
        for name, tags, kind, start, state in stored:
            if start > found.get((name, tags), (-1,))[0]:
                found[(name, tags)] = (start, kind, state)
        return [(name, tags, kind, state) for (name, tags), (_start, kind, state) in sorted(found.items())]

    def _resolve(self, name: str) -> tuple[str, str]:
        base, _, suffix = name.rpartition(".")
        if suffix in HISTOGRAM_FIELDS and any(self.types[(base, t)] in ("h", "ms") for t in self._by_name.get(base, ())):
            return base, suffix
        return name, ""
