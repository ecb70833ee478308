"""The agent writer against real local HTTP servers: headers, formats, keep-alive,
receiver down / slow / erroring / dropping connections, bounded memory,
payload splitting, drop accounting and recovery."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.utils import free_port
from tracer import tracer
from tracer.config import config
from tracer.version import __version__

_SETTINGS = ("agent_url", "api_version", "writer_interval", "writer_timeout", "writer_buffer_bytes")


class Intake(http.server.ThreadingHTTPServer):
    """A trace receiver whose behaviour each test picks: ``mode`` is "ok",
    "slow" (sleeps ``delay`` before answering), "status" (answers ``status``
    for paths in ``status_paths``, or all) or "drop" (reads the request, then
    closes the socket without an answer)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.mode = "ok"
        self.status = 500
        self.status_paths: tuple[str, ...] = ()
        self.delay = 0.0
        self.rates: dict[str, float] = {}
        self.requests: list[dict[str, Any]] = []  # answered 2xx, decoded
        self.attempts = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a slow answer to a client that gave up is expected here

    def spans(self) -> list[dict[str, Any]]:
        return [span for req in self.requests for trace in req["traces"] for span in trace]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def decode(path: str, body: bytes) -> list[list[dict[str, Any]]]:
    if path.startswith("/v0.5/"):
        strings, traces = msgpack.unpackb(body, strict_map_key=False)
        keys = ("service", "name", "resource", "trace_id", "span_id", "parent_id", "start", "duration", "error")
        out = []
        for trace in traces:
            spans = []
            for s in trace:
                span = dict(zip(keys, s[:9], strict=True))
                for key in ("service", "name", "resource"):
                    span[key] = strings[span[key]]
                span["meta"] = {strings[k]: strings[v] for k, v in s[9].items()}
                span["metrics"] = {strings[k]: v for k, v in s[10].items()}
                span["type"] = strings[s[11]]
                spans.append(span)
            out.append(spans)
        return out
    return msgpack.unpackb(body)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Intake

    def log_message(self, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with srv.lock:
            srv.attempts += 1
        if srv.mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if srv.mode == "slow":
            time.sleep(srv.delay)
        if srv.mode == "status" and (not srv.status_paths or self.path.startswith(srv.status_paths)):
            self._answer(srv.status, b'{"error": "test"}')
            return
        traces = decode(self.path, body)
        with srv.lock:
            srv.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "size": len(body),
                    "traces": traces,
                    "client": self.client_address,
                }
            )
        self._answer(200, json.dumps({"rate_by_service": srv.rates}).encode())

    do_POST = do_PUT

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def intake() -> Iterator[Intake]:
    server = Intake()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def settings() -> Iterator[Any]:
    """Set writer settings on the global config; restores them and rebuilds the writer."""
    saved = {name: getattr(config, name) for name in _SETTINGS}

    def apply(**values: Any) -> Any:
        base = {"writer_interval": 0.05, "writer_timeout": 0.5}
        base.update(values)
        for name, value in base.items():
            setattr(config, name, value)
        tracer._reset_writer()
        return tracer.writer

    try:
        yield apply
    finally:
        tracer._reset_writer()
        for name, value in saved.items():
            setattr(config, name, value)


def make_traces(n: int, spans: int = 3, name: str = "op") -> list[int]:
    """n finished traces of ``spans`` spans each; returns their root span ids."""
    roots = []
    for i in range(n):
        with tracer.trace(name, service="svc", resource=f"res{i}") as root:
            root.set_tag("k", "v")
            for _ in range(spans - 1):
                with tracer.trace(name + ".child") as child:
                    child.set_metric("m", 1.5)
        roots.append(root.span_id)
    return roots


def total_dropped(stats: dict[str, int]) -> int:
    return sum(v for k, v in stats.items() if k.startswith("spans_dropped_"))


def test_sends_v04_with_headers_on_one_connection(intake: Intake, settings: Any) -> None:
    intake.rates = {"service:svc,env:": 0.25}
    writer = settings(agent_url=intake.url, writer_interval=5.0)
    make_traces(2)
    assert tracer.flush(5)
    make_traces(1)
    assert tracer.flush(5)
    assert [r["path"] for r in intake.requests] == ["/v0.4/traces", "/v0.4/traces"]
    first = intake.requests[0]
    headers = {k.lower(): v for k, v in first["headers"].items()}
    assert headers["content-type"] == "application/msgpack"
    assert headers["x-datadog-trace-count"] == "2"
    assert headers["content-length"] == str(first["size"])
    assert headers["datadog-meta-lang"] == "python"
    assert headers["datadog-meta-tracer-version"] == __version__
    assert headers["datadog-meta-lang-version"].count(".") == 2
    assert headers["datadog-meta-lang-interpreter"] == "CPython"
    assert headers["datadog-client-computed-top-level"] == "yes"
    # keep-alive: the second payload came over the same connection
    assert intake.requests[0]["client"] == intake.requests[1]["client"]
    assert sorted(s["name"] for s in intake.spans()) == ["op"] * 3 + ["op.child"] * 6
    stats = writer.stats()
    assert (stats["spans_sent"], stats["traces_sent"], stats["payloads_sent"]) == (9, 3, 2)
    assert total_dropped(stats) == 0
    # the reply's rates reached the sampler
    assert "service:svc,env:" in tracer.sampler._agent_rates


