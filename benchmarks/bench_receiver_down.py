"""Receiver down: what does the application pay when nothing listens?

    python benchmarks/bench_receiver_down.py [--spans 1000000] [--rounds 3]

Each run is a fresh process producing ``--spans`` spans (traces of 10: a root
and 9 children, 2 string tags and 1 metric each) as fast as it can, with the
writer pointed either at a **live** sink (a separate process that answers 200
and counts ``X-Datadog-Trace-Count``) or at a port where **nothing** listens.
Runs are interleaved (live, down, live, down, …). Reported per run: app-thread
time per span (the loop alone), RSS growth during the loop (peak VmHWM minus
RSS before it), and the writer's counters. Live runs must deliver every span
they produced (checked against the sink), so dropping cannot look fast.

Targets (issue 2): with the receiver down, RSS growth < 64 MiB and the per-span
cost rises < 20 % against the live sink.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from _sink import NoDelayHandler  # this directory is on sys.path: the script's own

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# -- the sink (own process, so it does not compete for our GIL) ---------------
def run_sink(port: int) -> None:
    counts = {"traces": 0, "payloads": 0}
    lock = threading.Lock()

    class Handler(NoDelayHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                counts["traces"] += int(self.headers.get("X-Datadog-Trace-Count", 0))
                counts["payloads"] += 1
            self._reply(json.dumps({"rate_by_service": {}}).encode())

        do_POST = do_PUT

        def do_GET(self) -> None:
            with lock:
                self._reply(json.dumps(counts).encode())

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


# -- one measured run ------------------------------------------------------------
def run_child(url: str, spans: int) -> None:
    sys.path.insert(0, REPO)
    from tracer import tracer
    from tracer.config import config

    config.agent_url = url
    tracer._reset_writer()
    traces = spans // 10
    # Warm up (imports, first connection / first failure, caches), then measure.
    for _ in range(200):
        with tracer.trace("warm"):
            pass
    tracer.flush(5)
    before = tracer.writer.stats()
    rss_before = _rss_kib("VmRSS")
    started = time.perf_counter()
    for i in range(traces):
        with tracer.trace("request", service="bench", resource="GET /item") as root:
            root.set_tag("http.method", "GET")
            root.set_tag("http.url", "http://bench.local/item")
            root.set_metric("i", i)
            for _ in range(9):
                with tracer.trace("query", resource="SELECT 1") as span:
                    span.set_tag("db.system", "sqlite")
                    span.set_tag("component", "sqlite3")
                    span.set_metric("db.row_count", 1)
    loop = time.perf_counter() - started
    rss_peak = _rss_kib("VmHWM")
    tracer.flush(60)
    stats = tracer.writer.stats()
    produced = traces * 10
    print(
        json.dumps(
            {
                "us_per_span": loop / produced * 1e6,
                "rss_growth_mib": max(0, rss_peak - rss_before) / 1024,
                "produced": produced,
                "sent": stats["spans_sent"] - before["spans_sent"],
                "traces_sent": stats["traces_sent"] - before["traces_sent"],
                "dropped": {k: v - before[k] for k, v in stats.items() if k.startswith("spans_dropped_") and v - before[k]},
            }
        ),
        flush=True,
    )
    tracer._reset_writer()


def measure(url: str, spans: int) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, "--spans", str(spans)],
        env=env, capture_output=True, text=True, timeout=900, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--sink", type=int)
    args = parser.parse_args()
    if args.sink:
        run_sink(args.sink)
        return
    if args.child:
        run_child(args.child, args.spans)
        return

    sink_port = _free_port()
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(sink_port)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        live_url = f"http://127.0.0.1:{sink_port}"
        down_url = f"http://127.0.0.1:{_free_port()}"  # nothing listens here
        live, down = [], []
        for r in range(args.rounds):
            with urllib.request.urlopen(live_url + "/count") as resp:
                traces_before = json.loads(resp.read())["traces"]
            a = measure(live_url, args.spans)
            with urllib.request.urlopen(live_url + "/count") as resp:
                received = json.loads(resp.read())["traces"] - traces_before
            # Every trace the live run produced (plus its 200 warm-up traces) reached the sink.
            a["delivered_all"] = received == a["produced"] // 10 + 200 and not a["dropped"]
            b = measure(down_url, args.spans)
            live.append(a)
            down.append(b)
            print(f"round {r + 1}: live {a['us_per_span']:.2f} us/span (+{a['rss_growth_mib']:.1f} MiB, delivered all: {a['delivered_all']}) | "
                  f"down {b['us_per_span']:.2f} us/span (+{b['rss_growth_mib']:.1f} MiB, dropped {b['dropped']})", flush=True)
    finally:
        sink.terminate()
        sink.wait()
    ratios = [b["us_per_span"] / a["us_per_span"] for a, b in zip(live, down, strict=True)]
    print(f"{args.spans} spans per run, {args.rounds} interleaved rounds, python {sys.version.split()[0]}")
    print(f"  live sink : median {statistics.median(a['us_per_span'] for a in live):.2f} us/span, "
          f"RSS growth median {statistics.median(a['rss_growth_mib'] for a in live):.1f} MiB, every span delivered: {all(a['delivered_all'] for a in live)}")
    print(f"  down      : median {statistics.median(b['us_per_span'] for b in down):.2f} us/span, "
          f"RSS growth max {max(b['rss_growth_mib'] for b in down):.1f} MiB (target < 64)")
    print(f"  down/live per-span cost: median {statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)}; target < 1.20)")


if __name__ == "__main__":
    main()
