"""Span stats like the Datadog concentrator: 10 s buckets by span end time.

Key: (service, name, resource, type, span.kind, http status, is-trace-root).
Per key: hits, top-level hits, errors, total duration and two latency
sketches (ok / error) with 1 % relative accuracy, using ``ddsketch``'s
logarithmic mapping over a sparse store (adding is a dict increment, cheaper
than ``DDSketch.add`` on the ingest path; merge and quantiles follow DDSketch).

Counted spans: top-level (the client's ``_dd.top_level`` mark, or computed:
parent not in the chunk or a service change) or ``_dd.measured``.

Pure computation and in-memory state; persistence lives in ``store.py``.
Not thread-safe by itself: the receiver calls it under its ingest lock.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

try:  # the optional C grouping and sketch loop (setup.py builds them)
    from agent_sim._cdecode import compute_groups as _fast_groups
    from agent_sim._cdecode import sketch_add as _fast_sketch
except ImportError:  # pragma: no cover - no compiler at install time
    _fast_groups = _fast_sketch = None

try:
    from ddsketch.mapping import LogarithmicMapping
except ImportError:  # the 'agent' extra is missing; serve_main says which pip line to run
    LogarithmicMapping = None  # type: ignore[misc,assignment]

BUCKET_NS = 10 * 10**9
HOUR_NS = 3600 * 10**9
RELATIVE_ACCURACY = 0.01
_MAPPING: Any = LogarithmicMapping(RELATIVE_ACCURACY) if LogarithmicMapping is not None else None
_MULT = _MAPPING._multiplier if _MAPPING else 0.0  # applied to log2(v): see LogarithmicMapping._log_gamma
_OFFSET = int(_MAPPING._offset) if _MAPPING else 0
_MIN_POSITIVE = _MAPPING.min_possible if _MAPPING else 0.0
QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)

# (service, name, resource, type, span_kind, http_status, is_root)
Key = tuple

#: Distinct (service, name, resource, type) keys the stats keep. Past it, a
#: new key's resource becomes OVERFLOW (so per-service and per-operation hits
#: stay exact), and past twice it everything new shares one OVERFLOW key:
#: a client sending unbounded distinct resources (raw URLs, unobfuscated SQL)
#: cannot grow the receiver's memory or stats table without bound.
MAX_STATS_KEYS = 10_000
OVERFLOW = "<other: stats key limit reached>"


class Sketch:
    """A DDSketch (logarithmic mapping, 1 % relative accuracy) over non-negative values."""

    __slots__ = ("bins", "zero", "count", "sum", "max")

    def __init__(self) -> None:
        self.bins: dict[int, float] = {}
        self.zero = 0.0
        self.count = 0.0
        self.sum = 0.0
        self.max = 0.0

    def add_many(self, values: list[int]) -> None:
        if _fast_sketch is not None:  # the loop below in C, for int durations (NotImplemented: nothing done)
            out = _fast_sketch(self.bins, values, _MULT, _OFFSET, _MIN_POSITIVE, self.zero, self.max)
            if out is not NotImplemented:
                self.zero, self.max = out
                self.count += len(values)
                self.sum += sum(values)
                return
        bins = self.bins
        log = math.log2
        ceil = math.ceil
        mult = _MULT
        off = _OFFSET
        top = self.max
        for v in values:
            if v > _MIN_POSITIVE:
                k = ceil(log(v) * mult) + off
                bins[k] = bins.get(k, 0.0) + 1.0
                if v > top:
                    top = v
            else:
                self.zero += 1.0
        self.max = top
        self.count += len(values)
        self.sum += sum(values)

    def add_weighted(self, value: float, weight: float) -> None:
        if weight <= 0:
            return
        if value > _MIN_POSITIVE:
            k = _MAPPING.key(value)
            self.bins[k] = self.bins.get(k, 0.0) + weight
        else:
            self.zero += weight
        self.count += weight
        self.sum += value * weight
        if value > self.max:
            self.max = value

    def merge(self, other: Sketch) -> None:
        bins = self.bins
        for k, c in other.bins.items():
            bins[k] = bins.get(k, 0.0) + c
        self.zero += other.zero
        self.count += other.count
        self.sum += other.sum
        if other.max > self.max:
            self.max = other.max

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` (0 when empty), within 1 % of the true value."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: tuple[float, ...]) -> list[float]:
        """``quantile(q)`` for ascending ``qs`` in one walk over the bins."""
        if self.count <= 0:
            return [0.0] * len(qs)
        out = []
        keys = sorted(self.bins)
        bins = self.bins
        running = self.zero
        i = 0
        n = len(keys)
        for q in qs:
            rank = q * (self.count - 1)
            if rank < self.zero:
                out.append(0.0)
                continue
            while i < n and running + bins[keys[i]] <= rank:
                running += bins[keys[i]]
                i += 1
            out.append(min(_MAPPING.value(keys[i]), self.max) if i < n else self.max)
        return out

    def to_wire(self) -> list:
        return [self.zero, self.count, self.sum, self.max, list(self.bins.items())]

    @classmethod
    def from_wire(cls, data: list) -> Sketch:
        s = cls()
        s.zero, s.count, s.sum, s.max, items = data
        s.bins = {int(k): c for k, c in items}
        return s


class Entry:
    """Aggregated counts for one key in one bucket."""

    __slots__ = ("hits", "top_level_hits", "errors", "duration", "ok", "err")

    def __init__(self) -> None:
        self.hits = 0
        self.top_level_hits = 0
        self.errors = 0
        self.duration = 0
        self.ok = Sketch()
        self.err = Sketch()

    def merge(self, other: Entry) -> None:
        self.hits += other.hits
        self.top_level_hits += other.top_level_hits
        self.errors += other.errors
        self.duration += other.duration
        self.ok.merge(other.ok)
        self.err.merge(other.err)

    def merge_wire(self, data: list) -> None:
        """``merge(Entry.from_wire(data))`` without building the Entry: window
        queries merge tens of thousands of small stored rows."""
        self.hits += data[0]
        self.top_level_hits += data[1]
        self.errors += data[2]
        self.duration += data[3]
        for sketch, (zero, count, total, top, items) in ((self.ok, data[4]), (self.err, data[5])):
            if not count:
                continue
            bins = sketch.bins
            for k, c in items:
                bins[k] = bins.get(k, 0.0) + c
            sketch.zero += zero
            sketch.count += count
            sketch.sum += total
            if top > sketch.max:
                sketch.max = top

    def to_wire(self) -> list:
        # a sum of int64 durations can outgrow msgpack's 64 bits; saturate
        duration = min(self.duration, (1 << 64) - 1)
        return [self.hits, self.top_level_hits, self.errors, duration, self.ok.to_wire(), self.err.to_wire()]

    @classmethod
    def from_wire(cls, data: list) -> Entry:
        e = cls()
        e.hits, e.top_level_hits, e.errors, e.duration = data[0], data[1], data[2], data[3]
        e.ok = Sketch.from_wire(data[4])
        e.err = Sketch.from_wire(data[5])
        return e

    def pack(self) -> bytes:
        return msgpack.packb(self.to_wire())

    @classmethod
    def unpack(cls, blob: bytes) -> Entry:
        return cls.from_wire(msgpack.unpackb(blob, strict_map_key=False))


_STATUS_CODES = {str(code): code for code in range(100, 600)}  # int() of the usual forms, looked up


def compute_groups(traces: list[list[dict[str, Any]]], client_top_level: bool) -> list[list]:
    """Counted spans of decoded, normalized traces grouped per (bucket, key).

    Returns ``[[bucket_ns, key_list, hits, top_level_hits, errors, duration,
    ok_durations, err_durations], ...]`` — a plain structure so the same value
    is applied to the live buckets and appended to the store's journal (and
    replayed from it after a crash). ``client_top_level``: the client marked
    top-level spans itself (``Datadog-Client-Computed-Top-Level``), so only
    its marks count; otherwise top-level is computed per chunk.

    The C version gives the same groups in ~1/3 of the time (it hands back
    NotImplemented for what it does not handle, then this runs in Python)."""
    if _fast_groups is not None:
        out = _fast_groups(traces, client_top_level, BUCKET_NS)
        if out is not NotImplemented:
            return out
    return _compute_groups(traces, client_top_level)


def _compute_groups(traces: list[list[dict[str, Any]]], client_top_level: bool) -> list[list]:
    groups: dict[tuple, list] = {}
    for spans in traces:
        if not client_top_level:
            services = {s["span_id"]: s["service"] for s in spans}
        for s in spans:
            metrics = s["metrics"]
            if not metrics and client_top_level:
                continue  # neither marked top-level nor measured
            top = metrics.get("_dd.top_level")
            if top is None and not client_top_level:
                top = services.get(s["parent_id"]) != s["service"]
            if not top and not metrics.get("_dd.measured"):
                continue
            meta = s["meta"]
            status = meta.get("http.status_code")
            end = s["start"] + s["duration"]
            parent = s["parent_id"]
            key = (end - end % BUCKET_NS, s["service"], s["name"], s["resource"], s["type"],
                   meta.get("span.kind", ""), _STATUS_CODES.get(status) or (int(status) if status else 0), parent == 0)
            g = groups.get(key)
            if g is None:
                g = groups[key] = [key[0], list(key[1:]), 0, 0, 0, 0, [], []]
            g[2] += 1
            if top:
                g[3] += 1
            g[5] += s["duration"]
            if s["error"]:
                g[4] += 1
                g[7].append(s["duration"])
            else:
                g[6].append(s["duration"])
    return list(groups.values())


class Concentrator:
    """Live (not yet flushed) 10 s buckets: ``{bucket_ns: {key: Entry}}``,
    with at most ``max_keys`` distinct (service, name, resource, type) keys
    (see ``MAX_STATS_KEYS``; ``overflowed`` counts the hits folded)."""

    def __init__(self, max_keys: int = MAX_STATS_KEYS) -> None:
        self.live: dict[int, dict[Key, Entry]] = {}
        self.known: set[tuple] = set()  # every (service, name, resource, type) admitted so far
        self.max_keys = max_keys
        self.overflowed = 0

    def admit(self, key: Key, hits: int) -> Key:
        """``key``, or its overflow key once ``max_keys`` keys exist."""
        api = key[:4]
        known = self.known
        if api in known:
            return key
        if len(known) < self.max_keys:
            known.add(api)
            return key
        self.overflowed += hits
        api = (api[0], api[1], OVERFLOW, api[3])
        if api not in known:
            if len(known) >= 2 * self.max_keys:
                api = (OVERFLOW, OVERFLOW, OVERFLOW, "")
            known.add(api)
        return api + key[4:]

    def apply(self, groups: list[list]) -> None:
        live = self.live
        known = self.known
        for bucket, key, hits, tl, errors, duration, ok, err in groups:
            entries = live.get(bucket)
            if entries is None:
                entries = live[bucket] = {}
            key = tuple(key)
            if key[:4] not in known:
                key = self.admit(key, hits)
            e = entries.get(key)
            if e is None:
                e = entries[key] = Entry()
            e.hits += hits
            e.top_level_hits += tl
            e.errors += errors
            e.duration += duration
            if ok:
                e.ok.add_many(ok)
            if err:
                e.err.add_many(err)

    def add_entry(self, bucket: int, key: Key, entry: Entry) -> None:
        key = self.admit(key, entry.hits)
        entries = self.live.setdefault(bucket, {})
        existing = entries.get(key)
        if existing is None:
            entries[key] = entry
        else:
            existing.merge(entry)

    def take(self) -> dict[int, dict[Key, Entry]]:
        """Hand the live buckets to the flusher and start afresh."""
        live, self.live = self.live, {}
        return live


def summarize(entries: dict[tuple, Entry]) -> list[dict[str, Any]]:
    """API rows from entries keyed by (service, name, resource, type)."""
    rows = []
    for (service, name, resource, type_), e in entries.items():
        both = Sketch()
        both.merge(e.ok)
        both.merge(e.err)
        row = {"service": service, "name": name, "resource": resource, "type": type_,
               "hits": e.hits, "top_level_hits": e.top_level_hits, "errors": e.errors,
               "duration_ns": e.duration}
        values = both.quantiles(QUANTILES)
        for value, label in zip(values, ("p50_ns", "p75_ns", "p90_ns", "p95_ns", "p99_ns"), strict=True):
            row[label] = int(value)
        row["max_ns"] = int(both.max)
        rows.append(row)
    rows.sort(key=lambda r: (r["service"], -r["hits"], r["resource"], r["name"]))
    return rows


# -- client-computed stats (PUT /v0.6/stats) ----------------------------------
def validate_client_stats(payload: Any) -> None:
    """Raise ValueError naming the problem unless ``payload`` has the v0.6 shape."""
    if type(payload) is not dict:
        raise ValueError("the body must be a map")
    buckets = payload.get("Stats") or []
    if type(buckets) is not list:
        raise ValueError("'Stats' must be an array of buckets")
    for b in buckets:
        if type(b) is not dict or type(b.get("Start", 0)) is not int or type(b.get("Stats") or []) is not list:
            raise ValueError("a bucket must be a map with integer 'Start' and array 'Stats'")
        for g in b.get("Stats") or []:
            if type(g) is not dict:
                raise ValueError("a stats group must be a map")
            for field in ("Hits", "TopLevelHits", "Errors", "Duration", "HTTPStatusCode"):
                if type(g.get(field) or 0) is not int:
                    raise ValueError(f"stats group field {field!r} must be an integer")
            for field in ("Service", "Name", "Resource", "Type", "SpanKind"):
                if type(g.get(field) or "") is not str:
                    raise ValueError(f"stats group field {field!r} must be a string")
            for field in ("OkSummary", "ErrorSummary"):
                raw = g.get(field)
                if raw is not None and type(raw) is not bytes:
                    raise ValueError(f"stats group field {field!r} must be bin")


def apply_client_stats(concentrator: Concentrator, payload: dict[str, Any]) -> None:
    """Merge client-computed buckets into the live buckets (validated payload)."""
    for b in payload.get("Stats") or []:
        start = b.get("Start") or 0
        bucket = start - start % BUCKET_NS
        for g in b.get("Stats") or []:
            key = (g.get("Service") or "", g.get("Name") or "", g.get("Resource") or "", g.get("Type") or "",
                   g.get("SpanKind") or "", g.get("HTTPStatusCode") or 0, bool(g.get("IsTraceRoot") == 1))
            e = Entry()
            e.hits = g.get("Hits") or 0
            e.top_level_hits = g.get("TopLevelHits") or 0
            e.errors = g.get("Errors") or 0
            e.duration = g.get("Duration") or 0
            try:
                _add_proto_sketch(e.ok, g.get("OkSummary"))
                _add_proto_sketch(e.err, g.get("ErrorSummary"))
            except (ValueError, IndexError):
                pass  # counts still merge; a malformed sketch only loses its latencies
            concentrator.add_entry(bucket, key, e)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, lengths as bytes."""
    import struct

    out: list[tuple[int, int, Any]] = []
    i = 0
    n = len(buf)
    value: Any
    while i < n:
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value = struct.unpack_from("<d", buf, i)[0]
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value = buf[i:i + length]
            i += length
        elif wire == 5:
            value = struct.unpack_from("<f", buf, i)[0]
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((field, wire, value))
    return out


