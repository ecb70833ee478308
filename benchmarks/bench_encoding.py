"""Encoder throughput: finished Span objects → msgpack bytes, 10,000 traces × 10 spans.

    python benchmarks/bench_encoding.py [--traces 10000] [--rounds 7] [--repeat 3]

Variants, interleaved round by round in this one process (so machine noise hits
them alike): ours v0.4 and v0.5 (``tracer.encoding``), ddtrace's Cython
encoders (``ddtrace.internal._encoding``, when installed) on equivalent ddtrace
spans, and ``msgpack.packb`` on ready-made v0.4 dicts (the floor for any
dict-building encoder). A round times each variant ``--repeat`` times back to
back and keeps the fastest (other jobs on a shared machine only ever add
time); the report gives medians over rounds in spans/s and per-round ratios.

Spans: a web root with 3 string tags and 1 metric, 9 SQL children with 3 string
tags and 1 metric, after ``tracer.processor.process_chunk`` (so runtime-id,
language, _dd.p.tid, _dd.top_level, … are there, as on the wire).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402

from tracer import tracer  # noqa: E402
from tracer.encoding import encode_v04, encode_v05  # noqa: E402
from tracer.processor import process_chunk  # noqa: E402
from tracer.span import RECORD_LEN, records  # noqa: E402

_MASK64 = (1 << 64) - 1


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[tuple[Any, list[Any]]] = []

    def write(self, trace: Any, chunk: list[Any]) -> None:
        self.chunks.append((trace, chunk))

    def flush(self, timeout: float = 0) -> bool:
        return True

    def stop(self, timeout: float = 0) -> None:
        pass


def our_chunks(n_traces: int) -> list[list[Any]]:
    sink = _Sink()
    previous, tracer._writer = tracer._writer, sink
    try:
        for i in range(n_traces):
            with tracer.trace("web.request", service="web", resource="GET /users/<id>", span_type="web") as root:
                root.set_tag("http.method", "GET")
                root.set_tag("http.url", f"http://shop.local/users/{i}")
                root.set_tag("http.status_code", "200")
                root.set_metric("items", 3)
                for _ in range(9):
                    with tracer.trace(
                        "mysql.query", service="mysql", resource="SELECT * FROM users WHERE id = %s", span_type="sql"
                    ) as s:
                        s.set_tag("db.system", "mysql")
                        s.set_tag("component", "pymysql")
                        s.set_tag("span.kind", "client")
                        s.set_metric("db.row_count", 1)
    finally:
        tracer._writer = previous
    return [c for t, c in sink.chunks if process_chunk(t, c, tracer.sampler)]


def ddtrace_traces(chunks: list[list[Any]]) -> list[list[Any]] | None:
    """The same spans as ddtrace Span objects (same ids, tags and metrics)."""
    try:
        from ddtrace.trace import Span as DDSpan
    except ImportError:
        return None
    out = []
    for chunk in chunks:
        trace = []
        for s in records(chunk):
            d = DDSpan(
                s.name,
                service=s.service,
                resource=s.resource,
                span_type=s.span_type,
                trace_id=s.trace_id,
                span_id=s.span_id,
                parent_id=s.parent_id or None,
                start=s.start_ns / 1e9,
            )
            for k, v in s.meta.items():
                d.set_tag(k, v)
            for k, v in s.metrics.items():
                d.set_metric(k, v)
            d.duration_ns = s.duration_ns
            trace.append(d)
        out.append(trace)
    return out


def ddtrace_encoders(traces: list[list[Any]]) -> dict[str, Callable[[], Any]]:
    from ddtrace.internal._encoding import MsgpackEncoderV04, MsgpackEncoderV05

    def run(cls: Any) -> Callable[[], Any]:
        def encode() -> Any:
            encoder = cls(256 << 20, 256 << 20)
            for trace in traces:
                encoder.put(trace)
            return encoder.encode()

        return encode

    return {"ddtrace v0.4": run(MsgpackEncoderV04), "ddtrace v0.5": run(MsgpackEncoderV05)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    chunks = our_chunks(args.traces)
    n_spans = sum(map(len, chunks)) // RECORD_LEN
    ready = msgpack.unpackb(encode_v04(chunks))
    variants: dict[str, Callable[[], Any]] = {
        "ours v0.4": lambda: encode_v04(chunks),
        "ours v0.5": lambda: encode_v05(chunks),
        "msgpack.packb(ready dicts)": lambda: msgpack.packb(ready),
    }
    dd = ddtrace_traces(chunks)
    if dd is not None:
        variants.update(ddtrace_encoders(dd))
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - started)
            times[name].append(best)

    print(
        f"{args.traces} traces x {n_spans // max(1, len(chunks))} spans = {n_spans} spans, {args.rounds} interleaved rounds (best of {args.repeat} each), python {sys.version.split()[0]}, msgpack {msgpack.version}"
    )
    for name, ts in times.items():
        print(
            f"  {name:28s} median {n_spans / statistics.median(ts) / 1e3:7.0f} k spans/s   ({statistics.median(ts) * 1e3:6.1f} ms)"
        )
    pairs = [
        ("ours v0.4", "ddtrace v0.4"),
        ("ours v0.5", "ddtrace v0.5"),
        ("ours v0.4", "msgpack.packb(ready dicts)"),
        ("ours v0.5", "msgpack.packb(ready dicts)"),
    ]
    for ours, other in pairs:
        if other in times:
            ratios = [b / a for a, b in zip(times[ours], times[other], strict=True)]
            print(
                f"  speed {ours} / {other}: median {statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})"
            )


if __name__ == "__main__":
    main()
