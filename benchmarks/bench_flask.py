"""Added latency per Flask request: plain vs ours vs ddtrace vs OpenTelemetry.

    python benchmarks/bench_flask.py [--rounds 5] [--requests 25000]
    python benchmarks/bench_flask.py --profile [--requests 2000]
    python benchmarks/bench_flask.py --instructions [--requests 1000] [--variants plain,ours,ddtrace]
    python benchmarks/bench_flask.py --baseline /path/to/other/checkout [--variants plain,ours,base,ddtrace]
    python benchmarks/bench_flask.py --breakdown [--rounds 5] [--requests 2000] [--variants plain,ours] [--baseline DIR]

``--baseline DIR`` adds the variant ``base``: ours as the checkout in DIR has
it (its own ``bench_flask.py`` and C extensions built in place), run in the
same rounds as the others, so that old and new code share the machine's
load; "added ours / added base" is the same-run ratio.

``--breakdown`` says where the CPU goes that instruction counts do not show
(hardware counters are not available on every machine): per request, the
CPU time of the request thread and of every other thread (the writer, its
HTTP client) from Linux's ``/proc/self/task/TID/schedstat``, the cyclic
GC's collections per generation (per 10,000 requests) and its pauses
(``gc.callbacks``), and the net allocated blocks left after the final flush
(``sys.getallocatedblocks``); then, untimed, the objects promoted to the
old generation per request, by type (see ``promotions``); each variant in
its own process, interleaved; ``--baseline`` adds ``base``. Two modifiers
isolate shares of ours' cost: ``plain+gc-off`` / ``ours+gc-off`` (the
cyclic GC off after the warm-up: its share) and ``ours+no-writer`` (chunks
dropped at once: no writer thread, nothing queued for it).

``--instructions`` is the other deterministic view: each variant runs twice
under ``valgrind --tool=callgrind`` (the warm-up alone, then the warm-up plus
``--requests``), and the difference over the requests is the instructions
per request of the whole process (app and exporter threads, the final flush
included); "added" is a variant's minus plain's, and the ratio ours / ddtrace
is the CPU-independent figure of the target.

``--profile`` is the other deterministic view, for a loaded machine where timings
are noise: plain and ours each run the requests under cProfile (in their own
process) and print the Python-level calls per request, the difference, and
ours' top functions by own time (the profiler inflates each call's cost; the
call counts are exact).

Each variant runs in its own process, the variants interleaved round by round
(the order rotates each round), on the same one-route app with a path
parameter plus one before_request and one after_request hook, driven by
Flask's test client. Every response is closed (``response.close()``), as a
WSGI server does: tracers that time the body finish their request span there.

Every tracer sends to a live local sink in this process (a threaded HTTP
server): Datadog-format tracers (ours, ddtrace) get ``200 {"rate_by_service":
{}}`` and the sink counts ``X-Datadog-Trace-Count``; OpenTelemetry uses its
``BatchSpanProcessor`` with the OTLP/HTTP protobuf exporter, and the sink
decodes each ``POST /v1/traces`` and counts the spans (one per request for the
FlaskInstrumentor). After each run the sink must have received one trace per
request made, or the run is reported as failed: a tracer that drops its
output must not look fast for it.

The default run is sustained load, as the span benchmarks': 25,000
requests, 101,200 spans of ours with the warm-up (4 a request), so that the
writer runs dozens of cycles inside the measured requests and its start is
outside them. The warm-up (``WARMUP`` requests) ends with the tracer's flush
(ours' ``tracer.flush``, ddtrace's ``tracer.flush``, OpenTelemetry's
``force_flush``): each exporter's first send, with what it does once per
process (connecting, a lazily imported module compiled from source where no
bytecode cache is written), happens before the measured requests. Short runs
(``--requests 2000``, the figures before round 2's fifteenth session) charge
the measured requests with part of the warm-up's queued spans and with one-off
costs spread over few requests: ours' added CPU came out 2-6 µs higher, and
ddtrace's 60-100 µs lower (its cost per request grows over a long run).

The figure per run is the mean time per request over the whole run (so the
background export work of each tracer, which competes for the GIL, is paid
inside it); a variant's figure is the median over rounds; "added" is a
variant's run minus the plain run of the same round, and ratios are taken
per round, then the median.

Ours runs with the request, view and both hook spans, ``flask.view_args.*``
tags and one request-header tag on (``TRACER_FLASK_VIEW_ARGS=true``,
``TRACER_HEADER_TAGS=x-request-id``); ddtrace with the same header tag.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from _sink import NoDelayHandler, NoopWriter, callgrind_instructions  # this directory is on sys.path: the script's own

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain", "ours", "ddtrace", "otel")
WARMUP = 300


# -- the sink (parent process) ------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.traces = 0
        self.spans = 0
        sink = self

        class Handler(NoDelayHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                body = self._body()
                if self.path.endswith("/traces") and self.path.startswith("/v0."):
                    with sink.lock:
                        sink.traces += int(self.headers.get("X-Datadog-Trace-Count") or 0)
                    self._reply(200, b'{"rate_by_service": {}}', "application/json")
                elif self.path == "/v1/traces":
                    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

                    request = ExportTraceServiceRequest.FromString(body)
                    count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                    with sink.lock:
                        sink.traces += count
                    self._reply(200, b"", "application/x-protobuf")
                else:
                    self._reply(404, b"{}", "application/json")

            do_POST = do_PUT

            def do_GET(self) -> None:
                if self.path == "/info":
                    self._reply(200, b'{"endpoints": ["/v0.4/traces", "/v0.5/traces"]}', "application/json")
                else:
                    self._reply(404, b"{}", "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> int:
        with self.lock:
            count, self.traces = self.traces, 0
        return count


# -- one variant (child process) ------------------------------------------------------


def run_variant(variant: str, port: int, requests: int, profile: bool = False, breakdown: bool = False) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    flush: Any = None
    warm: Any = None  # the exporter's first send, before the measured requests (see WARMUP)
    variant, _, modifier = variant.partition("+")  # --breakdown's gc-off / no-writer (MODIFIERS)
    if variant == "ours":
        os.environ.update(TRACER_AGENT_URL=url, TRACER_FLASK_VIEW_ARGS="true", TRACER_HEADER_TAGS="x-request-id")
        import tracer

        tracer.config.reload()
        tracer.patch(flask=True)

        def flush() -> None:
            tracer.tracer.flush(10)

        warm = flush

        if modifier == "no-writer":
            tracer.tracer._writer = NoopWriter()

    elif variant == "ddtrace":
        os.environ.update(
            DD_TRACE_AGENT_URL=url,
            DD_TRACE_HEADER_TAGS="x-request-id",
            DD_INSTRUMENTATION_TELEMETRY_ENABLED="false",
            DD_REMOTE_CONFIGURATION_ENABLED="false",
            DD_TRACE_STATS_COMPUTATION_ENABLED="false",
            DD_DATA_STREAMS_ENABLED="false",
        )
        import ddtrace

        ddtrace.patch(flask=True)

        def warm() -> None:
            ddtrace.tracer.flush()

        def flush() -> None:
            ddtrace.tracer.flush()
            ddtrace.tracer.shutdown(timeout=10)

    elif variant == "otel":
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces")))
        trace.set_tracer_provider(provider)
        FlaskInstrumentor().instrument()

        def warm() -> None:
            provider.force_flush(10_000)

        def flush() -> None:
            provider.force_flush(10_000)
            provider.shutdown()

    from flask import Flask

    app = Flask("bench_app")

    @app.before_request
    def before() -> None:
        pass

    @app.after_request
    def after(response: Any) -> Any:
        return response

    @app.route("/users/<int:user_id>")
    def user(user_id: int) -> str:
        return "ok"

    client = app.test_client()
    headers = {"X-Request-Id": "abc123"}

    def batch(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            response = client.get("/users/42", headers=headers)
            response.close()
        return time.perf_counter() - start

    batch(WARMUP)
    if warm is not None:
        warm()
    if modifier == "gc-off":
        import gc

        gc.disable()
    if profile:
        return profiled(batch, requests)
    if breakdown:
        return broken_down(batch, requests, flush)
    cpu_start = time.process_time()
    elapsed = batch(requests)
    if flush is not None:
        flush()
    # CPU of the whole process (app and exporter threads) for the measured
    # requests, including the final flush: robust to other load on the machine.
    cpu = time.process_time() - cpu_start
    per = max(requests, 1)  # --instructions runs the warm-up alone (0 requests) too
    return {"us_per_request": elapsed / per * 1e6, "cpu_us_per_request": cpu / per * 1e6, "made": WARMUP + requests}


def _threads_cpu() -> dict[int, int]:
    """ns on a CPU of each live thread of this process (schedstat)."""
    cpu = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                cpu[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError):
            pass  # the thread ended meanwhile
    return cpu


def broken_down(batch: Any, requests: int, flush: Any) -> dict[str, Any]:
    """The ``--breakdown`` figures of one run (see the module docstring)."""
    import gc

    collections = [0, 0, 0]
    pause_ns = [0, 0, 0]  # per generation
    started = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            pause_ns[info["generation"]] += time.perf_counter_ns() - started[0]
            collections[info["generation"]] += 1

    request_thread = threading.get_native_id()
    before = _threads_cpu()
    blocks = sys.getallocatedblocks()
    gc.callbacks.append(on_gc)
    batch(requests)
    if flush is not None:
        flush()
    gc.callbacks.remove(on_gc)
    blocks = sys.getallocatedblocks() - blocks
    after = _threads_cpu()
    spent = {tid: ns - before.get(tid, 0) for tid, ns in after.items()}
    own = spent.pop(request_thread)
    promoted = promotions(batch, requests)
    return {
        "promoted_per_request": sum(promoted.values()) / requests,
        "promoted_top": {name: n / requests for name, n in promoted.most_common(4)},
        "request_thread_us": own / requests / 1e3,
        "other_threads_us": sum(spent.values()) / requests / 1e3,
        "gc_pause_us": sum(pause_ns) / requests / 1e3,
        "gc_pause_us_per_generation": [ns / requests / 1e3 for ns in pause_ns],
        "collections_per_10k": [c * 10_000 / requests for c in collections],
        "blocks_per_request": blocks / requests,
    }


def child_command(variant: str, port: int, requests: int, env: dict[str, str], baseline: str | None,
                  *extra: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one variant's run; ``base`` is ours
    as the checkout ``baseline`` has it (its own script and extensions)."""
    script, child, child_env = __file__, variant, env
    if variant == "base":
        script, child = os.path.join(str(baseline), "benchmarks", "bench_flask.py"), "ours"
        child_env = {**env, "PYTHONPATH": str(baseline)}
    return [sys.executable, script, "--child", child, "--port", str(port), "--requests", str(requests), *extra], child_env


