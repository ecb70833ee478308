"""Monitor evaluation cost: one cycle of ``--monitors`` monitors over ``--series``
DogStatsD series (gauges, ``--names`` metric names x hosts, 10 s buckets over
the last ``--minutes``), through the real ``Aggregator`` and ``Engine``.

Monitors are spread over the metric names; a third group by host, a third
filter on one host, a third aggregate everything; windows last_1m/5m/10m and
all four time aggregations. Prints the first cycle (it fills the source's
``WindowCache``: every closed bucket's value per query shape) apart, then the
median and max of ``--cycles`` more, how many distinct metric queries a cycle
made (identical queries are shared within a cycle) and the peak RSS; then the
same cycles with the queries' answers replayed from memory: the engine's own
cost (states, events, templates) apart from the data source's (``Aggregator``'s
index by name and tag, the per-cycle ``dogstatsd_query.Batch``: each name read
once a cycle, and the window cache: only buckets not closed at the last cycle).
``--advance 60`` ingests a minute of new data before each cycle (untimed), as a
running receiver sees between its 60 s evaluations.
``--persist`` saves each cycle's group states and events in a SQLite file, as ``serve`` does.

``--store`` keeps the buckets in a SQLite ``MetricStore`` (flushed as ingested,
as ``serve`` does), so queries read SQLite as well as memory.

    python benchmarks/bench_monitors.py [--monitors 1000] [--series 10000] [--names 100] [--cycles 5] [--store] [--persist] [--advance 60]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from agent_sim.dogstatsd import Aggregator  # noqa: E402
from agent_sim.monitors.engine import Engine  # noqa: E402
from agent_sim.monitors.notify import Notifier  # noqa: E402
from agent_sim.monitors.source import MetricSource  # noqa: E402


class CountingSource(MetricSource):
    """Counts queries; with ``replay`` on, answers a query seen before from memory."""

    calls = 0
    replay = False
    seen: dict = {}

    def fetch(self, q, since, until):  # type: ignore[no-untyped-def]
        key = (q.metric, q.scope, q.space_agg, q.by, q.as_count, until - since)
        if self.replay and key in self.seen:
            return self.seen[key]
        CountingSource.calls += 1
        got = self.seen[key] = super().fetch(q, since, until)
        return got


def cycles(engine: Engine, now: int, n: int, advance: Callable[[int], int] | None = None) -> tuple[list[float], list[dict]]:
    """``n`` timed cycles; ``advance(now)`` (untimed) ingests new data between them and returns the new now."""
    times = []
    rows: list[dict] = []
    for cycle in range(n):
        if advance is not None and cycle:
            now = advance(now)
        CountingSource.calls = 0
        t0 = time.perf_counter()
        rows = engine.evaluate(now + (0 if advance else cycle))
        times.append(time.perf_counter() - t0)
    return times, rows


def load(agg: Aggregator, rng: random.Random, names: int, hosts: int, since: int, until: int) -> None:
    """Gauges for every name and host, one sample per 10 s bucket in [since, until), flushed as ``serve`` does."""
    for start in range(since, until, 10):
        lines = [f"m{n}.value:{rng.uniform(0, 1000):.1f}|g|#env:dev,host:h{h}" for n in range(names) for h in range(hosts)]
        for i in range(0, len(lines), 50):  # 50 lines of one name per datagram
            agg.ingest("\n".join(lines[i:i + 50]).encode(), start)
        agg.flush(start)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--monitors", type=int, default=1000)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--store", action="store_true", help="buckets flushed to SQLite as in serve (the last 20 s in memory)")
    ap.add_argument("--persist", action="store_true", help="save states and events in SQLite each cycle")
    ap.add_argument("--advance", type=int, default=0, metavar="SECONDS",
                    help="ingest SECONDS of new data (untimed) before each cycle after the first, the clock moving on")
    args = ap.parse_args()
    rng = random.Random(7)
    hosts = args.series // args.names
    now = int(time.time()) // 10 * 10
    store = None
    if args.store or args.persist:
        import tempfile

        from agent_sim.dogstatsd_store import MetricStore
        from agent_sim.store import Store

        store = Store(os.path.join(tempfile.mkdtemp(), "bench.db"))
    agg = Aggregator(max_contexts=args.series + 1, store=MetricStore(store) if args.store and store else None)
    began = time.perf_counter()
    load(agg, rng, args.names, hosts, now - args.minutes * 60, now)
    print(f"{len(agg.types)} series x {args.minutes * 6} buckets loaded in {time.perf_counter() - began:.1f}s, "
          f"peak RSS {peak_rss_mb():.0f} MB")
    persist = None
    if args.persist and store is not None:
        from agent_sim.monitors.persist import MonitorStore

        persist = MonitorStore(store)
    engine = Engine(CountingSource(agg), Notifier(log=lambda line: None), lambda: float(now), persist=persist)
    windows = ("last_1m", "last_5m", "last_10m")
    for i in range(args.monitors):
        name = f"m{i % args.names}.value"
        scope = ("{env:dev} by {host}", f"{{host:h{rng.randrange(hosts)}}}", "{*}")[i % 3]
        query = f"{('avg', 'max', 'min', 'sum')[i % 4]}({windows[i % 3]}):avg:{name}{scope} > {rng.randrange(900, 2000)}"
        engine.put_monitor({"name": f"bench {i}", "query": query, "options": {"thresholds": {}}})
    def advance(at: int) -> int:
        load(agg, rng, args.names, hosts, at, at + args.advance)
        return at + args.advance

    times, rows = cycles(engine, now, args.cycles + 1, advance if args.advance else None)
    groups = sum(len(r["groups"]) for r in rows)
    errors = [r["error"] for r in rows if "error" in r]
    assert not errors, errors[:3]
    new = f" with {args.advance} s of new data before each" if args.advance else ""
    print(f"{args.monitors} monitors ({groups} groups) over {len(agg.types)} series: first cycle {times[0]:.3f}s, "
          f"then{new} per cycle median {statistics.median(times[1:]):.3f}s, max {max(times[1:]):.3f}s; "
          f"{CountingSource.calls} distinct queries a cycle")
    cache = getattr(engine.source, "cache", None)
    print(f"  peak RSS {peak_rss_mb():.0f} MB" + (f"; window cache {cache.stats()}" if cache is not None else ""))
    if args.advance:
        return
    CountingSource.replay = True
    times, _rows = cycles(engine, now, args.cycles)
    print(f"  the engine alone (answers replayed): median {statistics.median(times):.3f}s, max {max(times):.3f}s")


if __name__ == "__main__":
    main()