def test_v05_payload(intake: Intake, settings: Any) -> None:
    settings(agent_url=intake.url, api_version="v0.5")
    make_traces(3, spans=2)
    assert tracer.flush(5)
    assert {r["path"] for r in intake.requests} == {"/v0.5/traces"}
    assert sorted(s["resource"] for s in intake.spans() if s["name"] == "op") == ["res0", "res1", "res2"]


def test_v05_refused_downgrades_to_v04(intake: Intake, settings: Any, caplog: Any) -> None:
    intake.mode, intake.status, intake.status_paths = "status", 404, ("/v0.5/",)
    writer = settings(agent_url=intake.url, api_version="v0.5", writer_interval=5.0)
    make_traces(2)
    with caplog.at_level(logging.INFO, logger="tracer"):
        assert tracer.flush(5)
    make_traces(1)
    assert tracer.flush(5)
    assert [r["path"] for r in intake.requests] == ["/v0.4/traces", "/v0.4/traces"]
    assert len(intake.spans()) == 9
    assert intake.attempts == 3  # one refused v0.5 attempt, then v0.4 only
    assert writer.stats()["spans_sent"] == 9
    assert "sending v0.4 from now on" in caplog.text


def test_receiver_down_then_back(settings: Any, caplog: Any) -> None:
    port = free_port()
    writer = settings(agent_url=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.INFO, logger="tracer"):
        started = time.perf_counter()
        make_traces(5)
        app_time = time.perf_counter() - started
        flush_started = time.perf_counter()
        assert tracer.flush(2) is False
        assert time.perf_counter() - flush_started < 1.5
        make_traces(5)
        assert tracer.flush(2) is False
        stats = writer.stats()
        assert stats["spans_dropped_send_failed"] == 30
        assert stats["spans_sent"] == 0
        warnings = [r.getMessage() for r in caplog.records if "no trace receiver" in r.getMessage()]
        assert len(warnings) == 1, "exactly one warning for the outage"
        assert f"no trace receiver at http://127.0.0.1:{port}: " in warnings[0]
        assert "`agent-sim serve`" in warnings[0] and "TRACER_AGENT_URL" in warnings[0]
        # The receiver comes back on the same port: sending resumes.
        server = Intake(port)
        try:
            make_traces(2)
            assert tracer.flush(5)
            assert len(server.spans()) == 6
        finally:
            server.close()
    assert app_time < 0.5
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert writer.stats()["spans_sent"] == 6


def test_outage_of_many_cycles_loses_nothing_that_fits_the_buffer(settings: Any) -> None:
    """Without a flush() waiting, what finished during an outage is held (within
    TRACER_WRITER_BUFFER_BYTES) and delivered once the receiver is back."""
    port = free_port()
    writer = settings(agent_url=f"http://127.0.0.1:{port}", writer_interval=0.02)
    for _ in range(10):
        make_traces(2)
        time.sleep(0.03)  # > 10 writer cycles with nothing listening
    assert writer.stats()["spans_sent"] == 0
    server = Intake(port)
    try:
        assert tracer.flush(5)
        assert len(server.spans()) == 60
    finally:
        server.close()
    assert total_dropped(writer.stats()) == 0


def test_slow_receiver_never_blocks_the_app(intake: Intake, settings: Any) -> None:
    intake.mode, intake.delay = "slow", 1.0
    writer = settings(agent_url=intake.url, writer_timeout=0.2)
    worst = 0.0
    for _ in range(20):
        started = time.perf_counter()
        make_traces(1)
        worst = max(worst, time.perf_counter() - started)
    assert worst < 0.1
    started = time.perf_counter()
    assert tracer.flush(0.6) is False
    assert time.perf_counter() - started < 0.9
    deadline = time.monotonic() + 3
    while writer.stats()["spans_dropped_send_failed"] < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.stats()["spans_dropped_send_failed"] == 60
    started = time.perf_counter()
    tracer._reset_writer()  # stop() is bounded even with a request in flight
    assert time.perf_counter() - started < 1.5