def promotions(batch: Any, requests: int) -> collections.Counter[str]:
    """Objects promoted to the oldest generation over ``requests`` more
    requests, by type (a tuple by its first items' types): what makes full
    collections come sooner (CPython runs one when the objects promoted
    since the last reach a quarter of those it kept). Untimed: the old
    generation is frozen, then read and frozen again after each gen-1
    collection, so each read holds only what that collection promoted."""
    import gc

    def kind(obj: Any) -> str:
        if type(obj) is tuple:
            return "tuple(" + ",".join(type(item).__name__ for item in obj[:3]) + ")"
        return type(obj).__name__

    promoted: collections.Counter[str] = collections.Counter()

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 1:
            promoted.update(kind(obj) for obj in gc.get_objects(2))
            gc.freeze()

    gc.collect()
    gc.freeze()
    gc.callbacks.append(on_gc)
    try:
        batch(requests)
    finally:
        gc.callbacks.remove(on_gc)
        gc.unfreeze()
    return promoted


def breakdown_report(port: int, requests: int, rounds: int, variants: list[str], env: dict[str, str],
                     baseline: str | None) -> int:
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for round_no in range(rounds):
        shift = round_no % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            command, child_env = child_command(variant, port, requests, env, baseline, "--breakdown")
            proc = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                print(f"{variant}: exit {proc.returncode}: {proc.stderr[-2000:]}")
                return 1
            rows[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"per request, medians of {rounds} rounds x {requests} requests (per-round range):")
    print(f"{'variant':8s} {'request thread us':>22s} {'other threads us':>20s} {'GC pause us':>18s}"
          f" {'gen0/1/2 pause us':>18s} {'gen0/1/2 per 10k':>17s} {'net blocks':>10s} {'promoted':>8s}")

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    for variant, runs in rows.items():
        gens = "/".join(f"{statistics.median(r['collections_per_10k'][g] for r in runs):.0f}" for g in range(3))
        pauses = "/".join(f"{statistics.median(r['gc_pause_us_per_generation'][g] for r in runs):.1f}" for g in range(3))
        print(f"{variant:8s} {cell([r['request_thread_us'] for r in runs]):>22s}"
              f" {cell([r['other_threads_us'] for r in runs]):>20s} {cell([r['gc_pause_us'] for r in runs]):>18s}"
              f" {pauses:>18s} {gens:>17s} {statistics.median(r['blocks_per_request'] for r in runs):10.2f}"
              f" {statistics.median(r.get('promoted_per_request', -1) for r in runs):8.2f}")  # -1: base's script
    print("promoted to the old generation per request, by type (last round):")
    for variant, runs in rows.items():
        top = ", ".join(f"{name} {n:.2f}" for name, n in runs[-1].get("promoted_top", {}).items())
        print(f"{variant:8s} {top}")
    return 0


