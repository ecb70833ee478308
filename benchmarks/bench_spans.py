"""Per-span cost: ours vs ddtrace vs the OpenTelemetry SDK, same run.

Each round runs every tracer in its own fresh process (interleaved A B C A B C
...), all sending to one live local sink that counts delivered spans. A
worker makes TRACES traces of 1 root + 100 children, each child with 3 string
tags and 1 metric, and reports:

- app: the app thread's time per span (the loop alone);
- e2e: the loop plus flush() until the sink has every span.

``ours`` runs the C span code and encoders where they are built;
``--only ours,ours_py,ddtrace`` adds ours in pure Python (TRACER_PURE_PYTHON).

A run that does not deliver every span fails. Medians over rounds and
per-round ratios (ours / peer) are printed.

    python benchmarks/bench_spans.py [--rounds 7] [--traces 300]
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
from _sink import Sink, median  # noqa: E402

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


WORKERS = {"ours": worker_ours, "ours_py": worker_ours_py, "ddtrace": worker_ddtrace, "otel": worker_otel}


def run_worker(name: str, traces: int, sink: Sink) -> dict[str, float]:
    sink.reset()
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--traces", str(traces), "--sink", sink.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    expected = result["warmup_spans"] + traces * (CHILDREN + 1)
    delivered = sink.wait_spans(expected, timeout=30)
    if delivered != expected:
        raise SystemExit(f"{name}: delivered {delivered} of {expected} spans: void run")
    spans = traces * (CHILDREN + 1)
    return {"app_us": result["loop"] / spans * 1e6, "e2e_us": result["e2e"] / spans * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--traces", type=int, default=300)
    parser.add_argument("--only", default="ours,ddtrace,otel")
    parser.add_argument("--worker")
    parser.add_argument("--sink")
    args = parser.parse_args()
    if args.worker:
        loop, e2e, warm = WORKERS[args.worker](args.traces, args.sink)
        print(json.dumps({"loop": loop, "e2e": e2e, "warmup_spans": warm}))
        return
    names = args.only.split(",")
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with Sink() as sink:
        for r in range(args.rounds):
            for name in names:
                results[name].append(run_worker(name, args.traces, sink))
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(
                f"{n} app {results[n][-1]['app_us']:.2f} e2e {results[n][-1]['e2e_us']:.2f}" for n in names
            ), flush=True)
    print(f"\nper span, {args.traces} traces x {CHILDREN + 1} spans, {args.rounds} interleaved rounds (medians, us):")
    print(f"{'tracer':10s} {'app thread':>12s} {'end to end':>12s}")
    for n in names:
        print(f"{n:10s} {median([x['app_us'] for x in results[n]]):12.2f} {median([x['e2e_us'] for x in results[n]]):12.2f}")
    if "ours" in names:
        for peer in names:
            if peer == "ours":
                continue
            for key, label in (("app_us", "app thread"), ("e2e_us", "end to end")):
                ratios = [o[key] / p[key] for o, p in zip(results["ours"], results[peer], strict=True)]
                print(f"ours / {peer:8s} {label:11s}: median ratio {median(ratios):.3f} "
                      f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