def test_full_queue_drops_without_waiting_when_the_receiver_answers_slowly(intake: Intake, settings: Any) -> None:
    """A full queue makes app threads wait only while the receiver is healthy
    (tests/tracer/test_writer_keeps_up.py); one that answers 200, but only
    after more than _HEALTHY_SEND, gets drops, as when it is down."""
    intake.mode, intake.delay = "slow", 1.5
    writer = settings(agent_url=intake.url, writer_timeout=5.0, writer_buffer_bytes=40_000)
    make_traces(1)
    assert tracer.flush(5)  # answered 2xx, slowly
    started = time.perf_counter()
    make_traces(3000, spans=2)  # the queue holds ~200 spans; the writer is busy for 1.5 s per request
    elapsed = time.perf_counter() - started
    assert writer.stats()["spans_dropped_queue_full"] > 0
    assert elapsed < 1.0  # no wait for room (one would last until the request in flight ends)


@pytest.mark.parametrize(("status", "reason"), [(500, "send_failed"), (400, "send_failed"), (413, "too_big")])
def test_error_statuses_are_dropped_and_counted(intake: Intake, settings: Any, status: int, reason: str) -> None:
    intake.mode, intake.status = "status", status
    writer = settings(agent_url=intake.url, writer_interval=5.0)
    make_traces(4)
    assert tracer.flush(5) is False
    stats = writer.stats()
    assert stats["spans_dropped_" + reason] == 12
    assert total_dropped(stats) == 12
    assert intake.attempts == 1  # HTTP errors are not retried
    intake.mode = "ok"
    make_traces(1)
    assert tracer.flush(5)
    assert writer.stats()["spans_sent"] == 3


def test_connection_dropped_mid_request(intake: Intake, settings: Any) -> None:
    intake.mode = "drop"
    writer = settings(agent_url=intake.url, writer_interval=5.0)
    make_traces(2)
    assert tracer.flush(5) is False
    assert writer.stats()["spans_dropped_send_failed"] == 6
    assert intake.attempts == 3  # bounded retries: one attempt + 2 retries
    intake.mode = "ok"
    make_traces(2)
    assert tracer.flush(5)
    assert writer.stats()["spans_sent"] == 6
    assert len(intake.spans()) == 6


def test_memory_bounded_while_receiver_down(settings: Any) -> None:
    # 40 kB of buffer: a few hundred queued spans; the writer wakes once per interval only.
    writer = settings(agent_url=f"http://127.0.0.1:{free_port()}", writer_buffer_bytes=40_000, writer_interval=5.0)
    bound = writer._max_pending_spans
    assert 0 < bound <= 400
    make_traces(1)
    assert tracer.flush(2) is False  # the writer now knows the receiver is down
    started = time.perf_counter()
    make_traces(3000, spans=2)
    elapsed = time.perf_counter() - started
    stats = writer.stats()
    assert stats["spans_pending"] <= bound
    assert stats["spans_dropped_queue_full"] >= 6000 - bound
    assert writer._backlog_bytes <= 40_000
    assert elapsed < 5
    tracer._reset_writer()
    stats = writer.stats()
    assert stats["spans_pending"] == 0
    assert total_dropped(stats) + stats["spans_sent"] == 3 + 6000  # every span accounted for


def test_payloads_split_below_the_limit_and_huge_trace_dropped(intake: Intake, settings: Any) -> None:
    writer = settings(agent_url=intake.url, writer_buffer_bytes=60_000, writer_interval=5.0)
    for i in range(40):
        with tracer.trace("big", service="svc") as span:
            span.set_tag("blob", "x" * 3000 + str(i))
    with tracer.trace("huge", service="svc"):
        for _ in range(4):
            with tracer.trace("part") as part:
                part.set_tag("blob", "y" * 20000)
    assert tracer.flush(5) is False  # the huge one was dropped
    sizes = [r["size"] for r in intake.requests]
    assert len(sizes) >= 2 and max(sizes) <= 60_000
    assert sorted(s["meta"]["blob"][-2:].lstrip("x") for s in intake.spans()) == sorted(str(i) for i in range(40))
    stats = writer.stats()
    assert stats["spans_dropped_too_big"] == 5 and stats["spans_sent"] == 40


def test_unencodable_values_are_coerced_not_lost(intake: Intake, settings: Any) -> None:
    settings(agent_url=intake.url)
    with tracer.trace("odd", service="svc") as span:
        span.meta["obj"] = object()  # type: ignore[assignment]
        span.meta["surrogate"] = "a\ud800b"
        span.metrics["huge"] = 1 << 70
    assert tracer.flush(5)
    (sent,) = intake.spans()
    assert sent["meta"]["obj"].startswith("<object object")
    assert sent["meta"]["surrogate"] == "a?b"
    assert sent["metrics"]["huge"] == float(1 << 70)


