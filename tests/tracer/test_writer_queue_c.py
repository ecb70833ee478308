"""The writer's queue in C (tracer/_cspan_queue.c, docs/performance.md,
Flask, "The hand-over to the writer in C"): a finished trace's hand-over
in C pushes its chunk into the stock writer's WriterQueue without calling
Tracer.write; everything else still goes through write(). Counts stay
exact with app threads racing the C pushes, the Python fallback (full
queue, the wait for room, drops) and the writer thread; a writer swapped in
(as tests and benchmarks do), a writer class with its own write, a
disabled tracer, a stopped writer and a forked child are not bypassed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SpanSink
from tests.tracer.test_fork import CountingIntake, _Handler
from tests.utils import run_python
from tracer import tracer
from tracer import writer as writer_module
from tracer.config import config
from tracer.span import _cspan

pytestmark = pytest.mark.skipif(_cspan is None, reason="tracer._cspan is not built or TRACER_PURE_PYTHON is set")

_SETTINGS = ("agent_url", "writer_interval", "writer_buffer_bytes")
THREADS = 4
PER_THREAD = 150  # half lone roots (1 span), half a root and 4 children (5 spans)
PRODUCED = THREADS * (PER_THREAD // 2) * 6


class _SlowHandler(_Handler):
    def do_PUT(self) -> None:
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        super().do_PUT()


@pytest.fixture
def intake() -> Iterator[CountingIntake]:
    server = CountingIntake()
    server.RequestHandlerClass = _SlowHandler
    server.delay = 0.0  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_writer(intake: CountingIntake) -> Iterator[Any]:
    """The global tracer's stock writer sending to ``intake``, its queue 100
    spans (a wake at 50), its thread started and the C hand-over on."""
    saved = {name: getattr(config, name) for name in _SETTINGS}
    config.agent_url = f"http://127.0.0.1:{intake.server_address[1]}"
    config.writer_interval = 0.05
    config.writer_buffer_bytes = 20_000
    tracer._reset_writer()
    try:
        with tracer.trace("warm", service="warm"):
            pass  # through write(): it starts the thread
        writer = tracer.writer
        assert type(writer) is writer_module.QueuedAgentWriter and tracer._cqueue is writer._queue
        assert writer._max_pending_spans == 100 and writer._batch_spans == 50
        assert tracer.flush(10)
        yield writer
    finally:
        tracer._reset_writer()
        for name, value in saved.items():
            setattr(config, name, value)


def _traces(n: int, service: str, seen: list[int] | None = None, writer: Any = None) -> None:
    for i in range(n):
        if i % 2:
            with tracer.trace("lone", service=service):
                pass
        else:
            with tracer.trace("root", service=service):
                for _ in range(4):
                    with tracer.trace("child"):
                        pass
        if seen is not None:
            seen.append(writer._pending_spans)


@pytest.mark.parametrize("slow", [False, True])
def test_counts_exact_with_four_threads_and_a_small_queue(
    small_writer: Any, intake: CountingIntake, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    # Healthy: app threads wait for room, nothing is dropped. Slow (every
    # answer later than _HEALTHY_SEND): a full queue drops, counted.
    monkeypatch.setattr(writer_module, "_HEALTHY_SEND", 0.001 if slow else 5.0)
    monkeypatch.setattr(writer_module, "_ROOM_WAIT", 5.0)
    intake.delay = 0.01 if slow else 0.0  # type: ignore[attr-defined]
    writer = small_writer
    start = writer.stats()
    start_seq, start_traces = writer._seq, sum(intake.trace_counts)
    seen: list[int] = []
    workers = [threading.Thread(target=_traces, args=(PER_THREAD, "queue-c", seen, writer)) for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert tracer.flush(30)
    stats = {k: v - start.get(k, 0) for k, v in writer.stats().items()}
    dropped = stats.pop("spans_dropped_queue_full")
    assert {k: v for k, v in stats.items() if k.startswith("spans_dropped_") and v} == {}
    assert stats["spans_sent"] + dropped == PRODUCED
    assert (dropped > 0) == slow
    with intake.lock:
        spans = [s for s in intake.spans if s["service"] == "queue-c"]
        traces = sum(intake.trace_counts) - start_traces
    assert len(spans) == stats["spans_sent"] and len({s["span_id"] for s in spans}) == len(spans)
    # Every chunk accepted (seq) was sent, once; none is still queued.
    assert writer._seq - start_seq == traces == stats["traces_sent"]
    assert stats["spans_pending"] == 0
    assert max(seen) <= writer._max_pending_spans


def test_a_writer_swapped_in_receives_every_trace(small_writer: Any) -> None:
    sink = SpanSink()
    seq = small_writer._seq
    tracer._writer = sink
    try:
        assert tracer._cqueue is None
        _traces(20, "swapped")
    finally:
        tracer._writer = small_writer
    assert len(sink.raw) == 20 and len(sink.spans) == 60
    assert small_writer._seq == seq and tracer._cqueue is small_writer._queue


def test_a_writer_class_with_its_own_write_is_called(small_writer: Any) -> None:
    class Counting(writer_module.QueuedAgentWriter):
        def write(self, trace: Any, chunk: list[Any]) -> None:
            self.calls = getattr(self, "calls", 0) + 1
            super().write(trace, chunk)

    own = Counting(config, tracer)
    tracer._writer = own
    try:
        assert tracer._cqueue is None
        _traces(20, "own-write")
        assert tracer.flush(10)
    finally:
        tracer._writer = small_writer
        own.stop(1.0)
    assert own.calls == 20 and own._seq == 20 and own.stats()["spans_sent"] == 60


def test_a_disabled_tracer_queues_nothing(small_writer: Any) -> None:
    seq = small_writer._seq
    tracer.enabled = False
    try:
        _traces(20, "disabled")
    finally:
        tracer.enabled = True
    assert small_writer._seq == seq and small_writer._pending_spans == 0


def test_a_stopped_writer_counts_every_span_dropped(small_writer: Any) -> None:
    small_writer.stop(5.0)
    seq = small_writer._seq
    _traces(20, "stopped")
    assert small_writer._seq == seq and small_writer.stats()["spans_dropped_stopped"] == 60


def test_a_keyboard_interrupt_from_the_wake_up_propagates_and_the_trace_is_queued_once(small_writer: Any) -> None:
    # A signal handler raising in Event.set() (the wake-up the C hand-over
    # calls): the app sees it, as through AgentWriter.write; the chunk it
    # came with stays queued once (no second push through write()).
    queue = small_writer._queue
    calls: list[int] = []

    def wake() -> None:
        calls.append(1)
        raise KeyboardInterrupt("from a signal handler")

    queue.wake = wake
    seq, raised = small_writer._seq, 0
    try:
        for _ in range(30):  # 60 spans: one wake-up at the batch (50)
            try:
                with tracer.trace("root", service="interrupted"), tracer.trace("child"):
                    pass
            except KeyboardInterrupt:
                raised += 1
    finally:
        queue.wake = small_writer._wake.set
    assert calls == [1] and raised == 1
    assert small_writer._seq - seq == 30 and small_writer._pending_spans == 60
    assert tracer.flush(10) and small_writer.stats()["spans_dropped_queue_full"] == 0


def test_room_taken_by_a_c_push_while_waiting_is_waited_for_again(
    small_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # write() waits for room with the lock held, but the C hand-over pushes
    # without it: another thread's push may take the room first (a thread
    # switch after the wait). A healthy receiver still drops nothing.
    monkeypatch.setattr(writer_module, "_HEALTHY_SEND", 5.0)
    monkeypatch.setattr(writer_module, "_ROOM_WAIT", 5.0)
    waits = small_writer._wait_for_room
    raced: list[int] = []

    def racing(n: int, limit: int, timeout: float = 5.0) -> bool:
        room = waits(n, limit, timeout)
        if room and not raced:
            raced.append(1)
            other = threading.Thread(target=_big, args=(60,))
            other.start()
            other.join()
        return room

    monkeypatch.setattr(small_writer, "_wait_for_room", racing)
    before = small_writer.stats()
    _big(60)  # pushed in C
    _big(60)  # full: write() waits, the other thread's 60 take the room, it waits again
    assert raced == [1] and tracer.flush(10)
    stats = {k: v - before.get(k, 0) for k, v in small_writer.stats().items()}
    assert stats["spans_dropped_queue_full"] == 0 and stats["spans_sent"] == 180


def _big(n: int) -> None:
    with tracer.trace("root", service="raced"):
        for _ in range(n - 1):
            with tracer.trace("child"):
                pass


FORK = r"""
import os
from tracer import tracer
from tracer.config import config

