"""Added cost per ``cursor.execute("SELECT 1")`` round trip: plain vs ours vs ddtrace.

    python benchmarks/bench_mysql.py [--rounds 5] [--batches 30] [--batch 100] [--drivers pymysql,mysqldb,mysql] [--cpu last|none|N] [--cursor-per-query] [--calls | --instructions N]

Starts a private MariaDB (tests/mariadb.py) and a live trace sink (answers
200 ``{"rate_by_service": {}}``, counts ``X-Datadog-Trace-Count``). For each
round, each driver, each variant runs in its own fresh process, the variant
order rotating per round (A B C, B C A, ...). A process connects over TCP to
127.0.0.1, warms up, then times ``batches`` batches of ``batch`` iterations
of ``cur.execute("SELECT 1"); cur.fetchall()`` (each query its own trace, as
an untraced caller's query is) and reports the median batch as ns per query.
Then it flushes its tracer and the parent checks that the sink received every
trace: a tracer that drops spans must not look fast for it.

MariaDB and every measured process run on one CPU (``--cpu``, default the
last one this process may use; the sink is not pinned). Unpinned, the
scheduler sometimes puts client and server on different CPUs of the VM, and
each round trip then pays two cross-CPU wake-ups: on the 2-core development
machine plain PyMySQL went from 21 to 90-110 µs per query, per process at
random, which made per-round ratios noise. Pinned, the tracers' background
threads compete with the application for the same CPU, so their cost is
counted in full, for both tracers. ``--cpu none`` turns pinning off.

Reported per driver: the median ns per query of each variant, the median of
per-round added costs (variant − plain of the same round), and the median
(and range) of per-round ratios ours_added / ddtrace_added (target ≤ 0.12).

``--cursor-per-query``: each query on a cursor of its own, ``with
conn.cursor() as cur: cur.execute("SELECT 1"); cur.fetchall()``, as a web
app that opens one per request does: the traced ``cursor()``, the proxy's
creation and its ``__enter__``/``__exit__`` are then measured too.

``--calls``: one round; each process counts the Python and builtin function
calls of 1,000 queries under cProfile instead of timing them (calls on the
app thread only; the writer threads' work is not in it). Deterministic, so a
change's effect on the per-query path shows on a busy machine where timings
are noise.

``--instructions N``: one round; each process runs under valgrind's callgrind
twice, with 0 and with N queries after the warm-up, and the difference per
query is reported: instructions on the application thread and in the whole
process (the tracers' writer threads included). Deterministic on the app
thread; the whole-process figure moves by ±1-2 k with the writers' batching.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer

from _sink import NoDelayHandler  # this directory is on sys.path: the script's own

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.mariadb import MariaDB  # noqa: E402

CHILD = r"""
import json, os, sys, time
variant, driver = sys.argv[1], sys.argv[2]
batches, batch = int(sys.argv[3]), int(sys.argv[4])
if variant == "ours":
    import tracer
    tracer.patch(**{driver: True})
elif variant == "ddtrace":
    from ddtrace import patch
    patch(**{driver: True})
kw = dict(host="127.0.0.1", port=int(os.environ["B_PORT"]), user=os.environ["B_USER"],
          password=os.environ["B_PASSWORD"], database=os.environ["B_DB"])
if driver == "pymysql":
    import pymysql
    conn = pymysql.connect(**kw)
elif driver == "mysqldb":
    import MySQLdb
    conn = MySQLdb.connect(**kw)
else:
    import mysql.connector
    conn = mysql.connector.connect(**kw)
if variant != "plain":
    assert type(conn).__module__ != type(conn.__wrapped__).__module__, "not traced"
cur = conn.cursor()
if os.environ.get("B_CURSOR"):  # --cursor-per-query
    def run(n):
        for _ in range(n):
            with conn.cursor() as c:
                c.execute("SELECT 1"); c.fetchall()
else:
    def run(n):
        for _ in range(n):
            cur.execute("SELECT 1"); cur.fetchall()
run(200)
if os.environ.get("B_CALLS"):  # --calls: Python and builtin calls per query, counted by cProfile
    import cProfile, pstats
    prof = cProfile.Profile()
    prof.enable()
    run(1000)
    prof.disable()
    print(json.dumps({"ns": (pstats.Stats(prof).total_calls - 1) / 1000, "queries": 1200}))
    sys.exit(0)
times = []
clock = time.perf_counter_ns
for _ in range(batches):
    t0 = clock()
    run(batch)
    times.append((clock() - t0) / batch)
queries = 200 + batches * batch
if os.environ.get("B_QUERIES"):  # --instructions: untimed queries, counted by callgrind
    run(int(os.environ["B_QUERIES"]))
    times, queries = [0], 200 + int(os.environ["B_QUERIES"])
times.sort()
if variant == "ours":
    from tracer import tracer as t
    assert t.flush(30), "flush timed out"
elif variant == "ddtrace":
    from ddtrace.trace import tracer as t
    t.flush()
    t.shutdown(timeout=30)
