"""Monitor evaluation cost: one cycle of ``--monitors`` monitors over ``--series``
DogStatsD series (gauges, ``--names`` metric names x hosts, 10 s buckets over
the last ``--minutes``), through the real ``Aggregator`` and ``Engine``.

Monitors are spread over the metric names; a third group by host, a third
filter on one host, a third aggregate everything; windows last_1m/5m/10m and
all four time aggregations. Prints the median and max of ``--cycles`` cycles
and how many distinct metric queries a cycle made (identical queries are
shared within a cycle), then the same cycles with the queries' answers
replayed from memory: the engine's own cost (states, events, templates)
apart from the data source's (``Aggregator``'s index by name and tag, and
the engine's per-cycle ``dogstatsd_query.Batch``: each name read once a cycle).
``--persist`` saves each cycle's group states and events in a SQLite file, as ``serve`` does.

``--store`` keeps the buckets in a SQLite ``MetricStore`` (flushed as ingested,
as ``serve`` does), so queries read SQLite as well as memory.

    python benchmarks/bench_monitors.py [--monitors 1000] [--series 10000] [--names 100] [--cycles 5] [--store] [--persist]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

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


def cycles(engine: Engine, now: int, n: int) -> tuple[list[float], list[dict]]:
    times = []
    rows: list[dict] = []
    for cycle in range(n):
        CountingSource.calls = 0
        t0 = time.perf_counter()
        rows = engine.evaluate(now + cycle)
        times.append(time.perf_counter() - t0)
    return times, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--monitors", type=int, default=1000)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--store", action="store_true", help="buckets flushed to SQLite as in serve (the last 20 s in memory)")
    ap.add_argument("--persist", action="store_true", help="save states and events in SQLite each cycle")
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
    for start in range(now - args.minutes * 60, now, 10):
        lines = [f"m{n}.value:{rng.uniform(0, 1000):.1f}|g|#env:dev,host:h{h}"
                 for n in range(args.names) for h in range(hosts)]
        for i in range(0, len(lines), 50):  # 50 lines of one name per datagram
            agg.ingest("\n".join(lines[i:i + 50]).encode(), start)
        agg.flush(start)
    print(f"{len(agg.types)} series x {args.minutes * 6} buckets loaded in {time.perf_counter() - began:.1f}s")
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
    times, rows = cycles(engine, now, args.cycles)
    groups = sum(len(r["groups"]) for r in rows)
    errors = [r["error"] for r in rows if "error" in r]
    assert not errors, errors[:3]
    print(f"{args.monitors} monitors ({groups} groups) over {len(agg.types)} series: per cycle median "
          f"{statistics.median(times):.3f}s, max {max(times):.3f}s; {CountingSource.calls} distinct queries a cycle")
    CountingSource.replay = True
    times, _rows = cycles(engine, now, args.cycles)
    print(f"  the engine alone (answers replayed): median {statistics.median(times):.3f}s, max {max(times):.3f}s")


if __name__ == "__main__":
    main()
