"""Where the app thread's time goes while the writer works (issue 17).

Same workload as ``bench_spans.py`` (TRACES traces of 1 root + 100 children,
live sink, delivery checked), ours only, each run in a fresh process, the
variants interleaved round by round:

- ``live``: the default writer (wakes every ``_BATCH_SPANS`` spans, so it
  encodes and sends while the loop runs);
- ``held``: the writer held off until ``flush()`` (batch and queue bounds
  raised past the run, interval 60 s);
- ``null``: ``live`` sending to a receiver that does not decode the payloads
  (it counts the traces from their header), so that only our writer runs
  beside the loop;
- ``defer``: ``live`` sending to the decoding sink in its ``--defer`` mode
  (it takes the payloads during the run, decodes them when counted after it);
- ``null1k`` / ``null16k``: ``null`` with the writer waking every 1,024 /
  16,384 spans instead of 4,096;
- ``si50`` / ``si05``: ``live`` with ``sys.setswitchinterval``
  at 50 ms / 0.5 ms instead of 5 ms (diagnostics: a tracer must not change it).

For the loop alone it reads the kernel's per-thread scheduler accounting
(``/proc/self/task/TID/schedstat``: time on a CPU, time runnable but waiting
for one) and context switches (``status``) of the app thread and of the
writer thread, the writer's cycles, and the sink process's CPU time. The app
thread does no I/O in the loop, so its wall time splits exactly into

    on CPU + waiting for a CPU (run queue) + blocked (asleep: the GIL).

    python benchmarks/bench_handoff.py [--rounds 5] [--traces 1000] [--variants live,held,null,defer,si50,si05,null1k,null16k]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sink  # noqa: E402
from _sink import Sink, median  # noqa: E402
from bench_spans import CHILDREN, make_run  # noqa: E402

#: What each variant changes: "held" the writer until flush(), "sink" the
#: receiver, "switch" sys.setswitchinterval, "batch" the writer's wake-up batch.
VARIANTS: dict[str, dict[str, Any]] = {
    "live": {},
    "held": {"held": True},
    "null": {"sink": "null"},
    "defer": {"sink": "defer"},
    "si50": {"switch": 0.05},
    "si05": {"switch": 0.0005},
    "null1k": {"sink": "null", "batch": 1024},
    "null16k": {"sink": "null", "batch": 16384},
}


class _NullHandler(_sink._Handler):
    """Takes a payload without decoding it: counts traces from the
    X-Datadog-Trace-Count header (every trace here has CHILDREN + 1 spans),
    so the receiver costs the machine next to nothing while the loop runs."""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(b'{"rate_by_service": {}}')
        traces = int(self.headers.get("X-Datadog-Trace-Count") or 0)
        with _sink._lock:
            _sink._counts["spans"] += traces * (CHILDREN + 1)
            _sink._counts["traces"] += traces
            _sink._counts["payloads"] += 1


def _task(pid: int | str, tid: int) -> dict[str, int]:
    """Scheduler accounting of one thread (ns on CPU, ns runnable waiting, switches)."""
    base = f"/proc/{pid}/task/{tid}"
    with open(base + "/schedstat") as f:
        cpu, runq, _ = (int(x) for x in f.read().split())
    out = {"cpu": cpu, "runq": runq}
    with open(base + "/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                out["vol"] = int(line.split(":")[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out["invol"] = int(line.split(":")[1])
    return out


def _process_cpu(pid: int) -> int:
    """ns on CPU of every thread of process ``pid`` (threads that ended are lost: fine for a sink's lifetime)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += _task(pid, int(tid))["cpu"]
        except (OSError, ValueError):
            pass
    return total


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def worker(variant: str, traces: int, sink_url: str, sink_pid: int) -> dict[str, Any]:
    os.environ["TRACER_AGENT_URL"] = sink_url
    how = VARIANTS[variant]
    if how.get("held"):
        os.environ["TRACER_WRITER_INTERVAL"] = "60"
    from tracer import tracer

    run = make_run(tracer)
    run(20)
    tracer.flush(10)
    writer = tracer.writer
    if how.get("held"):
        writer._batch_spans = writer._max_pending_spans = 1 << 40
    if "batch" in how:
        writer._batch_spans = how["batch"]
    if "switch" in how:
        sys.setswitchinterval(how["switch"])
    # [cycles, cycle CPU ns, cycle wall ns, send CPU ns, send wall ns] on the writer thread
    acc = [0, 0, 0, 0, 0]
    cycle, send = writer._cycle, writer._send

    def counted_cycle() -> None:
        acc[0] += 1
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        cycle()
        acc[1] += time.thread_time_ns() - cpu
        acc[2] += time.perf_counter_ns() - wall

    def timed_send(payload: Any, retry: bool) -> str:
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        try:
            return send(payload, retry)  # type: ignore[no-any-return]
        finally:
            acc[3] += time.thread_time_ns() - cpu
            acc[4] += time.perf_counter_ns() - wall

    writer._cycle, writer._send = counted_cycle, timed_send
    app_tid, writer_tid = threading.get_native_id(), writer._thread.native_id
    app0, wr0, sink0 = _task("self", app_tid), _task("self", writer_tid), _process_cpu(sink_pid)
    start = time.perf_counter_ns()
    run(traces)
    loop = time.perf_counter_ns() - start
    app, wr, sink = _delta(_task("self", app_tid), app0), _delta(_task("self", writer_tid), wr0), _process_cpu(sink_pid) - sink0
    loop_acc = list(acc)
    tracer.flush(60)
    e2e = time.perf_counter_ns() - start
    dropped = {k: v for k, v in tracer.stats().items() if k.startswith("spans_dropped_") and v}
    if dropped:
        raise SystemExit(f"dropped spans: {dropped}")
    spans = traces * (CHILDREN + 1)
    per = 1 / spans / 1000  # ns -> us per span
    return {
        "warmup_spans": 20 * (CHILDREN + 1),
        "app_us": loop * per,
        "e2e_us": e2e * per,
        "app_cpu_us": app["cpu"] * per,
        "app_runq_us": app["runq"] * per,
        "app_blocked_us": (loop - app["cpu"] - app["runq"]) * per,
        "app_vol": app["vol"],
        "app_invol": app["invol"],
        "writer_cpu_us": wr["cpu"] * per,
        "writer_runq_us": wr["runq"] * per,
        "writer_vol": wr["vol"],
        "writer_invol": wr["invol"],
        "writer_cycles": loop_acc[0],
        # Outside _send the writer holds the GIL (process_chunk, the C encoder):
        # its wall time there, preempted or not, is time the app cannot run.
        "wr_encode_cpu_us": (loop_acc[1] - loop_acc[3]) * per,
        "wr_encode_wall_us": (loop_acc[2] - loop_acc[4]) * per,
        "wr_send_cpu_us": loop_acc[3] * per,
        "wr_send_wall_us": loop_acc[4] * per,
        "sink_cpu_us": sink * per,
    }


KEYS = (
    "app_us", "e2e_us", "app_cpu_us", "app_runq_us", "app_blocked_us", "app_vol", "app_invol",
    "writer_cpu_us", "writer_runq_us", "writer_vol", "writer_invol", "writer_cycles",
    "wr_encode_cpu_us", "wr_encode_wall_us", "wr_send_cpu_us", "wr_send_wall_us", "sink_cpu_us",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--traces", type=int, default=1000)
    parser.add_argument("--variants", default="live,held,null", help="any of " + ",".join(VARIANTS))
    parser.add_argument("--worker")
    parser.add_argument("--sink")
    parser.add_argument("--sink-pid", type=int)
    parser.add_argument("--null-sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_sink:
        server = _sink.ThreadingHTTPServer(("127.0.0.1", args.null_sink), _NullHandler)
        server.daemon_threads = True
        server.serve_forever()
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.traces, args.sink, args.sink_pid)))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not os.path.exists("/proc/thread-self/schedstat"):
        raise SystemExit("bench_handoff reads Linux's per-thread /proc/.../schedstat (CONFIG_SCHED_INFO): not here")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with Sink() as live, Sink([sys.executable, __file__, "--null-sink"]) as null, Sink(defer=True) as defer:
        sinks = {"live": live, "null": null, "defer": defer}
        for r in range(args.rounds):
            for v in variants:
                sink = sinks[VARIANTS[v].get("sink", "live")]
                sink.reset()
                cmd = [sys.executable, __file__, "--worker", v, "--traces", str(args.traces),
                       "--sink", sink.url, "--sink-pid", str(sink.proc.pid)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{v}: worker failed: void run\n{proc.stderr[-2000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                expected = res["warmup_spans"] + args.traces * (CHILDREN + 1)
                if sink.wait_spans(expected) != expected:
                    raise SystemExit(f"{v}: not every span delivered: void run")
                results[v].append(res)
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(
                f"{v} app {results[v][-1]['app_us']:.2f}" for v in variants), flush=True)
    print(f"\n{args.traces} traces x {CHILDREN + 1} spans, {args.rounds} interleaved rounds, medians "
          "(us per span; switches and cycles per run, during the loop):")
    print(f"{'':16s}" + "".join(f"{v:>10s}" for v in variants))
    for key in KEYS:
        print(f"{key:16s}" + "".join(f"{median([x[key] for x in results[v]]):10.2f}" for v in variants))
    base = variants[0]
    for v in variants[1:]:
        for key in ("app_us", "e2e_us"):
            rs = [a[key] / b[key] for a, b in zip(results[base], results[v], strict=True)]
            print(f"{base} / {v} {key}: median {median(rs):.2f} (min {min(rs):.2f}, max {max(rs):.2f})")


if __name__ == "__main__":
    main()
