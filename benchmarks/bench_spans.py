"""Per-span cost: ours vs ddtrace vs the OpenTelemetry SDK, same run.

Each round runs every tracer in its own fresh process (interleaved A B C A B C
...), all sending to one live local sink that counts delivered spans. A
worker makes TRACES traces of 1 root + 100 children, each child with 3 string
tags and 1 metric, and reports:

- app: the app thread's time per span (the loop alone);
- e2e: the loop plus flush() until the sink has every span.

The default, 1,000 traces (101,000 spans per run), is sustained load: the
writer thread encodes and sends while the loop runs, as in a busy app (with
200 traces, most of its work fell after the loop, into "end to end" only).

``ours`` runs the C span code and encoders where they are built, ``ours_py``
the pure-Python code (TRACER_PURE_PYTHON). A run fails unless the sink
received every span, and for ours unless ``tracer.stats()`` shows no drop.
Medians over rounds and per-round ratios (ours / peer) are printed.

    python benchmarks/bench_spans.py [--rounds 7] [--traces 1000] [--only ours,ddtrace]
    python benchmarks/bench_spans.py --rounds 3 --traces 100,200,300,1000   # sweep: one table row per size
    python benchmarks/bench_spans.py --defer-decode   # the sink's decoding out of the measured runs
    python benchmarks/bench_spans.py --full-decode    # the sink builds every span (the figures before round 2's sixth session)
    python benchmarks/bench_spans.py --children 0 --traces 50000 --only ours,ddtrace   # one-span traces
    python benchmarks/bench_spans.py --app-calls   # Python-level calls per 1- and 101-span trace, no-op writer
    valgrind --tool=callgrind python benchmarks/bench_spans.py --loop 6000 --children 0   # minus --loop 1000:
                                                              # instructions per trace (PYTHONHASHSEED=0)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sink import NoopWriter, Sink, median  # noqa: E402

CHILDREN = 100


def make_run(tracer: Any) -> Callable[[int], None]:
    """The workload for tracers with the ddtrace-style API (ours, ddtrace)."""

    def run(n: int) -> None:
        for _ in range(n):
            with tracer.trace("root", service="bench"):
                for _ in range(CHILDREN):
                    with tracer.trace("child") as span:
                        span.set_tag("a", "x")
                        span.set_tag("b", "y")
                        span.set_tag("c", "z")
                        span.set_metric("m", 1)

    return run


def worker_ours(traces: int, sink_url: str) -> tuple[float, float, int]:
    os.environ["TRACER_AGENT_URL"] = sink_url
    from tracer import tracer

    run = make_run(tracer)
    run(20)
    tracer.flush(10)
    start = time.perf_counter()
    run(traces)
    loop = time.perf_counter() - start
    tracer.flush(60)
    e2e = time.perf_counter() - start
    dropped = {k: v for k, v in tracer.stats().items() if k.startswith("spans_dropped_") and v}
    if dropped:
        raise SystemExit(f"ours dropped spans: {dropped}")
    return loop, e2e, 20 * (CHILDREN + 1)


def worker_ddtrace(traces: int, sink_url: str) -> tuple[float, float, int]:
    os.environ.update(
        DD_TRACE_AGENT_URL=sink_url,
        DD_INSTRUMENTATION_TELEMETRY_ENABLED="false",
        DD_REMOTE_CONFIGURATION_ENABLED="false",
        DD_TRACE_STATS_COMPUTATION_ENABLED="false",
    )
    from ddtrace.trace import tracer

    run = make_run(tracer)
    run(20)
    tracer.flush()
    start = time.perf_counter()
    run(traces)
    loop = time.perf_counter() - start
    tracer.flush()
    e2e = time.perf_counter() - start
    return loop, e2e, 20 * (CHILDREN + 1)


def worker_otel(traces: int, sink_url: str) -> tuple[float, float, int]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=sink_url + "/v1/traces"), max_queue_size=1_000_000)
    )
    tracer = provider.get_tracer("bench")

    def run(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("root"):
                for _ in range(CHILDREN):
                    with tracer.start_as_current_span("child") as span:
                        span.set_attribute("a", "x")
                        span.set_attribute("b", "y")
                        span.set_attribute("c", "z")
                        span.set_attribute("m", 1)

    run(20)
    provider.force_flush()
    start = time.perf_counter()
    run(traces)
    loop = time.perf_counter() - start
    provider.force_flush()
    e2e = time.perf_counter() - start
    return loop, e2e, 20 * (CHILDREN + 1)


def worker_ours_py(traces: int, sink_url: str) -> tuple[float, float, int]:
    """Ours with the pure-Python span code and encoders (no C extensions)."""
    os.environ["TRACER_PURE_PYTHON"] = "true"
    return worker_ours(traces, sink_url)


def worker_calls(traces: int, pure: bool) -> dict[str, float]:
    """Deterministic cost: function calls (cProfile, Python and builtin) per
    span on the app thread (the loop, chunks collected rather than sent) and
    for the writer's work on them (``process_chunks`` and the payload's
    ``put_many``/``finish``, as its ``_cycle`` runs them; HTTP left out)."""
    import cProfile
    import pstats

    if pure:
        os.environ["TRACER_PURE_PYTHON"] = "true"
    from tracer import tracer
    from tracer.encoding import PAYLOADS
    from tracer.processor import process_chunks

    chunks: list[tuple[Any, list[Any]]] = []

    class Collect:
        def write(self, trace: Any, chunk: list[Any]) -> None:
            chunks.append((trace, chunk))

        def stop(self, timeout: float) -> None:
            pass

    tracer._writer = Collect()
    run = make_run(tracer)
    run(2)
    chunks.clear()
    spans = traces * (CHILDREN + 1)

    def calls(fn: Callable[[], None]) -> tuple[int, list[str]]:
        prof = cProfile.Profile()
        prof.runcall(fn)
        stats = pstats.Stats(prof)
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])  # type: ignore[attr-defined]
        top = [f"{nc / spans:7.3f}/span  {pstats.func_std_string(f)}" for f, (_, nc, *_r) in rows[:8]]
        return stats.total_calls, top  # type: ignore[attr-defined]

    app, app_top = calls(lambda: run(traces))
    sampler = tracer.sampler

    def write() -> None:
        payload = PAYLOADS[os.environ.get("TRACER_API_VERSION", "v0.4")]()
        batch = list(chunks)
        process_chunks(batch, sampler)
        payload.put_many(batch)
        payload.finish()

    writer, writer_top = calls(write)
    return {
        "app_calls_per_span": app / spans,
        "writer_calls_per_span": writer / spans,
        "app_calls_per_trace": app / traces,
        "writer_calls_per_trace": writer / traces,
        "app_top": app_top,  # type: ignore[dict-item]
        "writer_top": writer_top,  # type: ignore[dict-item]
    }


WORKERS = {"ours": worker_ours, "ours_py": worker_ours_py, "ddtrace": worker_ddtrace, "otel": worker_otel}


def run_worker(name: str, traces: int, sink: Sink) -> dict[str, float]:
    sink.reset()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--traces", str(traces), "--sink", sink.url,
         "--children", str(CHILDREN)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{name}: worker failed: void run\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = result["warmup_spans"] + traces * (CHILDREN + 1)
    delivered = sink.wait_spans(expected, timeout=30)
    if delivered != expected:
        raise SystemExit(f"{name}: delivered {delivered} of {expected} spans: void run")
    spans = traces * (CHILDREN + 1)
    return {"app_us": result["loop"] / spans * 1e6, "e2e_us": result["e2e"] / spans * 1e6}


def measure(names: list[str], traces: int, rounds: int, sink: Sink) -> dict[str, list[dict[str, float]]]:
    """``rounds`` interleaved rounds of every tracer, ``traces`` traces each."""
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names:
            results[name].append(run_worker(name, traces, sink))
        print(f"{traces} traces, round {r + 1}/{rounds}: " + "  ".join(
            f"{n} app {results[n][-1]['app_us']:.2f} e2e {results[n][-1]['e2e_us']:.2f}" for n in names
        ), flush=True)
    return results


def ratios(results: dict[str, list[dict[str, float]]], own: str, peer: str, key: str) -> list[float]:
    """Per-round ratios own / peer (the rounds interleave, so each pair ran side by side)."""
    return [o[key] / p[key] for o, p in zip(results[own], results[peer], strict=True)]


def report(results: dict[str, list[dict[str, float]]], traces: int, rounds: int) -> None:
    names = list(results)
    print(f"\nper span, {traces} traces x {CHILDREN + 1} spans, {rounds} interleaved rounds (medians, us):")
    print(f"{'tracer':10s} {'app thread':>12s} {'end to end':>12s}")
    for n in names:
        print(f"{n:10s} {median([x['app_us'] for x in results[n]]):12.2f} {median([x['e2e_us'] for x in results[n]]):12.2f}")
    for own in ("ours", "ours_py"):
        if own not in names:
            continue
        for peer in names:
            if peer in ("ours", "ours_py"):
                continue
            for key, label in (("app_us", "app thread"), ("e2e_us", "end to end")):
                rs = ratios(results, own, peer, key)
                print(f"{own} / {peer:8s} {label:11s}: median ratio {median(rs):.3f} "
                      f"(min {min(rs):.3f}, max {max(rs):.3f})")


def sweep_table(rows: list[tuple[int, dict[str, list[dict[str, float]]]]]) -> None:
    """The sweep's table: medians (us/span) per size and the ratios to ddtrace."""
    names = list(rows[0][1])
    head = " | ".join(f"{n} app / e2e" for n in names)
    peer = "ddtrace" if "ddtrace" in names else None
    own = [n for n in ("ours", "ours_py") if n in names and peer]
    extra = "".join(f" | {n} / ddtrace app / e2e" for n in own)
    print(f"\n| traces | {head}{extra} |")
    print("|---" * (1 + len(names) + len(own)) + "|")
    for traces, results in rows:
        cells = [
            f"{median([x['app_us'] for x in results[n]]):.2f} / {median([x['e2e_us'] for x in results[n]]):.2f}"
            for n in names
        ]
        for n in own:
            app, e2e = (median(ratios(results, n, "ddtrace", key)) for key in ("app_us", "e2e_us"))
            cells.append(f"{app:.3f} / {e2e:.3f}")
        print(f"| {traces} | " + " | ".join(cells) + " |")


