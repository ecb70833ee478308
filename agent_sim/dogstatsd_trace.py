"""Trace stats as metrics, under Datadog's trace-metric names.

``trace.<span name>.hits`` / ``.errors``: per-second rates (count type);
``trace.<span name>.duration``: seconds per hit (total duration / hits of the
bucket, gauge type); ``trace.<span name>``: the latency distribution in
seconds (the stats' ok and error DDSketches merged; ``agg=p50|p95|p99``).
Tags: ``service``, ``resource_name`` and ``env`` (the env the service's traces
carried since the receiver started; absent when none did). The ``trace.``
namespace is reserved for these, as in Datadog.

Read from the stats table and the not yet flushed live buckets, under
``Receiver.lock`` (the order ``Receiver.lock`` -> ``Store.lock``), from the
HTTP handler threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_sim.stats import Entry, Sketch

if TYPE_CHECKING:
    from agent_sim.ingest import Receiver

SUFFIXES = {"hits": "count", "errors": "count", "duration": "gauge"}
TAG_KEYS = ["env", "resource_name", "service"]


class TraceMetrics:
    """``points`` and ``metric_list`` for ``Aggregator`` (``traces=``) over a ``Receiver``."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def metric_list(self, tags: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The trace metrics of the span names whose stats carry every one of ``tags``."""
        want = dict(t.partition(":")[::2] for t in tags)
        if not set(want) <= set(TAG_KEYS):
            return []
        rx = self.receiver
        with rx.lock:
            envs = {service for service, env in rx._seen_services if env == want.get("env", env)}
            keys = set(rx.totals)
            keys.update(key[:4] for entries in rx.concentrator.live.values() for key in entries)
        span_names = {name for service, name, resource, _type in keys
                      if want.get("service", service) == service and want.get("resource_name", resource) == resource
                      and ("env" not in want or service in envs)}
        out = []
        for span in sorted(span_names):
            out.append({"name": f"trace.{span}", "type": "distribution", "tag_keys": TAG_KEYS})
            out += [{"name": f"trace.{span}.{s}", "type": t, "tag_keys": TAG_KEYS} for s, t in SUFFIXES.items()]
        return out

    def points(self, name: str, since: float, until: float) -> tuple[str, list[tuple], float] | None:
        """``(field, [(tags, kind, width, bucket_s, state)], scale)`` as ``Aggregator.points``
        plus a factor for the values; None when ``name`` is not a trace metric."""
        if not name.startswith("trace."):
            return None
        span, _, suffix = name[6:].rpartition(".")
        if suffix not in SUFFIXES:
            span, suffix = name[6:], ""
        rx = self.receiver
        lo = int(since) * 10**9 - 3600 * 10**9
        hi = int(min(until, 2**62 // 10**9)) * 10**9
        merged: dict[tuple[tuple[str, ...], int, int], Entry] = {}
        with rx.lock:
            envs: dict[str, str] = {}
            for service, env in sorted(rx._seen_services):
                if env:
                    envs.setdefault(service, env)
            # Under the ingest lock, so a flush cannot move live buckets into the table meanwhile;
            # only the SQL runs there, the unpacking after.
            stored = rx.store.execute("SELECT width, bucket, service, resource, data FROM stats "
                                      "WHERE name = ? AND bucket >= ? AND bucket <= ?", (span, lo, hi))
            rows: list[tuple[int, int, str, str, Any]] = []
            for bucket, entries in rx.concentrator.live.items():
                for key, entry in entries.items():
                    if key[1] == span:
                        copy = Entry()
                        copy.merge(entry)
                        rows.append((10, bucket, key[0], key[2], copy))
        rows += [(w, b, s, r, Entry.unpack(d)) for w, b, s, r, d in stored]
        for width, bucket_ns, service, resource, entry in rows:
            start = bucket_ns // 10**9
            if not (since <= start + width - 1 and start <= until):
                continue
            tags = tuple(sorted([f"service:{service}", f"resource_name:{resource}"] +
                                ([f"env:{envs[service]}"] if service in envs else [])))
            k = (tags, width, start)
            if k in merged:
                merged[k].merge(entry)
            else:
                merged[k] = entry
        points: list[tuple] = []
        for (tags, width, start), e in merged.items():
            if suffix == "duration":
                if not e.hits:
                    continue
                avg = e.duration / e.hits / 1e9
                points.append((tags, "g", width, start, [avg, avg, 1]))
            elif suffix:
                points.append((tags, "c", width, start, [e.hits if suffix == "hits" else e.errors]))
            else:
                both = Sketch()
                both.merge(e.ok)
                both.merge(e.err)
                points.append((tags, "d", width, start, both))
        return "", points, (1e-9 if not suffix else 1.0)