def profiled(batch: Any, requests: int) -> dict[str, Any]:
    """Calls per request over ``requests`` requests under cProfile, and the
    tracer's own functions (``tracer/``, ``contrib/``) by own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(batch, requests)
    stats: Any = pstats.Stats(profiler)
    ours = []
    for (filename, line, name), (_cc, calls, own, _cum, _callers) in stats.stats.items():
        rel = os.path.relpath(filename, REPO)
        if rel.startswith(("tracer" + os.sep, "contrib" + os.sep)):
            ours.append((own, calls, f"{rel}:{line}({name})"))
    ours.sort(reverse=True)
    return {
        "calls_per_request": stats.total_calls / requests,
        "ours_calls_per_request": sum(c for _, c, _ in ours) / requests,
        "top": [(calls / requests, own / requests * 1e6, where) for own, calls, where in ours[:40]],
    }


def profile_report(port: int, requests: int, env: dict[str, str]) -> int:
    results = {}
    for variant in ("plain", "ours"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--port", str(port), "--requests", str(requests), "--profile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            print(f"{variant}: exit {proc.returncode}: {proc.stderr[-2000:]}")
            return 1
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, ours = results["plain"]["calls_per_request"], results["ours"]["calls_per_request"]
    print(f"Python-level calls per request over {requests} requests (cProfile):")
    print(f"plain {plain:.1f}  ours {ours:.1f}  added {ours - plain:.1f}"
          f"  (in tracer/ and contrib/: {results['ours']['ours_calls_per_request']:.1f})")
    print(f"\n{'calls/req':>9s} {'own us/req (profiled)':>22s}  function")
    for calls, own, where in results["ours"]["top"]:
        print(f"{calls:9.2f} {own:22.2f}  {where}")
    return 0


def instructions_report(port: int, requests: int, variants: list[str], env: dict[str, str]) -> int:
    """Instructions per request (callgrind), see the module docstring."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("--instructions needs valgrind (apt-get install valgrind)")
        return 1
    per_request: dict[str, float] = {}
    for variant in variants:
        try:
            counts = [
                callgrind_instructions(valgrind, [sys.executable, __file__, "--child", variant, "--port", str(port),
                                                  "--requests", str(n)], env, 3600)
                for n in (0, requests)
            ]
        except RuntimeError as exc:
            print(f"{variant}: {exc}")
            return 1
        per_request[variant] = (counts[1] - counts[0]) / requests
        added = f"  added {per_request[variant] - per_request['plain']:10,.0f}" if "plain" in per_request and variant != "plain" else ""
        print(f"{variant:8s} {per_request[variant]:12,.0f} instructions/request{added}", flush=True)
    if {"plain", "ours", "ddtrace"} <= per_request.keys():
        ours, ddtrace = (per_request[v] - per_request["plain"] for v in ("ours", "ddtrace"))
        print(f"added ours / added ddtrace: {ours / ddtrace:.3f}")
    return 0