def count_calls() -> None:
    """Python-level calls (functions, and C functions called from Python)
    per trace on the app thread, ours, the writer replaced by a no-op: a
    deterministic figure, for 1-span traces and traces of 1 root + 100
    children."""
    from tracer import tracer

    tracer._writer = NoopWriter()
    counts = {"call": 0, "c_call": 0}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in counts:
            counts[event] += 1

    global CHILDREN
    for CHILDREN in (0, 100):
        run = make_run(tracer)
        run(50)
        counts.update(call=0, c_call=0)
        sys.setprofile(profile)
        run(10)
        sys.setprofile(None)
        print(f"{CHILDREN + 1:3d}-span traces: {counts['call'] / 10:.0f} Python calls, "
              f"{counts['c_call'] / 10:.0f} C calls from Python per trace")


def main() -> None:
    global CHILDREN
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--traces", default="1000", help="traces per run; a comma-separated list runs a sweep")
    parser.add_argument("--only", default="ours,ours_py,ddtrace,otel")
    parser.add_argument("--children", type=int, default=CHILDREN, help="children per root (0: one-span traces)")
    parser.add_argument("--app-calls", action="store_true", help="Python-level calls per trace, no-op writer (count_calls)")
    parser.add_argument("--loop", type=int, help="only run this many traces (after 200), ours, no-op writer")
    parser.add_argument("--worker")
    parser.add_argument("--sink")
    parser.add_argument(
        "--calls", action="store_true",
        help="print function calls per span and per trace (cProfile) for ours and ours_py, app thread and writer",
    )
    parser.add_argument(
        "--defer-decode", action="store_true",
        help="the sink decodes (counts) payloads after each run, not while it runs (see _sink.py)",
    )
    parser.add_argument(
        "--full-decode", action="store_true",
        help="the sink builds every span (msgpack.unpackb, as before round 2's sixth session) instead of walking them",
    )
    args = parser.parse_args()
    sizes = [int(t) for t in args.traces.split(",")]
    CHILDREN = args.children
    if args.app_calls:
        count_calls()
        return
    if args.loop is not None:
        from tracer import tracer

        tracer._writer = NoopWriter()
        run = make_run(tracer)
        run(200)
        run(args.loop)
        return
    if args.calls:
        for name in ("ours", "ours_py"):
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", "calls_" + name, "--traces", str(min(sizes[0], 100)),
                 "--children", str(CHILDREN)],
                capture_output=True, text=True, check=True,
            )
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: calls per span app {out['app_calls_per_span']:.2f} writer "
                  f"{out['writer_calls_per_span']:.2f}; per {CHILDREN + 1}-span trace app "
                  f"{out['app_calls_per_trace']:.0f} writer {out['writer_calls_per_trace']:.0f}")
            for label in ("app_top", "writer_top"):
                print(f"  {label}:\n    " + "\n    ".join(out[label]))
        return
    if args.worker and args.worker.startswith("calls_"):
        print(json.dumps(worker_calls(sizes[0], args.worker == "calls_ours_py")))
        return
    if args.worker:
        loop, e2e, warm = WORKERS[args.worker](sizes[0], args.sink)
        print(json.dumps({"loop": loop, "e2e": e2e, "warmup_spans": warm}))
        return
    names = args.only.split(",")
    rows = []
    with Sink(defer=args.defer_decode, full_decode=args.full_decode) as sink:
        for traces in sizes:
            rows.append((traces, measure(names, traces, args.rounds, sink)))
    for traces, results in rows:
        report(results, traces, args.rounds)
    if len(sizes) > 1:
        sweep_table(rows)


if __name__ == "__main__":
    main()