print(json.dumps({"ns": times[len(times) // 2], "queries": queries}))
"""


class Sink(NoDelayHandler):
    traces = 0
    lock = threading.Lock()

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if "/traces" in self.path:
            with Sink.lock:
                Sink.traces += int(self.headers.get("X-Datadog-Trace-Count") or 0)
        body = b'{"rate_by_service": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT

    def do_GET(self) -> None:
        self.do_PUT()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--drivers", default="pymysql,mysqldb,mysql")
    parser.add_argument("--mariadbd", default=os.environ.get("MARIADBD", "/usr/sbin/mariadbd"))
    parser.add_argument(
        "--cpu", default="last", help="CPU for MariaDB and the measured processes: last, none or a number"
    )
    parser.add_argument(
        "--cursor-per-query", action="store_true", help="a new cursor per query (with conn.cursor() as cur: ...)"
    )
    parser.add_argument(
        "--calls", action="store_true", help="count calls per query under cProfile instead of timing (deterministic)"
    )
    parser.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="N",
        help="count instructions per query under callgrind (runs with 0 and N queries) instead of timing",
    )
    args = parser.parse_args()
    if args.calls or args.instructions:
        args.rounds = 1
    if args.instructions:
        args.batches = 0

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # After the sink's thread started: affinity is per thread on Linux, and
    # MariaDB and the children inherit this (main) thread's.
    pinned = "none"
    if args.cpu != "none":
        cpu = max(os.sched_getaffinity(0)) if args.cpu == "last" else int(args.cpu)
        os.sched_setaffinity(0, {cpu})
        pinned = f"CPU {cpu}"
    sink_url = f"http://127.0.0.1:{server.server_address[1]}"
    db = MariaDB(args.mariadbd)
    info = db.start()
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "B_PORT": str(info.port),
        "B_USER": info.user,
        "B_PASSWORD": info.password,
        "B_DB": info.db,
        "TRACER_AGENT_URL": sink_url,
        "DD_TRACE_AGENT_URL": sink_url,
        "TRACER_SERVICE": "bench",
        "DD_SERVICE": "bench",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_STATS_COMPUTATION_ENABLED": "false",
        "DD_DATA_STREAMS_ENABLED": "false",
        "B_CALLS": "1" if args.calls else "",
        "B_CURSOR": "1" if args.cursor_per_query else "",
    }
    variants = ["plain", "ours", "ddtrace"]
    drivers = args.drivers.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    app_thread: dict[tuple[str, str], list[float]] = {}  # --instructions: the application thread's share
    try:
        for rnd in range(args.rounds):
            order = variants[rnd % 3 :] + variants[: rnd % 3]
            for driver in drivers:
                for variant in order:
                    command = [sys.executable, "-c", CHILD, variant, driver, str(args.batches), str(args.batch)]
                    if not args.instructions:
                        results.setdefault((driver, variant), []).append(run_child(command, env, driver, variant)[0])
                        continue
                    counts = [callgrind(command, {**env, "B_QUERIES": str(n)}, driver, variant) for n in (0, args.instructions)]
                    per_query = [(b - a) / args.instructions for a, b in zip(*counts, strict=True)]
                    results.setdefault((driver, variant), []).append(per_query[1])  # whole process
                    app_thread.setdefault((driver, variant), []).append(per_query[0])
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        db.stop()
        server.shutdown()

    unit = "calls (cProfile)" if args.calls else "instructions (callgrind, whole process)" if args.instructions else "ns"
    query = "with conn.cursor() as cur: cur.execute('SELECT 1'); cur.fetchall()" if args.cursor_per_query else "cur.execute('SELECT 1'); cur.fetchall()"
    print(
        f"{unit} per {query}, TCP 127.0.0.1, {args.rounds} rounds, "
        f"median of {args.batches} batches x {args.batch} per process, pinned: {pinned}"
    )
    print(
        f"{'driver':10} {'plain':>9} {'ours':>9} {'ddtrace':>9} {'+ours':>8} {'+ddtrace':>9} {'ours/dd':>8} {'range':>11}"
    )
    for driver in drivers:
        plain, ours, dd = (results[(driver, v)] for v in variants)
        added_ours = [o - p for o, p in zip(ours, plain, strict=True)]
        added_dd = [d - p for d, p in zip(dd, plain, strict=True)]
        ratios = [o / d for o, d in zip(added_ours, added_dd, strict=True) if d > 0]
        print(
            f"{driver:10} {statistics.median(plain):9.0f} {statistics.median(ours):9.0f} {statistics.median(dd):9.0f} "
            f"{statistics.median(added_ours):8.0f} {statistics.median(added_dd):9.0f} "
            f"{statistics.median(ratios) if ratios else float('nan'):8.2f}"
            f"{f'{min(ratios):.2f}-{max(ratios):.2f}' if ratios else '':>12}"
        )
    if app_thread:
        print("application thread only:")
        for driver in drivers:
            plain, ours, dd = (app_thread[(driver, v)][0] for v in variants)
            print(
                f"{driver:10} {plain:9.0f} {ours:9.0f} {dd:9.0f} {ours - plain:8.0f} {dd - plain:9.0f} "
                f"{(ours - plain) / (dd - plain):8.2f}"
            )


def run_child(command: list[str], env: dict[str, str], driver: str, variant: str) -> tuple[float, int]:
    """Run one measured process; (its reported figure, traces it sent), after
    checking that the sink received every trace of a traced variant."""
    before = Sink.traces
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{driver}/{variant} failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    delivered = Sink.traces - before
    if variant != "plain" and delivered < out["queries"]:
        raise SystemExit(f"{driver}/{variant}: sink got {delivered} traces of {out['queries']}")
    return out["ns"], delivered


def callgrind(command: list[str], env: dict[str, str], driver: str, variant: str) -> tuple[int, int]:
    """``command`` under callgrind: (instructions of the main thread, of the whole process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        valgrind = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}"]
        run_child(valgrind + command, env, driver, variant)
        totals = {}
        for name in os.listdir(tmp):  # cg.out-01 is the main thread, one file per thread
            with open(os.path.join(tmp, name)) as f:
                lines = [line for line in f if line.startswith(("summary:", "totals:"))]
            totals[name] = int(lines[0].split()[1]) if lines else 0  # a thread that ran no code has none
    return totals["cg.out-01"], sum(totals.values())


if __name__ == "__main__":
    main()