config.agent_url = os.environ["INTAKE_URL"]
config.writer_interval = 0.05

def traces(service, n):
    for i in range(n):
        with tracer.trace("root", service=service):
            if i % 2:
                with tracer.trace("child"):
                    pass

traces("parent", 10)
assert tracer._cqueue is tracer.writer._queue and tracer.flush(5)  # the C hand-over on at fork time
traces("parent", 10)                                                # queued, not sent yet
pid = os.fork()
if pid == 0:
    code = 1
    try:
        traces("child", 20)
        writer = tracer.writer
        ok = tracer.flush(5) and tracer._cqueue is writer._queue and writer._seq == 20
        code = 0 if ok and writer.stats()["spans_sent"] == 30 else 3
    finally:
        os._exit(code)
traces("parent", 10)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert tracer.flush(5) and tracer.writer._seq == 30 and tracer.writer.stats()["spans_sent"] == 45
"""


def test_fork_child_queues_to_its_own_writer(intake: CountingIntake) -> None:
    run_python(FORK, env={"INTAKE_URL": f"http://127.0.0.1:{intake.server_address[1]}"})
    by_service: dict[str, int] = {}
    for span in intake.spans:
        by_service[span["service"]] = by_service.get(span["service"], 0) + 1
    assert by_service == {"parent": 45, "child": 30}
    assert len({s["span_id"] for s in intake.spans}) == 75
