"""Ingest orchestration and the state the views read: ``Receiver``.

Called from the server's handler threads (``ingest``, ``ingest_client_stats``,
the ``stats_entries`` / counters reads) and its maintenance thread
(``flush``, ``maintain``). Work that must stay ordered — the stats journal,
the live buckets and the SQLite commit — runs under ``Receiver.lock``; the
lock order is ``Receiver.lock`` → ``Store.lock``. ``ingest`` returns only
after its SQLite transaction committed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from array import array
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import msgpack

from agent_sim.findings import FindingStore
from agent_sim.insights import Thresholds
from agent_sim.model import Trace
from agent_sim.normalize import normalize_payload
from agent_sim.stats import BUCKET_NS, HOUR_NS, OVERFLOW, Concentrator, Entry, compute_groups
from agent_sim.store import JOURNAL_CLIENT_STATS, JOURNAL_GROUPS, Store

try:  # the optional C loop of _count_duplicates (setup.py builds it); the Python loop without it
    from agent_sim._cdecode import count_duplicates as _fast_duplicates
except ImportError:  # pragma: no cover - no compiler at install time
    _fast_duplicates = None

log = logging.getLogger("agent_sim")

KEEP_10S_NS = 24 * HOUR_NS
KEEP_1H_NS = 30 * 24 * HOUR_NS
# Span ids of each trace are remembered for _RECENT_S seconds after its first
# chunk, to count duplicates across chunks (partial flushes and several
# services arrive within seconds). Memory is rate x window, so it is flat after
# _RECENT_S seconds at any steady rate (a count-bounded memory kept filling for
# minutes at low rates); _RECENT_MAX caps bursts. Ids are packed ("Q" array
# bytes): ~100 B per trace where a set of ints cost ~600 B.
_RECENT_S = 10
_RECENT_MAX = 50_000
_SPAN_ID = itemgetter("span_id")


class Receiver:
    """Ingest and query state shared by the handler threads (see module docstring)."""

    def __init__(self, db: str = ":memory:", retention_traces: int = 100_000, retention_hours: float = 24,
                 sample_rates: dict[str, float] | None = None, default_rate: float = 1.0,
                 insight_limits: Thresholds | None = None) -> None:
        self.store = Store(db)
        self.findings = FindingStore(self.store, insight_limits or Thresholds())
        self.retention_traces = retention_traces
        self.retention_hours = retention_hours
        rates = dict(sample_rates or {})
        self.default_rate = rates.pop("", default_rate)
        self.service_rates = rates
        self.lock = threading.Lock()
        self._ingested = threading.Condition(threading.Lock())
        self.generation = 0
        self.stopping = False
        self.concentrator = Concentrator()
        self.totals: dict[tuple, Entry] = {}
        self._counters: dict[str, int] = dict(self.store.counters())
        self._pending: dict[str, int] = {}
        self._recent: dict[int, bytes] = {}  # trace id -> packed span ids ("Q" array bytes)
        self._recent_seconds: deque[tuple[int, list[int]]] = deque()  # (second, trace ids first seen then)
        self._seen_services: set[tuple[str, str]] = set()
        self._rates_body = b""
        self._load_stats()
        self._update_rates()

    # -- startup -----------------------------------------------------------
    def _load_stats(self) -> None:
        for row in self.store.stats_rows():
            self._add_total(tuple(row[2:6]), Entry.unpack(row[9]))
        self.concentrator.known.update(self.totals)
        for _id, kind, data in self.store.journal_rows():
            if kind == JOURNAL_GROUPS:
                self.concentrator.apply(msgpack.unpackb(data, strict_map_key=False))
            elif kind == JOURNAL_CLIENT_STATS:
                from agent_sim.stats import apply_client_stats

                apply_client_stats(self.concentrator, msgpack.unpackb(data, strict_map_key=False))

    def _add_total(self, api_key: tuple, entry: Entry) -> None:
        total = self.totals.get(api_key)
        if total is None:
            total = self.totals[api_key] = Entry()
        total.merge(entry)

    # -- counters ----------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self._counters[name] = self._counters.get(name, 0) + n
            self._pending[name] = self._pending.get(name, 0) + n

    def counters(self) -> dict[str, int]:
        with self.lock:
            return dict(self._counters)

    # -- ingest ------------------------------------------------------------
    def ingest(self, traces: Sequence[Any], client_stats: bool, client_top_level: bool) -> None:
        """Check, normalize, count and commit one payload's traces; returns after COMMIT.

        ``traces`` is decoded, or only unpacked (``decode.unpack_v04``): then
        its spans are type-checked here, and PayloadError is raised before
        anything was counted or stored. Runs on a handler thread. Otherwise
        raises only on storage failure."""
        valid, dropped, spans_in = normalize_payload(traces)  # all of them count in stats
        to_store = []  # those not dropped by sampling (priority > 0 or unset)
        duplicates = self._count_duplicates(valid)
        seen = self._seen_services
        for spans in valid:
            first = spans[0]
            priority = first["metrics"].get("_sampling_priority_v1")
            if priority is None:
                for s in spans:
                    priority = s["metrics"].get("_sampling_priority_v1")
                    if priority is not None:
                        break
            if priority is None or priority > 0:
                to_store.append(spans)
            if len(seen) < 1000:
                pair = (first["service"], first["meta"].get("env", ""))
                if pair not in seen:
                    seen.add(pair)
                    self._update_rates()
        groups = [] if client_stats else compute_groups(valid, client_top_level)
        journal = [(JOURNAL_GROUPS, msgpack.packb(groups))] if groups else []
        with self.lock:
            for name, n in (("spans_received", spans_in), ("traces_dropped", dropped),
                            ("duplicate_span_ids", duplicates), ("traces_received", len(valid) + dropped)):
                if n:
                    self._counters[name] = self._counters.get(name, 0) + n
                    self._pending[name] = self._pending.get(name, 0) + n
            # counters are persisted by flush(), not here: losing a second of
            # them to SIGKILL is fine, an extra statement per payload is not
            self.store.ingest(to_store, journal, {})
            self._apply_stats(self.concentrator.apply, groups)
        if valid:
            self.findings.detect_and_record(to_store, valid)
        self._notify()

    def _apply_stats(self, apply: Any, *args: Any) -> None:
        """Apply stats to the live buckets (under the lock); count what the
        stats key limit folded into an overflow key, and say so once."""
        concentrator = self.concentrator
        before = concentrator.overflowed
        apply(*args)
        folded = concentrator.overflowed - before
        if folded:
            name = "stats_keys_overflowed"
            if name not in self._counters:
                log.warning("agent-sim: more than %d distinct stats keys (service, name, resource, type); "
                            "new resources are counted under %r (see /info counters.%s)",
                            concentrator.max_keys, OVERFLOW, name)
            self._counters[name] = self._counters.get(name, 0) + folded
            self._pending[name] = self._pending.get(name, 0) + folded

    def _count_duplicates(self, traces: list[Trace]) -> int:
        """Record the span ids of each chunk; returns how many span ids repeat
        one of the same chunk or of an earlier chunk of the same trace.
        Handler threads race here harmlessly: at worst a duplicate across two
        concurrent chunks goes uncounted, or a trace is forgotten a second early."""
        recent = self._recent
        seconds = self._recent_seconds
        now = int(time.monotonic())
        if not seconds or seconds[-1][0] != now:
            while seconds and (seconds[0][0] <= now - _RECENT_S or len(recent) > _RECENT_MAX):
                for old_tid in seconds.popleft()[1]:
                    recent.pop(old_tid, None)
            seconds.append((now, []))
        first_seen = seconds[-1][1]
        if _fast_duplicates is not None:  # the same loop in C (ids kept sorted), or NotImplemented
            counted = _fast_duplicates(traces, recent, first_seen)
            if counted is not NotImplemented:
                return counted
        duplicates = 0
        for spans in traces:
            ids = set(map(_SPAN_ID, spans))
            duplicates += len(spans) - len(ids)
            tid = spans[0]["trace_id"]
            earlier = recent.get(tid)
            if earlier is None:
                first_seen.append(tid)
                recent[tid] = array("Q", ids).tobytes()
            else:
                old = set(array("Q", earlier))
                duplicates += len(old & ids)
                recent[tid] = array("Q", old | ids).tobytes()
        return duplicates

    def ingest_client_stats(self, payload: dict[str, Any]) -> None:
        """Merge a decoded ``/v0.6/stats`` payload (journaled like trace stats)."""
        from agent_sim.stats import apply_client_stats, validate_client_stats

        validate_client_stats(payload)
        blob = msgpack.packb(payload)
        with self.lock:
            self.store.ingest([], [(JOURNAL_CLIENT_STATS, blob)], {})
            self._apply_stats(apply_client_stats, self.concentrator, payload)
        self._notify()

    def _notify(self) -> None:
        with self._ingested:
            self.generation += 1
            self._ingested.notify_all()

    def wait_for_ingest(self, generation: int, timeout: float) -> None:
        with self._ingested:
            if self.generation == generation:
                self._ingested.wait(timeout)

    def _update_rates(self) -> None:
        rates = {"service:,env:": self.default_rate}
        for service, env in sorted(self._seen_services):
            rates[f"service:{service},env:{env}"] = self.service_rates.get(service, self.default_rate)
        for service, rate in self.service_rates.items():
            rates.setdefault(f"service:{service},env:", rate)
        self._rates_body = json.dumps({"rate_by_service": rates}).encode()

    @property
    def rates_body(self) -> bytes:
        return self._rates_body

    # -- stats queries -----------------------------------------------------
    def stats_entries(self, since_ns: int | None, until_ns: int | None, service: str | None) -> dict[tuple, Entry]:
        """Entries per (service, name, resource, type) over the window, flushed and live."""
        out: dict[tuple, Entry] = {}

        def add(api_key: tuple, entry: Entry) -> None:
            if service is not None and api_key[0] != service:
                return
            e = out.get(api_key)
            if e is None:
                e = out[api_key] = Entry()
            e.merge(entry)

        with self.lock:
            if since_ns is None and until_ns is None:
                for api_key, entry in self.totals.items():
                    add(api_key, entry)
            else:
                unpackb = msgpack.unpackb
                for svc, name, resource, type_, data in self.store.window_rows(since_ns, until_ns, service):
                    api_key = (svc, name, resource, type_)
                    e = out.get(api_key)
                    if e is None:
                        e = out[api_key] = Entry()
                    e.merge_wire(unpackb(data))
            for bucket, entries in self.concentrator.live.items():
                if since_ns is not None and bucket + BUCKET_NS <= since_ns:
                    continue
                if until_ns is not None and bucket >= until_ns:
                    continue
                for key, entry in entries.items():
                    add(key[:4], entry)
        return out

    # -- maintenance -------------------------------------------------------
    def flush(self) -> None:
        """Persist live buckets (maintenance thread and shutdown)."""
        with self.lock:
            if self._pending:
                pending, self._pending = self._pending, {}
                self.store.ingest([], [], pending)
            if not self.concentrator.live:
                return
            upto = self.store.journal_max()
            live = self.concentrator.take()
            try:
                self.store.flush_stats(live, upto)
            except BaseException:
                for bucket, entries in live.items():
                    for key, entry in entries.items():
                        self.concentrator.add_entry(bucket, key, entry)
                raise
            for entries in live.values():
                for key, entry in entries.items():
                    self._add_total(key[:4], entry)

    def maintain(self, now_ns: int | None = None, full: bool = False) -> None:
        """Flush, evict, checkpoint; roll up stats when ``full`` (maintenance thread)."""
        self.flush()
        self.store.checkpoint()
        if full or self.store.trace_count > self.retention_traces:
            self.store.evict(self.retention_traces, self.retention_hours * 3600)
        if full:
            now_ns = now_ns or time.time_ns()
            with self.lock:
                self.findings.rollup(now_ns, KEEP_10S_NS, KEEP_1H_NS)
                if self.store.rollup(now_ns, KEEP_10S_NS, KEEP_1H_NS):
                    self.totals = {}
                    for row in self.store.stats_rows():
                        self._add_total(tuple(row[2:6]), Entry.unpack(row[9]))

    def close(self) -> None:
        self.stopping = True
        self._notify()
        self.flush()
        self.store.close()
