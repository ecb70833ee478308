"""The receiver's HTTP side (one route table), ``ReceiverServer`` and
``agent-sim serve``; ingest itself lives in ``agent_sim.ingest.Receiver``.

Threads: ``ThreadingHTTPServer`` runs one handler thread per connection;
one maintenance thread flushes stats buckets, checkpoints the WAL, rolls
stats up and evicts old traces. A trace payload is answered only after its
SQLite transaction committed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mimetypes
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgpack

from agent_sim import views
from agent_sim.checks import DEFAULT_INTERVAL_S, CheckRunner
from agent_sim.decode import PayloadError, decode_json, decode_v05, unpack_v04
from agent_sim.dogstatsd import Aggregator
from agent_sim.dogstatsd_query import openmetrics
from agent_sim.dogstatsd_store import MetricStore
from agent_sim.dogstatsd_trace import TraceMetrics
from agent_sim.findings import api_breakdown, api_insights
from agent_sim.hostmetrics import HostMetrics
from agent_sim.ingest import KEEP_1H_NS, KEEP_10S_NS, Receiver
from agent_sim.insights import Thresholds
from agent_sim.monitors import api as monitors_api
from agent_sim.monitors.service import MonitorService

__all__ = ["KEEP_10S_NS", "KEEP_1H_NS", "Receiver", "ReceiverServer", "StatsdAddressError"]

MAX_BODY = 25 * 1024 * 1024
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FLUSH_INTERVAL_S = 1.0
TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere.

    Payload bodies, decoded spans and SQLite pages are allocated and freed on
    the handler threads' malloc arenas; glibc keeps the freed pages, so RSS
    crept up ~1 MiB/min under steady load although live memory was flat.
    Trimming hands them back to the OS (a few ms, on the maintenance thread)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0) and None


# -- HTTP ---------------------------------------------------------------------
Handler = Callable[["RequestHandler", str], None]


class RequestHandler(BaseHTTPRequestHandler):
    """One connection; routes through ``ROUTES`` / ``PREFIX_ROUTES``."""

    protocol_version = "HTTP/1.1"
    server_version = "agent_sim"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; with Nagle on, the second waits
        # for the client's delayed ACK (40 ms per request on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    _linger = False

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._lingering_close()

    def _lingering_close(self) -> None:
        """After refusing an unread body: send FIN, then discard (never buffer)
        what the client still sends, briefly. Closing with unread input makes
        the kernel send RST, which can destroy the 413 before the client reads it."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.5)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and sock.recv(1 << 16):
                pass
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per request would cost more than the request at load

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        self.query = dict(pairs)
        if sum(k == "tag" for k, _v in pairs) > 1:  # the one repeatable parameter (/api/traces)
            self.query["tag"] = "\0".join(v for k, v in pairs if k == "tag")
        handler = ROUTES.get((method, path))
        arg = ""
        if handler is None:
            for (m, prefix), h in PREFIX_ROUTES:
                if m == method and path.startswith(prefix) and len(path) > len(prefix):
                    handler, arg = h, path[len(prefix):]
                    break
        if handler is None:
            known = any(p == path for (_m, p) in ROUTES)
            if known:
                self.send_json(405, {"error": f"method {method} not allowed on {path}"})
            else:
                self.send_json(404, {"error": f"no route for {method} {path}"})
            self._drain()
            return
        try:
            handler(self, arg)
        except views.BadQuery as exc:
            self.send_json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            # A bug, not bad input: answer 500 (once) and keep serving.
            import traceback

            traceback.print_exc(file=sys.stderr)
            self.server.receiver.count("internal_errors")
            self.close_connection = True
            try:
                self.send_error_text(500, f"internal error: {type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _drain(self) -> None:
        """Discard an unread request body so keep-alive stays in sync."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    # -- responses ---------------------------------------------------------
    def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def send_error_text(self, status: int, reason: str) -> None:
        self.send_bytes(status, reason.encode() + b"\n", "text/plain; charset=utf-8")

    def read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400 itself."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            self.send_error_text(411, "Content-Length required")
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self.send_error_text(400, f"bad Content-Length: {raw!r}")
            return None
        if length > MAX_BODY:
            # Answer without reading 25+ MiB; the connection cannot be reused.
            self.close_connection = True
            self._linger = True
            self.send_error_text(413, f"payload too large: {length} bytes (limit {MAX_BODY})")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            self.send_error_text(400, f"body truncated: {len(body)} of {length} bytes")
            return None
        return body

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(100)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                self.send_error_text(400, "bad chunked encoding")
                return None
            if size == 0:
                while self.rfile.readline(1000) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                self.close_connection = True
                self._linger = True
                self.send_error_text(413, f"payload too large (limit {MAX_BODY})")
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(10)


def _traces_handler(version: str) -> Handler:
    def handle(h: RequestHandler, _arg: str) -> None:
        body = h.read_body()
        if body is None:
            return
        rx = h.server.receiver
        content_type = (h.headers.get("Content-Type") or "").lower()
        client_stats = _truthy(h.headers.get("Datadog-Client-Computed-Stats"))
        client_top_level = _truthy(h.headers.get("Datadog-Client-Computed-Top-Level"))
        try:
            if version == "v0.5":
                traces: Sequence[Any] = decode_v05(body)
            elif "application/json" in content_type:
                traces = decode_json(body)
            else:
                traces = unpack_v04(body)  # spans are checked by ingest's normalization pass
            rx.ingest(traces, client_stats, client_top_level)
        except PayloadError as exc:
            rx.count("payloads_rejected")
            h.send_error_text(400, f"{version}: {exc}")
            return
        h.send_bytes(200, rx.rates_body, "application/json")

    return handle


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def _v03(h: RequestHandler, _arg: str) -> None:
    if h.read_body() is not None:
        h.send_bytes(200, b"OK", "text/plain")


def _v06_stats(h: RequestHandler, _arg: str) -> None:
    body = h.read_body()
    if body is None:
        return
    rx = h.server.receiver
    try:
        payload = msgpack.unpackb(body, raw=False, unicode_errors="replace", strict_map_key=False)
        rx.ingest_client_stats(payload)
    except (PayloadError, ValueError, TypeError, msgpack.UnpackException) as exc:
        rx.count("payloads_rejected")
        h.send_error_text(400, f"v0.6 stats: {exc}")
        return
    h.send_bytes(200, b"OK", "text/plain")


def _view(fn: Callable[[Receiver, dict[str, str]], tuple[int, Any]]) -> Handler:
    def handle(h: RequestHandler, _arg: str) -> None:
        status, body = fn(h.server.receiver, h.query)
        if isinstance(body, bytes):
            h.send_bytes(status, body, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        else:
            h.send_json(status, body)

    return handle


def _statsd_metrics(h: RequestHandler, _arg: str) -> None:
    """GET /metrics: the trace side's OpenMetrics, plus the DogStatsD intake's counters and metrics."""
    _status, body = views.metrics(h.server.receiver, h.query)
    lines = [f"# TYPE agent_sim_statsd_{name} counter\nagent_sim_statsd_{name}_total {n}"
             for name, n in sorted(h.server.statsd.counters.items())]
    lines += openmetrics(h.server.statsd, time.time())
    body = body.replace(b"# EOF\n", ("\n".join(lines) + "\n# EOF\n").encode())
    h.send_bytes(200, body, "application/openmetrics-text; version=1.0.0; charset=utf-8")


def _api_metrics(h: RequestHandler, _arg: str) -> None:
    h.send_json(200, h.server.statsd.metric_list(tuple(t for t in h.query.get("tags", "").split(",") if t)))


def _api_events(h: RequestHandler, _arg: str) -> None:
    h.send_json(200, [dataclasses.asdict(e) for e in h.server.statsd.events])


def _api_checks(h: RequestHandler, _arg: str) -> None:
    h.send_json(200, [dataclasses.asdict(c) for c in h.server.statsd.checks])


def _api_metrics_query(h: RequestHandler, _arg: str) -> None:
    q = h.query
    now = time.time()
    try:
        if not q.get("name"):
            raise ValueError("name is required")
        tags = tuple(t for t in q.get("tags", "").split(",") if t)
        series = h.server.statsd.query(q["name"], tags, float(q.get("since", now - 3600)),
                                       float(q.get("until", now)), q.get("agg", "avg"), q.get("by", ""),
                                       int(q.get("rollup", 10)))
    except ValueError as exc:
        h.send_json(400, {"error": str(exc)})
        return
    h.send_json(200, {"series": series})


class StatsdListener:
    """A datagram socket (UDP ``(host, port)``, or a Unix socket path) and its
    reader thread feeding an ``Aggregator``; a bad datagram never stops it."""

    def __init__(self, aggregator: Aggregator, address: tuple[str, int] | str) -> None:
        self.aggregator = aggregator
        self.path = address if isinstance(address, str) else None
        self.sock = socket.socket(socket.AF_UNIX if self.path else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if self.path and os.path.exists(self.path) and stat.S_ISSOCK(os.stat(self.path).st_mode):
            os.unlink(self.path)  # a stale socket from a previous run; any other file is left alone (bind fails)
        try:
            self.sock.bind(address)
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.2)
        self.port: int = 0 if self.path else self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent_sim-statsd", daemon=True)
        self._last_log = -math.inf

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        recv = self.sock.recv
        ingest = self.aggregator.ingest
        while not self._stop.is_set():
            try:
                data = recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                errors = ingest(data, time.time())
                if errors and time.monotonic() - self._last_log >= 60:
                    self._last_log = time.monotonic()
                    print(f"agent_sim: bad DogStatsD datagram ({', '.join(sorted(errors))}); all are counted in "
                          "/metrics, this is logged at most once a minute", file=sys.stderr)
            except Exception as exc:  # a parser bug must not end the intake
                print(f"agent_sim: statsd ingest failed: {exc!r}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _trace_by_id(h: RequestHandler, arg: str) -> None:
    status, body = views.api_trace(h.server.receiver, arg)
    h.send_json(status, body)


def _static(h: RequestHandler, arg: str) -> None:
    name = arg or "index.html"
    path = os.path.realpath(os.path.join(STATIC_DIR, name))
    if not path.startswith(STATIC_DIR + os.sep) or not os.path.isfile(path):
        h.send_json(404, {"error": f"no static file {name!r}"})
        return
    with open(path, "rb") as f:
        data = f.read()
    h.send_bytes(200, data, mimetypes.guess_type(path)[0] or "application/octet-stream")


ROUTES: dict[tuple[str, str], Handler] = {}
for _m in ("PUT", "POST"):
    ROUTES[(_m, "/v0.4/traces")] = _traces_handler("v0.4")
    ROUTES[(_m, "/v0.5/traces")] = _traces_handler("v0.5")
    ROUTES[(_m, "/v0.3/traces")] = _v03
    ROUTES[(_m, "/v0.6/stats")] = _v06_stats
ROUTES.update({
    ("GET", "/info"): _view(views.info),
    ("GET", "/api/stats"): _view(views.api_stats),
    ("GET", "/api/services"): _view(views.api_services),
    ("GET", "/api/traces"): _view(views.api_traces),
    ("GET", "/metrics"): _statsd_metrics,
    ("GET", "/api/metrics"): _api_metrics,
    ("GET", "/api/events"): _api_events,
    ("GET", "/api/checks"): _api_checks,
    ("GET", "/api/metrics/query"): _api_metrics_query,
    ("GET", "/api/insights"): _view(api_insights),
    ("GET", "/api/breakdown"): _view(api_breakdown),
    ("GET", "/"): lambda h, _a: _static(h, "index.html"),
})
ROUTES.update(monitors_api.ROUTES)
PREFIX_ROUTES: list[tuple[tuple[str, str], Handler]] = [
    (("GET", "/api/traces/"), _trace_by_id),
    (("GET", "/static/"), _static),
    *monitors_api.PREFIX_ROUTES,
]


class StatsdAddressError(OSError):
    """A DogStatsD address of ``ReceiverServer`` cannot be bound (the HTTP port was not opened);
    ``filename``: ``"UDP <port>"`` or the socket path."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    receiver: Receiver
    statsd: Aggregator
    monitors: MonitorService


class ReceiverServer:
    """agent_sim's HTTP server around a ``Receiver``.

    ``start()`` serves on a background thread and returns once listening;
    ``serve_forever()`` blocks the caller; ``stop()`` stops serving, flushes
    stats and closes the database. ``port=0`` takes a free port (see ``.port``).
    ``statsd_port``: None runs no DogStatsD UDP listener, 0 a free UDP port (``.statsd_port``);
    ``statsd_socket``: a Unix datagram socket path for DogStatsD, or None.
    ``checks_dir``: run its ``*.py`` checks, and ``host_metrics`` the /proc one,
    every ``check_interval`` seconds (``agent_sim.checks``).
    ``monitors``: a monitors/downtimes definitions file (``agent_sim.monitors.files``), or None."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, db: str = ":memory:",
                 retention_traces: int = 100_000, retention_hours: float = 24,
                 sample_rates: dict[str, float] | None = None, insight_limits: Thresholds | None = None,
                 statsd_port: int | None = None, statsd_socket: str | None = None, checks_dir: str | None = None,
                 check_interval: float = DEFAULT_INTERVAL_S, host_metrics: bool = False,
                 monitors: str | None = None) -> None:
        self.receiver = Receiver(db, retention_traces, retention_hours, sample_rates,
                                 insight_limits=insight_limits)
        self.statsd_listeners: list[StatsdListener] = []
        addresses = ([(host, statsd_port)] if statsd_port is not None else []) + ([statsd_socket] if statsd_socket else [])
        try:
            self.statsd = Aggregator(store=MetricStore(self.receiver.store), traces=TraceMetrics(self.receiver))
            for address in addresses:
                try:
                    self.statsd_listeners.append(StatsdListener(self.statsd, address))
                except OSError as exc:
                    where = address if isinstance(address, str) else f"UDP {address[1]}"
                    raise StatsdAddressError(exc.errno, exc.strerror, where) from exc
            # The HTTP port last: a taken DogStatsD address fails start-up before it ever opens.
            self.httpd = _HTTPServer((host, port), RequestHandler)
        except BaseException:
            for listener in self.statsd_listeners:
                listener.stop()
            self.receiver.close()
            raise
        self.httpd.receiver = self.receiver
        self.httpd.statsd = self.statsd
        self.statsd_port = self.statsd_listeners[0].port if statsd_port is not None else None
        self.checks = CheckRunner(self.statsd, check_interval)
        self._checks_dir = checks_dir
        self._host_metrics = host_metrics
        self.monitors = self.httpd.monitors = MonitorService(self.statsd, self.receiver, monitors)
        self.host = host
        self.port: int = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None
        self._maint: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False

    def start(self) -> ReceiverServer:
        self._start_maintenance()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="agent_sim-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._start_maintenance()
        try:
            self.httpd.serve_forever(poll_interval=0.1)
        finally:
            self.stop()

    def _start_maintenance(self) -> None:
        if self._maint is None:
            for listener in self.statsd_listeners:
                listener.start()
            if self._host_metrics:
                self.checks.add(HostMetrics())
            if self._checks_dir:
                self.checks.load_dir(self._checks_dir)
            self.monitors.start()
            self._maint = threading.Thread(target=self._maintenance_loop, name="agent_sim-maint", daemon=True)
            self._maint.start()

    def _maintenance_loop(self) -> None:
        last_full = last_trim = 0.0
        trim = _malloc_trim()
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                now = time.monotonic()
                full = now - last_full > 60
                self.receiver.maintain(full=full)
                self.statsd.flush(time.time())
                if full:
                    self.statsd.rollup(time.time(), KEEP_10S_NS / 1e9, KEEP_1H_NS / 1e9)
                    last_full = now
                if now - last_trim > TRIM_INTERVAL_S:
                    trim()
                    last_trim = now
            except Exception as exc:  # keep serving; report once per failure
                self.receiver.count("internal_errors")
                print(f"agent_sim: maintenance failed: {exc!r}", file=sys.stderr)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.receiver.stopping = True
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()
        for listener in self.statsd_listeners:
            listener.stop()
        self.checks.stop()
        if self._maint is not None and self._maint is not threading.current_thread():
            self._maint.join(5)
        self.monitors.stop()
        try:
            self.statsd.flush(time.time(), everything=True)
        except Exception as exc:  # the trace side still closes cleanly
            print(f"agent_sim: storing metrics failed: {exc!r}", file=sys.stderr)
        self.receiver.close()

    def __enter__(self) -> ReceiverServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
