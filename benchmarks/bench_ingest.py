"""Receiver ingest throughput: agent_sim (stats + SQLite persistence on) vs
Datadog's ddapm-test-agent (which only stores), in the same run.

A load process sends v0.4 msgpack payloads of 1,000 spans (100 Flask
requests of 10 spans: request, view and 8 PyMySQL queries, tagged as our
integrations tag them, unique ids) over one keep-alive connection for
``--seconds`` per run, and counts spans acknowledged with 200. Runs are
interleaved (ours, test agent, ours, test agent, ...); medians and per-pair
ratios are printed, with each receiver's peak RSS (VmHWM). agent_sim runs
with its insight detectors on (as ``agent-sim serve`` always does). Printed
first, measured in this process on the same payloads: the CPU cost per span
of each stage of ``Receiver.ingest`` (``--stages`` prints only that), then
the insights' own cost (detectors, time breakdown, and persisting both).

    python benchmarks/bench_ingest.py [--seconds 20] [--rounds 2] [--stages] [--baseline CHECKOUT]
    python benchmarks/bench_ingest.py --stages-ab ROUNDS [--paths store._fast_rows,...]

The load process is started with this file's ``load`` sub-command.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPANS_PER_TRACE = 10
TRACES_PER_PAYLOAD = 100
# What our PyMySQL integration sends as resources: the statement with its
# literals already replaced by "?" (tracer contrib/_dbapi.py).
SQL = [
    "SELECT id, name, email FROM users WHERE id = ?",
    "SELECT id, sku, qty FROM cart_items WHERE cart_id = ? AND state IN ( ? )",
    "UPDATE carts SET updated_at = ? WHERE id = ?",
    "INSERT INTO events ( kind, payload, created_at ) VALUES ( ? )",
]
ROUTES = ["/users/<int:uid>", "/cart/<int:cid>", "/orders", "/checkout", "/items/<sku>", "/search", "/login",
          "/health"]


def make_payload(rng: random.Random) -> bytes:
    """100 traces of one Flask request each, as our integrations and
    ``tracer.processor`` send them (tags checked against a live Flask +
    PyMySQL app): ``flask.request`` → ``flask.view`` → 8 ``mysql.query``
    spans, in finish order (the queries first), the chunk's sampling tags
    on its first span and the process tags on the root."""
    import msgpack

    now = time.time_ns()
    traces = []
    for t in range(TRACES_PER_PAYLOAD):
        # >= 2**63 so msgpack writes it as a fixed 8-byte uint64; the low 16
        # bits are patched per send (see load) so every trace id is unique.
        tid = (1 << 63) | (rng.getrandbits(47) << 16)
        root, view = rng.getrandbits(63) | 1, rng.getrandbits(63) | 1
        route = ROUTES[t % len(ROUTES)]
        error = int(t % 50 == 0)
        queries = SPANS_PER_TRACE - 2
        spans = []
        for i in range(queries):
            spans.append({
                "trace_id": tid, "span_id": rng.getrandbits(64) | 1, "parent_id": view,
                "service": "mysql", "name": "mysql.query", "resource": SQL[(t + i) % len(SQL)], "type": "sql",
                "start": now + 50_000 + i * 400_000, "duration": 300_000 + rng.randrange(100_000), "error": 0,
                "meta": {"component": "pymysql", "span.kind": "client", "db.system": "mysql", "db.name": "shop",
                         "peer.service": "shop", "db.user": "app", "out.host": "127.0.0.1"},
                "metrics": {"_dd.measured": 1, "_dd.top_level": 1, "network.destination.port": 3306,
                            "db.row_count": rng.randrange(20)},
            })
        spans.append({
            "trace_id": tid, "span_id": view, "parent_id": root, "service": "web-store", "name": "flask.view",
            "resource": route.strip("/").split("/")[0] or "index", "type": "web", "start": now + 20_000,
            "duration": queries * 400_000 + 100_000, "error": error, "meta": {"component": "flask"}, "metrics": {},
        })
        spans.append({
            "trace_id": tid, "span_id": root, "parent_id": 0, "service": "web-store", "name": "flask.request",
            "resource": f"GET {route}", "type": "web", "start": now, "duration": queries * 400_000 + 200_000,
            "error": error,
            "meta": {"component": "flask", "span.kind": "server", "http.method": "GET",
                     "http.url": f"http://127.0.0.1:8000{route.replace('<int:uid>', str(t)).replace('<int:cid>', '7')}",
                     "http.useragent": "python-requests/2.31.0", "http.route": route, "flask.endpoint": "view",
                     "http.status_code": "500" if error else "200", "env": "prod", "version": "1.2.3",
                     "language": "python", "runtime-id": "8f1e2d3c4b5a69788f1e2d3c4b5a6978"},
            "metrics": {"_dd.measured": 1, "_dd.top_level": 1, "process_id": 4242},
        })
        if error:  # the exception goes through the view to the request span
            for span in spans[-2:]:
                span["meta"].update({"error.type": "builtins.KeyError", "error.message": f"'order {t} not found'",
                                     "error.stack": "Traceback (most recent call last):\n  ...\nKeyError"})
        first = spans[0]
        first["meta"].update({"_dd.p.dm": "-0", "_dd.p.tid": "6560000000000000", "env": "prod"})
        first["metrics"]["_sampling_priority_v1"] = 1
        traces.append(spans)
    return msgpack.packb(traces)


def load(url: str, seconds: float) -> None:
    """Send payloads to ``url`` for ``seconds``; print JSON {spans, seconds, errors}."""
    rng = random.Random(7)
    host, port = url.split("//")[1].split(":")
    payloads = [make_payload(rng) for _ in range(30)]
    marker = b"\xa8trace_id\xcf"
    offsets = []
    for body in payloads:
        found, pos = [], body.find(marker)
        while pos >= 0:
            found.append(pos + len(marker) + 6)
            pos = body.find(marker, pos + 1)
        offsets.append(found)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/msgpack", "X-Datadog-Trace-Count": str(TRACES_PER_PAYLOAD),
               "Datadog-Meta-Lang": "python", "Datadog-Meta-Tracer-Version": "bench",
               "Datadog-Client-Computed-Top-Level": "yes"}
    ready: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce() -> None:
        # Patching a template keeps the load process cheap (generating fresh
        # payloads would cost as much CPU as the receiver spends on them), and
        # doing it on a thread overlaps it with the wait for the reply.
        i = 0
        while not stop.is_set():
            k = i % len(payloads)
            buf = bytearray(payloads[k])
            stamp = (i // len(payloads) + 1).to_bytes(2, "big")
            for off in offsets[k]:
                buf[off:off + 2] = stamp
            i += 1
            while not stop.is_set():
                try:
                    ready.put(bytes(buf), timeout=0.1)
                    break
                except queue.Full:
                    pass

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    sent = errors = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        body = ready.get()
        conn.request("PUT", "/v0.4/traces", body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            sent += TRACES_PER_PAYLOAD * SPANS_PER_TRACE
        else:
            errors += 1
    stop.set()
    elapsed = time.perf_counter() - start
    print(json.dumps({"spans": sent, "seconds": elapsed, "errors": errors}))


def detector_cost(rounds: int = 5, payloads: int = 30) -> tuple[float, float, float, float]:
    """CPU ns per span of the insights, in this process: the detectors alone,
    the time breakdown alone (best of ``rounds``), and ``Receiver.ingest`` of
    the bench payloads into a SQLite file with the insights on and off
    (interleaved rounds, medians of CPU time, so other load on the machine
    counts less than in wall time)."""
    import msgpack

    from agent_sim.decode import unpack_v04
    from agent_sim.ingest import Receiver
    from agent_sim.insights import breakdown, detect
    from agent_sim.normalize import normalize_payload

    rng = random.Random(7)
    bodies = [make_payload(rng) for _ in range(payloads)]
    spans = payloads * TRACES_PER_PAYLOAD * SPANS_PER_TRACE
    batches = [normalize_payload(msgpack.unpackb(b, strict_map_key=False))[0] for b in bodies]

    def feed(rx: Receiver) -> None:
        for b in bodies:
            rx.ingest(unpack_v04(b), False, True)

    def cpu_ns(fn: Callable[[], object]) -> float:
        start = time.process_time()
        fn()
        return (time.process_time() - start) / spans * 1e9

    det = min(cpu_ns(lambda: [detect(t) for b in batches for t in b]) for _ in range(rounds))
    brk = min(cpu_ns(lambda: [breakdown(t, {}) for b in batches for t in b]) for _ in range(rounds))
    on: list[float] = []
    off: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for enabled, out in ((True, on), (False, off)):
                rx = Receiver(os.path.join(tmp, f"cost-{r}-{enabled}.db"))
                if not enabled:
                    rx.findings.detect_and_record = lambda *a, **k: {}  # type: ignore[method-assign]
                out.append(cpu_ns(functools.partial(feed, rx)))
                rx.close()
    return det, brk, statistics.median(on), statistics.median(off)


STAGES = ("decode", "normalize", "duplicates", "stats", "store", "detectors", "breakdown", "findings write")


def stage_costs(rounds: int = 5, payloads: int = 30) -> tuple[dict[str, float], float]:
    """CPU ns per span of each stage of ``Receiver.ingest`` on the bench
    payloads (SQLite file, insights on), and of the whole call: the stages'
    functions are wrapped with CPU-time counters in this process only
    (``stats`` is computing the groups and applying them to the live
    buckets; ``store`` packing the traces and their SQLite transaction). Medians of ``rounds``; the rest of ``ingest`` (priority,
    counters, locks) and the counters' own cost are the total's remainder."""
    from agent_sim import findings, ingest, stats, store
    from agent_sim.decode import unpack_v04

    rng = random.Random(7)
    bodies = [make_payload(rng) for _ in range(payloads)]
    spans = payloads * TRACES_PER_PAYLOAD * SPANS_PER_TRACE
    clock = time.process_time_ns
    spent = dict.fromkeys(STAGES, 0)

    def timed(stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: object, **kwargs: object) -> object:
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[stage] += clock() - start
        return run

    per_round: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    wrapped = [(ingest, "normalize_payload", "normalize"), (ingest.Receiver, "_count_duplicates", "duplicates"),
               (ingest, "compute_groups", "stats"), (stats.Concentrator, "apply", "stats"),
               (store.Store, "ingest", "store"), (findings, "detect", "detectors"),
               (findings, "breakdown", "breakdown"), (findings.FindingStore, "_record", "findings write")]
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _stage in wrapped]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            rx = ingest.Receiver(os.path.join(tmp, f"stages-{r}.db"))
            spent.update(dict.fromkeys(STAGES, 0))
            total = 0
            for (owner, attr, stage), (_o, _a, fn) in zip(wrapped, originals, strict=True):
                setattr(owner, attr, timed(stage, fn))
            try:
                for b in bodies:
                    start = clock()
                    rx.ingest(timed("decode", unpack_v04)(b), False, True)
                    total += clock() - start
            finally:
                for owner, attr, fn in originals:
                    setattr(owner, attr, fn)
                rx.close()
            for name in STAGES:
                per_round[name].append(spent[name] / spans)
            per_round["total"].append(total / spans)
    medians = {name: statistics.median(v) for name, v in per_round.items()}
    return {name: medians[name] for name in STAGES}, medians["total"]


C_PATHS = ("store._fast_packb", "store._fast_rows", "normalize._fast_normalize", "stats._fast_groups", "stats._fast_sketch",
           "insights._fast_breakdown", "insights._fast_detect_clear", "ingest._fast_duplicates")


def stages_ab(rounds: int, names: tuple[str, ...] = C_PATHS) -> None:
    """``stage_costs`` in alternate rounds with the optional C paths ``names``
    (module.attribute in ``agent_sim``; default all) off (their Python code
    runs) and on; medians."""
    import importlib

    paths = []
    for name in names:
        module, _, attr = name.partition(".")
        if name not in C_PATHS:
            raise SystemExit(f"unknown C path {name!r}; known: {', '.join(C_PATHS)}")
        paths.append((importlib.import_module(f"agent_sim.{module}"), attr))
    saved = [getattr(module, attr) for module, attr in paths]
    runs: dict[str, list[tuple[dict[str, float], float]]] = {"C paths off": [], "C paths on": []}
    try:
        for _ in range(rounds):
            for label, out in runs.items():
                for (module, attr), fn in zip(paths, saved, strict=True):
                    setattr(module, attr, fn if label == "C paths on" else None)
                out.append(stage_costs(rounds=1))
    finally:
        for (module, attr), fn in zip(paths, saved, strict=True):
            setattr(module, attr, fn)
    for label, out in runs.items():
        totals = [total for _costs, total in out]
        print(f"{label}: " + ", ".join(f"{name} {statistics.median(c[name] for c, _t in out):.0f}" for name in STAGES)
              + f"; total {statistics.median(totals):.0f} ns/span ({min(totals):.0f}-{max(totals):.0f}), "
              f"{1e9 / statistics.median(totals):,.0f} spans/s of CPU", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited early: {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/info", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(kind: str, seconds: float, tmp: str, test_agent: str, repo: str = REPO) -> dict:
    """One receiver (``agent_sim`` from the checkout ``repo``, or the test
    agent) under the load process for ``seconds``: rate, errors, peak RSS."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if kind == "agent_sim":
        db = os.path.join(tmp, f"bench-{port}.db")
        cmd = [sys.executable, "-m", "agent_sim", "serve", "--port", str(port), "--db", db, "--statsd-port", "0"]
    else:
        cmd = [test_agent, f"--port={port}"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": repo}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp)
    env = {**os.environ, "PYTHONPATH": REPO}
    try:
        wait_ready(url, proc)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "load", url, str(seconds)],
                             capture_output=True, text=True, check=True, env=env)
        result = json.loads(out.stdout)
        result["rss_mib"] = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result["rate"] = result["spans"] / result["seconds"]
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["load"]:
        load(argv[1], float(argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20, help="load duration per run (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved pairs (default 2)")
    p.add_argument("--stages", action="store_true", help="only print the per-stage CPU cost in process")
    p.add_argument("--stages-ab", type=int, metavar="ROUNDS", help="only print the per-stage CPU cost with the "
                   "optional C paths (agent_sim/_cdecode.c) off and on, in alternate rounds")
    p.add_argument("--paths", metavar="NAMES", help="with --stages-ab: only these C paths (comma-separated, e.g. "
                   "insights._fast_breakdown,ingest._fast_duplicates)")
    p.add_argument("--baseline", metavar="CHECKOUT", help="also run the agent_sim of this checkout (built, e.g. "
                   "a worktree of main) in each round, after ours: its rate and ratios are printed too")
    p.add_argument("--test-agent", default=os.environ.get("DDAPM_TEST_AGENT")
                   or shutil.which("ddapm-test-agent") or "/opt/ddapm-venv/bin/ddapm-test-agent")
    args = p.parse_args(argv)
    have_peer = os.path.exists(args.test_agent) or shutil.which(args.test_agent)
    if args.stages_ab:
        stages_ab(args.stages_ab, tuple(args.paths.split(",")) if args.paths else C_PATHS)
        return 0
    costs, total = stage_costs()
    print("Receiver.ingest, CPU per span in process by stage (medians): "
          + ", ".join(f"{name} {ns:.0f} ns" for name, ns in costs.items())
          + f"; total {total:.0f} ns ({1e9 / total:,.0f} spans/s of CPU)", flush=True)
    if args.stages:
        return 0
    det, brk, on, off = detector_cost()
    print(f"insights, CPU per span in process: detectors {det:.0f} ns, time breakdown {brk:.0f} ns; "
          f"Receiver.ingest {on:.0f} ns with them, {off:.0f} ns without: {on - off:.0f} ns "
          f"({100 * (on - off) / on:.0f} % of ingest)", flush=True)
    ours, peer, ratios, base = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            a = run_one("agent_sim", args.seconds, tmp, args.test_agent)
            ours.append(a)
            print(f"round {r + 1}: agent_sim        {a['rate']:>9,.0f} spans/s  peak RSS {a['rss_mib']:.0f} MiB"
                  f"  errors {a['errors']}", flush=True)
            if args.baseline:
                c = run_one("agent_sim", args.seconds, tmp, args.test_agent, os.path.abspath(args.baseline))
                base.append(c)
                print(f"round {r + 1}: baseline         {c['rate']:>9,.0f} spans/s  peak RSS {c['rss_mib']:.0f} MiB"
                      f"  errors {c['errors']}  agent_sim / baseline {a['rate'] / c['rate']:.2f}", flush=True)
            if have_peer:
                b = run_one("test-agent", args.seconds, tmp, args.test_agent)
                peer.append(b)
                ratios.append(a["rate"] / b["rate"])
                print(f"round {r + 1}: ddapm-test-agent {b['rate']:>9,.0f} spans/s  peak RSS {b['rss_mib']:.0f} MiB"
                      f"  errors {b['errors']}  ratio {ratios[-1]:.2f}", flush=True)
    print(f"agent_sim median: {statistics.median(x['rate'] for x in ours):,.0f} spans/s, "
          f"peak RSS max {max(x['rss_mib'] for x in ours):.0f} MiB")
    if peer:
        print(f"ddapm-test-agent median: {statistics.median(x['rate'] for x in peer):,.0f} spans/s, "
              f"peak RSS max {max(x['rss_mib'] for x in peer):.0f} MiB")
        print(f"ratio agent_sim / test agent: median {statistics.median(ratios):.2f} "
              f"(per pair: {', '.join(f'{x:.2f}' for x in ratios)})")
    else:
        print(f"ddapm-test-agent not found at {args.test_agent}: no comparison")
    if base:
        pairs = [(x["rate"], y["rate"]) for x, y in zip(ours, base, strict=True)]
        print(f"baseline median: {statistics.median(y for _x, y in pairs):,.0f} spans/s; agent_sim / baseline: "
              f"median {statistics.median(x / y for x, y in pairs):.2f} "
              f"(per round: {', '.join(f'{x / y:.2f}' for x, y in pairs)})")
        if peer:
            per = [c["rate"] / b["rate"] for c, b in zip(base, peer, strict=True)]
            print(f"baseline / test agent: median {statistics.median(per):.2f} "
                  f"(per round: {', '.join(f'{x:.2f}' for x in per)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