def test_write_after_stop_is_counted_and_flush_without_thread(settings: Any) -> None:
    writer = settings(agent_url=f"http://127.0.0.1:{free_port()}")
    assert writer.flush(0.1) is True  # nothing written, no thread
    writer.stop(0.1)
    make_traces(1)
    assert writer._thread is None
    assert writer.stats()["spans_dropped_stopped"] == 3


def test_thread_starts_lazily_and_drops_are_logged_once_a_minute(intake: Intake, settings: Any, caplog: Any) -> None:
    intake.mode, intake.status = "status", 500
    writer = settings(agent_url=intake.url, writer_interval=5.0)
    assert writer._thread is None  # no thread until the first chunk
    with caplog.at_level(logging.WARNING, logger="tracer"):
        for _ in range(3):
            make_traces(1)
            assert tracer.flush(5) is False
    assert writer._thread is not None and writer._thread.daemon and writer._thread.is_alive()
    assert writer.stats()["spans_dropped_send_failed"] == 9
    drop_logs = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drop_logs == ["tracer: dropped 3 span(s) so far (send_failed 3); see tracer.stats()"]
    status_logs = [r.getMessage() for r in caplog.records if "answered HTTP 500" in r.getMessage()]
    assert len(status_logs) == 1


def test_exit_sends_what_finished_and_is_bounded(intake: Intake) -> None:
    from tests.utils import run_python

    script = (
        "from tracer import tracer\n"
        "for i in range(3):\n"
        "    with tracer.trace('at.exit', service='exiting'):\n"
        "        pass\n"
    )
    started = time.perf_counter()
    run_python(script, env={"TRACER_AGENT_URL": intake.url, "TRACER_WRITER_INTERVAL": "60"})
    assert sorted(s["name"] for s in intake.spans()) == ["at.exit"] * 3  # sent by the atexit hook
    # And with nothing listening, exit still happens promptly (stop() is bounded).
    run_python(script, env={"TRACER_AGENT_URL": f"http://127.0.0.1:{free_port()}", "TRACER_WRITER_INTERVAL": "60"})
    assert time.perf_counter() - started < 10


@pytest.mark.internal_errors
def test_a_chunk_failing_in_a_batch_is_counted_and_the_rest_sent(intake: Intake, settings: Any) -> None:
    """One cycle processes the whole queue in one loop: a trace whose
    processing raises is dropped and counted (``encode_failed``), the
    traces before and after it in the same batch are sent."""
    from tracer import _errors

    writer = settings(agent_url=intake.url, writer_interval=5.0)
    with tracer.trace("first", service="svc"):
        pass
    with tracer.trace("broken", service="svc") as broken, tracer.trace("broken.child"):
        broken._trace.dd_tags = 5  # not a dict: the writer's processing raises
    with tracer.trace("last", service="svc"):
        pass
    assert tracer.flush(5) is False
    assert sorted(s["name"] for s in intake.spans()) == ["first", "last"]
    assert len(intake.requests) == 1, "one batch, one payload"
    stats = writer.stats()
    assert stats["spans_dropped_encode_failed"] == 2 and stats["spans_sent"] == 2
    assert [where for where, _ in _errors.swallowed] == ["writer.process"]


def test_a_chunk_the_c_encoder_refuses_is_tagged_in_python_and_sent(intake: Intake, settings: Any) -> None:
    """With the C encoder the trace-level tags are written by it, the span
    dicts left as they are; a chunk it refuses (here a mechanism that is not
    an int) is tagged by the processor in Python and sent in the same payload,
    with the tags the processor gives it."""
    from tracer import encoding

    writer = settings(agent_url=intake.url, writer_interval=5.0)
    with tracer.trace("first", service="svc") as first:
        pass
    with tracer.trace("odd", service="svc") as odd:
        odd._trace.priority = 2
        odd._trace.mechanism = "x"
    with tracer.trace("last", service="svc"):
        pass
    assert tracer.flush(5) is True
    assert len(intake.requests) == 1, "one batch, one payload"
    assert writer.stats()["spans_sent"] == 3
    by_name = {s["name"]: s for s in intake.spans()}
    assert by_name["odd"]["meta"]["_dd.p.dm"] == "-x" and by_name["odd"]["metrics"]["_sampling_priority_v1"] == 2
    for span in by_name.values():
        assert span["meta"]["language"] == "python" and span["metrics"]["process_id"] == os.getpid()
    tagged_in_dicts = [s.name for s in (first, odd) if "language" in s.meta]
    assert tagged_in_dicts == (["first", "odd"] if encoding._cencode is None else ["odd"])