def _zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def _add_proto_sketch(target: Sketch, raw: bytes | None) -> None:
    """Add a protobuf DDSketch (as ddtrace sends it) to ``target``, re-binned by value."""
    import struct

    if not raw:
        return
    gamma, offset = 1.02, 0.0
    stores = []
    for field, _wire, value in _fields(raw):
        if field == 1:
            for f, _w, v in _fields(value):
                if f == 1:
                    gamma = v
                elif f == 2:
                    offset = v
        elif field == 2:
            stores.append(value)
        elif field == 4:
            target.add_weighted(0.0, value)
    mapping = LogarithmicMapping.from_gamma_offset(gamma, offset)
    for store in stores:
        contiguous: list[float] = []
        start = 0
        for f, wire, v in _fields(store):
            if f == 1:
                k, c = 0, 0.0
                for f2, _w2, v2 in _fields(v):
                    if f2 == 1:
                        k = _zigzag(v2)
                    elif f2 == 2:
                        c = v2
                target.add_weighted(mapping.value(k), c)
            elif f == 2:
                if wire == 2:
                    contiguous.extend(struct.unpack(f"<{len(v) // 8}d", v))
                else:
                    contiguous.append(v)
            elif f == 3:
                start = _zigzag(v)
        for idx, c in enumerate(contiguous):
            if c:
                target.add_weighted(mapping.value(start + idx), c)
