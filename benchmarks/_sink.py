"""A live local sink for benchmarks: accepts every tracer's payloads and counts spans.

Run in its own process (``python benchmarks/_sink.py PORT``) so that counting
costs the measured process nothing. It answers:

- ``PUT|POST /v0.4/traces``, ``/v0.5/traces`` (Datadog msgpack): 200
  ``{"rate_by_service": {}}``; spans are counted by walking the body with
  msgpack's parser (``--full-decode``: by decoding it whole, as before the
  round 2 sixth session).
- ``POST /v1/traces`` (OTLP/HTTP protobuf): 200; spans counted with
  opentelemetry-proto when it is installed.
- ``GET /count``: ``{"spans": N, "traces": N, "payloads": N}``; ``GET /reset`` zeroes it.

With ``--defer`` (``Sink(defer=True)``) it keeps the bodies and decodes them
when ``/count`` is asked, after the measured run: decoding in Python costs it
1.6-2.9 us of CPU per span, more than our whole app-thread time per span,
and on a 2-core machine that CPU is taken from the measured process while it
runs (``bench_handoff.py``, docs/performance.md "The app/writer hand-off").

Every benchmark checks that what it produced was delivered, so a tracer that
drops work cannot look fast for it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgpack

_lock = threading.Lock()
_counts = {"spans": 0, "traces": 0, "payloads": 0}
_deferred: list[tuple[str, bytes]] | None = None  # bodies not decoded yet (--defer)
_full_decode = False  # --full-decode: unpackb every body (builds every span)


def _count_datadog(path: str, body: bytes) -> tuple[int, int]:
    """(traces, spans) of a v0.4/v0.5 body. Every span is walked by msgpack's
    own parser (``skip``: a truncated or malformed body raises, and the body
    must end after the last span) without building it: ≈ 10 × less CPU per
    span than ``unpackb``, CPU a 2-core machine otherwise takes from the
    measured process (``--full-decode``: build every span, as before)."""
    if _full_decode:
        data = msgpack.unpackb(body, raw=True, strict_map_key=False)
        traces = data[1] if path.startswith("/v0.5") else data
        return len(traces), sum(len(t) for t in traces)
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(body), 1 << 20))
    unpacker.feed(body)
    if path.startswith("/v0.5"):
        if unpacker.read_array_header() != 2:
            raise ValueError("a v0.5 body is [strings, traces]")
        unpacker.skip()
    skip = unpacker.skip
    n_traces = unpacker.read_array_header()
    spans = 0
    for _ in range(n_traces):
        n = unpacker.read_array_header()
        spans += n
        for _ in range(n):
            skip()
    if unpacker.tell() != len(body):
        raise ValueError(f"{len(body) - unpacker.tell()} bytes after the last trace")
    return n_traces, spans


def _count_otlp(body: bytes) -> tuple[int, int]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    spans = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    return 0, spans


class NoDelayHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive with Nagle off. The handler writes its headers and
    body in two sends; with Nagle on, the second waits for the client's
    delayed ACK (up to 40 ms on Linux, at random), which made a tracer's
    end-to-end time jump by that much in some runs and not others."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Handler(NoDelayHandler):

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?")[0]
        # Answer as soon as the body is here, then count: the tracer's flush()
        # must not wait for the sink's own decoding (it would add the same
        # receiver-side cost to every tracer's end-to-end time). Counting
        # still gates the benchmark's delivery check (wait_spans).
        if path.endswith("/traces") and path.startswith("/v0."):
            self._reply(b'{"rate_by_service": {}}')
        elif path == "/v1/traces":
            self._reply(b"", "application/x-protobuf")
        else:
            self._reply(b"{}")
        if _deferred is None:
            _count(path, body)
        else:
            with _lock:
                _deferred.append((path, body))

    do_POST = do_PUT

    def do_GET(self) -> None:
        if self.path.startswith("/reset"):
            with _lock:
                for key in _counts:
                    _counts[key] = 0
                if _deferred is not None:
                    del _deferred[:]
        while _deferred:
            with _lock:
                path, body = _deferred.pop(0) if _deferred else ("", b"")
            if path:
                _count(path, body)
        with _lock:
            body = json.dumps(_counts).encode()
        self._reply(body)


def _count(path: str, body: bytes) -> None:
    if path.endswith("/traces") and path.startswith("/v0."):
        traces, spans = _count_datadog(path, body)
    elif path == "/v1/traces":
        traces, spans = _count_otlp(body)
    else:
        traces = spans = 0
    with _lock:
        _counts["spans"] += spans
        _counts["traces"] += traces
        _counts["payloads"] += 1


def serve(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    server.serve_forever()


class Sink:
    """Start the sink in a subprocess; ``count()`` / ``reset()`` / ``wait_spans(n)``."""

    def __init__(self, command: list[str] | None = None, defer: bool = False, full_decode: bool = False) -> None:
        """``command``: another server to run (its last argument is the port);
        ``defer``: decode the bodies when counted, not while the run goes on;
        ``full_decode``: build every span (``unpackb``) instead of walking it."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        flags = (["--defer"] if defer else []) + (["--full-decode"] if full_decode else [])
        command = command or [sys.executable, __file__, *flags]
        self.proc = subprocess.Popen(command + [str(self.port)])
        deadline = time.monotonic() + 10
        while True:
            try:
                self.count()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def count(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/count", timeout=5) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        urllib.request.urlopen(self.url + "/reset", timeout=5).read()

    def wait_spans(self, n: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            got = self.count()["spans"]
            if got >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.005)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoopWriter:
    """Ours without sending: each chunk dropped at once (no writer thread,
    nothing queued), for the app thread's work alone (``bench_spans.py
    --app-calls`` and ``--loop``, ``bench_flask.py``'s ``ours+no-writer``)."""

    def write(self, trace: Any, chunk: list[Any]) -> None:
        trace.root = None  # as the writer's processing: breaks the trace <-> root cycle

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def stop(self, timeout: float | None = None) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def callgrind_instructions(valgrind: str, command: list[str], env: dict[str, str], timeout: float) -> int:
    """Instructions ``command`` ran under ``valgrind --tool=callgrind`` (its
    "Collected" total); RuntimeError with the end of its stderr when it
    failed. The benchmarks' deterministic counts difference two such runs."""
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return int(found.group(1))


if __name__ == "__main__":
    if "--defer" in sys.argv:
        _deferred = []
    _full_decode = "--full-decode" in sys.argv
    serve(int(sys.argv[-1]))

