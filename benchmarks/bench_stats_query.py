"""Stats query latency over 1M stored spans: ``GET /api/stats`` (whole
history, the default), with a service filter, with a one-hour window, and
``GET /api/services``.

The spans go in through the real intake (v0.4 payloads of 1,000 spans, as
bench_ingest sends them) into a receiver on a temporary SQLite file; start
times are spread over the last ``--hours`` so the window query has many
buckets to merge. Prints the median and p95 of ``--repeat`` requests each.

    python benchmarks/bench_stats_query.py [--spans 1000000] [--hours 2] [--repeat 30]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import sys
import tempfile
import time

import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from agent_sim.server import ReceiverServer  # noqa: E402

SERVICES = ["web-store", "inventory", "billing", "auth", "search"]
RESOURCES = [f"GET /r{i}" for i in range(20)]


def payload(rng: random.Random, now: int, spread_ns: int) -> bytes:
    traces = []
    for _ in range(100):
        tid = rng.getrandbits(63) | 1
        root = rng.getrandbits(63) | 1
        start = now - rng.randrange(spread_ns)
        service = rng.choice(SERVICES)
        spans = [{"trace_id": tid, "span_id": root, "parent_id": 0, "service": service, "name": "flask.request",
                  "resource": rng.choice(RESOURCES), "type": "web", "start": start,
                  "duration": rng.randrange(1_000_000, 50_000_000), "error": int(rng.random() < 0.02),
                  "meta": {"http.status_code": "200"}, "metrics": {"_dd.top_level": 1}}]
        for i in range(9):
            spans.append({"trace_id": tid, "span_id": rng.getrandbits(63) | 1, "parent_id": root,
                          "service": "mysql" if i % 3 == 0 else service, "name": "mysql.query" if i % 3 == 0 else "work",
                          "resource": f"SELECT * FROM t{i} WHERE id = ?" if i % 3 == 0 else f"step{i}",
                          "type": "sql" if i % 3 == 0 else "", "start": start + i, "duration": rng.randrange(10_000, 900_000),
                          "error": 0, "meta": {}, "metrics": {"_dd.measured": 1} if i % 3 == 0 else {}})
        traces.append(spans)
    return msgpack.packb(traces)


def timed_get(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    return time.perf_counter() - t0, body


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spans", type=int, default=1_000_000)
    p.add_argument("--hours", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)
    rng = random.Random(3)
    now = time.time_ns()
    spread = int(args.hours * 3600e9)
    with tempfile.TemporaryDirectory() as tmp:
        server = ReceiverServer(port=0, db=os.path.join(tmp, "stats.db"), retention_traces=100_000)
        server.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            t0 = time.perf_counter()
            for _ in range(args.spans // 1000):
                conn.request("PUT", "/v0.4/traces", payload(rng, now, spread),
                             {"Content-Type": "application/msgpack"})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
            server.receiver.flush()
            print(f"ingested {args.spans:,} spans in {time.perf_counter() - t0:.1f} s "
                  f"({server.receiver.store.trace_count:,} traces kept)")
            since = int(now / 1e9 - 3600)
            for label, path in [("/api/stats", "/api/stats"),
                                ("/api/stats?service=", "/api/stats?service=web-store"),
                                ("/api/services", "/api/services"),
                                ("/api/stats 1 h window", f"/api/stats?since={since}")]:
                timings = []
                for _ in range(args.repeat):
                    elapsed, body = timed_get(conn, path)
                    timings.append(elapsed * 1000)
                timings.sort()
                print(f"{label:24s} median {statistics.median(timings):7.1f} ms   "
                      f"p95 {timings[int(len(timings) * 0.95) - 1]:7.1f} ms   ({len(body):,} bytes)")
            rows = server.receiver.store.execute("SELECT count(*) FROM stats")[0][0]
            print(f"persisted stats rows: {rows:,}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