def report(label: str, variants: list[str], results: dict[str, list[float]]) -> None:
    print(f"\n== {label} ==")
    print(f"{'variant':10s} {'median us/req':>14s} {'added us (median of per-round)':>32s}")
    added: dict[str, list[float]] = {}
    rounds = min(len(r) for r in results.values())
    for variant in variants:
        row = results[variant]
        if "plain" in results and variant != "plain":
            added[variant] = [row[i] - results["plain"][i] for i in range(rounds)]
            extra = f"{statistics.median(added[variant]):32.1f}"
        else:
            extra = f"{'-':>32s}"
        print(f"{variant:10s} {statistics.median(row):14.1f} {extra}")
    for a, b in (("ours", "ddtrace"), ("base", "ddtrace"), ("ours", "base"), ("ours", "otel"), ("otel", "ddtrace")):
        if a in added and b in added:
            ratios = [added[a][i] / added[b][i] for i in range(rounds) if added[b][i] > 0]
            if ratios:
                per_round = ", ".join(f"{r:.3f}" for r in ratios)
                print(f"added {a} / added {b}: median {statistics.median(ratios):.3f}  (per round: {per_round})")


# -- the driver ------------------------------------------------------------------------


# --breakdown's variant modifiers (e.g. ``ours+gc-off``): the cyclic GC
# disabled after the warm-up; ours with a writer that drops each chunk at once.
MODIFIERS = ("gc-off", "no-writer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, help="per run (default: 25,000 timed; 2,000 --profile and"
                        " --breakdown; 1,000 --instructions, under valgrind)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="calls per request under cProfile, plain and ours")
    parser.add_argument("--instructions", action="store_true", help="instructions per request under callgrind")
    parser.add_argument("--breakdown", action="store_true", help="per-thread CPU, GC and allocations per request")
    parser.add_argument("--baseline", help="another checkout: its ours runs as the variant 'base'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 1000 if args.instructions else 2000 if (args.profile or args.breakdown) else 25_000
    if args.child:
        print(json.dumps(run_variant(args.child, args.port, args.requests, args.profile, args.breakdown)))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        name, _, modifier = variant.partition("+")
        if modifier and (not args.breakdown or modifier not in MODIFIERS or name not in ("plain", "ours")):
            parser.error(f"{variant}: a modifier ({', '.join(MODIFIERS)}) goes on plain or ours, with --breakdown")
    if args.baseline and "base" not in variants:
        variants.insert(variants.index("ours") + 1 if "ours" in variants else len(variants), "base")
    sink = Sink()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in list(env):
        if key.startswith(("TRACER_", "DD_", "OTEL_")):
            del env[key]
    if args.profile:
        return profile_report(sink.port, args.requests, env)
    if args.breakdown:
        return breakdown_report(sink.port, args.requests, args.rounds, variants, env, args.baseline)
    if args.instructions:
        return instructions_report(sink.port, args.requests, [v for v in variants if v != "otel"], env)
    results: dict[str, list[float]] = {v: [] for v in variants}
    cpu_results: dict[str, list[float]] = {v: [] for v in variants}
    failures: list[str] = []
    for round_no in range(args.rounds):
        shift = round_no % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            sink.take()
            command, child_env = child_command(variant, sink.port, args.requests, env, args.baseline)
            proc = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                failures.append(f"{variant} round {round_no}: exit {proc.returncode}: {proc.stderr[-2000:]}")
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            time.sleep(0.2)  # the sink's handler threads finish counting
            delivered = sink.take()
            expected = out["made"] if variant != "plain" else 0
            if delivered != expected:
                failures.append(f"{variant} round {round_no}: {delivered} traces delivered, {expected} expected")
            results[variant].append(out["us_per_request"])
            cpu_results[variant].append(out["cpu_us_per_request"])
            print(f"round {round_no} {variant:8s} {out['us_per_request']:8.1f} us/request wall"
                f" {out['cpu_us_per_request']:8.1f} us/request cpu  delivered {delivered}/{expected}", flush=True)

    for label, table in (("wall time", results), ("process CPU time", cpu_results)):
        report(label, variants, table)
    if failures:
        print("\nFAILED:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
