"""The agent writer: hands finished trace chunks to the receiver over HTTP.

App threads call :meth:`AgentWriter.write` (O(1), never blocks on I/O, never
raises): the chunk joins a bounded pending list (bounded in spans). When that
list is full while the receiver is healthy (its last request was answered
2xx within ``_HEALTHY_SEND`` seconds), the app thread waits for room, at most
``_ROOM_WAIT`` seconds and once per writer cycle: a thread producing spans
faster than the receiver takes them is slowed to the receiver's pace instead
of losing spans. Otherwise (the receiver down, slow or erroring, or the wait
ran out) the chunk is dropped and counted. One daemon thread, started on the first write, wakes every
``TRACER_WRITER_INTERVAL`` seconds or when a batch fills, runs
``tracer.processor.process_chunks`` on the batch, encodes them (v0.4 or v0.5)
into payloads below the receiver's 25 MiB limit, and PUTs them on one
keep-alive ``http.client`` connection (stdlib on purpose: the writer's own
traffic must never be traced by the ``requests`` integration).

While the receiver is slow or down, encoded payloads wait in a backlog until
it answers again, bounded by ``TRACER_WRITER_BUFFER_BYTES``: beyond that the
oldest are dropped and counted. While the receiver is known to be down the
thread only wakes once per interval, so the application pays for nothing but
O(1) drops. Every dropped span is counted by reason (:meth:`stats`), and drops
are logged at most once a minute.

Where ``tracer._cspan`` is built the writer is :class:`QueuedAgentWriter`:
its queue is a ``_cspan.WriterQueue`` and a trace finished in C is queued by
the C hand-over itself, without calling ``write`` (tracer/_cspan_queue.c);
``write`` handles the rest with the same counts.
"""

from __future__ import annotations

import http.client
import json
import logging
import platform
import random
import threading
import time
import urllib.parse
from collections import deque
from typing import Any

from tracer import encoding
from tracer._errors import internal_error
from tracer.encoding import PAYLOADS, TraceTooBig, v05_to_v04
from tracer.processor import process_chunks, settle
from tracer.span import RECORD_LEN, _cspan
from tracer.version import __version__

log = logging.getLogger("tracer")

#: The receiver refuses bodies above 25 MiB (413); stay clearly below.
MAX_PAYLOAD_BYTES = 25 * 1024 * 1024 - 512 * 1024
#: Budget per queued span when sizing the pending bound from TRACER_WRITER_BUFFER_BYTES
#: (a span with a few tags is ~600 B; the default allows ~42k spans, ~25 MB, which
#: gives the writer thread ~100 ms of headroom against a fast app on a busy machine).
_SPAN_BYTES_ESTIMATE = 200
#: Wake the writer thread once this many spans wait (or at half the queue, if
#: smaller): a small batch starts the encoding and the request early, while
#: most of the queue is still free to absorb what the app produces meanwhile.
_BATCH_SPANS = 4096
#: Longest wait of an app thread for room in a full queue while the receiver
#: is healthy (see the module docstring); once per writer cycle. A cycle is
#: the encoding of a queue's worth of spans plus one request, so this allows
#: for a request close to _HEALTHY_SEND on a busy machine.
_ROOM_WAIT = 1.0
#: The receiver is healthy while its last request was answered 2xx within this.
_HEALTHY_SEND = 0.5
_RETRIES = 2  # extra attempts on connection errors, within one cycle
_LOG_EVERY = 60.0

_CONNECTION_ERRORS = (OSError, http.client.HTTPException)

_REASONS = ("queue_full", "send_failed", "too_big", "encode_failed", "stopped")


class _Payload:
    __slots__ = ("body", "version", "traces", "spans", "first_seq", "last_seq")

    def __init__(self, body: bytes, version: str, traces: int, spans: int, first_seq: int, last_seq: int) -> None:
        self.body = body
        self.version = version
        self.traces = traces
        self.spans = spans
        self.first_seq = first_seq
        self.last_seq = last_seq


class AgentWriter:
    """Sends trace chunks to ``config.agent_url``; see the module docstring.

    Settings are read from ``config`` once, at construction (``Tracer._reset_writer``
    builds a new writer after a configuration change).
    """

    def __init__(self, config: Any, tracer: Any) -> None:
        self._tracer = tracer
        self._url = config.agent_url
        split = urllib.parse.urlsplit(self._url)
        self._host = split.hostname or "127.0.0.1"
        self._port = split.port or (443 if split.scheme == "https" else 80)
        self._https = split.scheme == "https"
        self._version = config.api_version
        self._interval = float(config.writer_interval)
        self._timeout = float(config.writer_timeout)
        self._buffer_bytes = int(config.writer_buffer_bytes)
        self._payload_limit = min(MAX_PAYLOAD_BYTES, self._buffer_bytes)
        self._max_pending_spans = max(100, self._buffer_bytes // _SPAN_BYTES_ESTIMATE)
        self._batch_spans = max(50, min(_BATCH_SPANS, self._max_pending_spans // 2))
        self._headers = {
            "Datadog-Meta-Lang": "python",
            "Datadog-Meta-Lang-Version": platform.python_version(),
            "Datadog-Meta-Lang-Interpreter": platform.python_implementation(),
            "Datadog-Meta-Tracer-Version": __version__,
            "Datadog-Client-Computed-Top-Level": "yes",
            "Content-Type": "application/msgpack",
        }
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()  # guards _pending* and _seq (app threads vs writer thread)
        self._room = threading.Condition(self._lock)  # notified when the writer takes the queue
        self._healthy = True  # the last request was answered 2xx within _HEALTHY_SEND (or none was made yet)
        self._congested = False  # a wait for room ran out: drop until the writer takes the queue
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._reset_queue()
        self._done_seq = 0  # every chunk up to here is sent or dropped
        self._last_drop_seq = 0
        self._urgent = 0  # flush() callers waiting
        self._stopping = False
        self._stopped = False
        self._backlog: deque[_Payload] = deque()
        self._backlog_bytes = 0
        self._conn: http.client.HTTPConnection | None = None
        self._down = False
        self._warned_down = False
        self._last_drop_log = 0.0
        self._last_problem_log = 0.0
        self._logged_drops = 0
        self._counts = {
            "spans_sent": 0,
            "traces_sent": 0,
            "payloads_sent": 0,
            "spans_not_sent_sampling": 0,
        }
        for reason in _REASONS:
            self._counts["spans_dropped_" + reason] = 0

    # -- app threads ------------------------------------------------------------
    def write(self, trace: Any, chunk: list[Any]) -> None:
        """Queue a finished chunk (flat span records, see ``tracer.buffer``)
        of ``trace``. Called on app threads: O(1), never blocks on I/O, never
        raises. When the queue is full it waits for room while the receiver
        is healthy (bounded, see the module docstring), else the chunk is
        dropped and counted (``spans_dropped_queue_full``)."""
        try:
            if self._thread is None:
                self._start()
            n = len(chunk) // RECORD_LEN
            with self._lock:
                if self._stopped:
                    self._counts["spans_dropped_stopped"] += n
                    return
                # While the receiver is down, hold a quarter: the writer thread
                # also holds a drained batch and the encoded backlog then.
                limit = self._limit()
                if self._pending_spans + n > limit and not self._wait_for_room(n, limit):
                    self._counts["spans_dropped_queue_full"] += n
                    return
                pending = self._pending
                pending.append(trace)
                pending.append(chunk)
                self._pending_spans += n
                self._seq += 1
                wake = self._pending_spans >= self._batch_spans and not self._down
            if wake:
                self._wake.set()
        except Exception:
            internal_error("writer.write")

    def _limit(self) -> int:
        """The queue's bound now: a quarter of it while the receiver is down."""
        return self._max_pending_spans >> 2 if self._down else self._max_pending_spans

    def _wait_for_room(self, n: int, limit: int, timeout: float | None = None) -> bool:
        """Called with ``_lock`` held and the queue too full for ``n`` more
        spans: wait (bounded: ``timeout``, else ``_ROOM_WAIT`` read now) for
        the writer to take the queue when the receiver is healthy. True when
        there is room now."""
        if (
            self._down
            or not self._healthy
            or self._congested
            or self._stopped
            or n > limit
            or threading.current_thread() is self._thread
        ):
            return False
        self._wake.set()
        room = self._room.wait_for(
            lambda: self._pending_spans + n <= limit or self._stopped or self._down,
            _ROOM_WAIT if timeout is None else timeout,
        )
        if not room:
            self._congested = True
        return self._pending_spans + n <= limit and not self._stopped

    def _reset_queue(self) -> None:
        # Flat: trace, chunk, trace, chunk, ... (no tuple per chunk, so that
        # nothing a queued chunk adds is tracked by the GC while it waits:
        # the chunk and a handed-over trace are untracked; _take_pending
        # makes the pairs the writer thread's consumers read).
        self._pending: list[Any] = []
        self._pending_spans = 0
        self._seq = 0  # chunks accepted so far

    def _swap_pending(self) -> tuple[list[Any], int]:
        """With ``_lock`` held: the flat queue, emptied, and the seq before its first chunk."""
        flat, self._pending = self._pending, []
        self._pending_spans = 0
        return flat, self._seq - len(flat) // 2

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stopped:
                thread = threading.Thread(target=self._run, name="tracer-writer", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # interpreter shutting down: nothing can be sent any more
                    self._stopped = True
                    return
                self._thread = thread

    def flush(self, timeout: float) -> bool:
        """Block until every chunk written before the call is sent or dropped
        (and counted), or ``timeout`` seconds pass. True when all of it was
        delivered; False on timeout or when some of it was dropped. Chunks
        refused by ``write()`` (queue full) are counted but not part of it.
        Any thread but the writer's own."""
        if self._thread is None:
            return True
        with self._lock:
            target = self._seq
        with self._done:
            start_done = self._done_seq
            if start_done >= target:
                return True
            self._urgent += 1
        try:
            self._wake.set()
            with self._done:
                finished = self._done.wait_for(lambda: self._done_seq >= target, max(0.0, timeout))
                return finished and self._last_drop_seq <= start_done
        finally:
            with self._done:
                self._urgent -= 1

    def stop(self, timeout: float) -> None:
        """Send what is queued (bounded by ``timeout``), then end the thread.
        Whatever could not be sent is counted as dropped. Later writes are
        dropped (``spans_dropped_stopped``). Never blocks past ``timeout`` much:
        an HTTP request in flight is abandoned (the thread is a daemon)."""
        deadline = time.monotonic() + max(0.0, timeout)
        thread = self._thread
        if thread is not None:
            self.flush(timeout)
        with self._lock:
            self._stopped = True
            self._stopping = True
            self._room.notify_all()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread is None or not thread.is_alive():
            self._drop_everything()

    def stats(self) -> dict[str, int]:
        """Counters (spans unless named otherwise): sent, dropped by reason,
        not sent because sampling dropped them, and what is still queued."""
        out = dict(self._counts)
        out["spans_pending"] = self._pending_spans + sum(p.spans for p in list(self._backlog))
        return out

    def after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's thread, queue, backlog and
        connection (the parent sends those); the child starts empty."""
        self._init_state()

    # -- writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            # While the receiver is down, batches filling up do not wake us:
            # only the interval, flush() and stop() do.
            self._wake.wait(self._interval)
            self._wake.clear()
            stopping = self._stopping
            try:
                self._cycle()
            except Exception:
                internal_error("writer.cycle")
            if stopping:
                self._drop_everything()
                self._close()
                return

    def _take_pending(self) -> tuple[list[tuple[Any, list[Any]]], int]:
        """The queue as ``(trace, chunk)`` pairs, and the seq before the first."""
        with self._lock:
            flat, seq = self._swap_pending()
            self._congested = False
            self._room.notify_all()
        cencode = encoding._cencode
        if cencode is not None:
            return cencode.pairs(flat), seq  # untracked pairs: not walked, not promoted by a young collection
        return list(zip(flat[::2], flat[1::2], strict=True)), seq

    def _cycle(self) -> None:
        chunks, seq = self._take_pending()
        payload = None
        first_seq = seq + 1
        if chunks:
            # One loop over the whole batch (no call per chunk); entries not
            # to be sent come back as None. With the C v0.4 encoder the
            # trace-level tags are written by it, not put in the span dicts.
            defer = self._version == "v0.4" and encoding._cencode is not None
            not_sent, failed = process_chunks(chunks, self._tracer.sampler, defer)
            if not_sent:
                self._counts["spans_not_sent_sampling"] += not_sent
            for index, spans, exc in failed:
                internal_error("writer.process", exc)
                self._drop(spans, "encode_failed", seq + index + 1)
        # Seq of chunks[i] is base + i + 1. The payload takes the batch in one
        # loop (put_many); a chunk that does not fit, or needs a fallback,
        # goes through put() alone.
        base = seq
        index = 0
        end = len(chunks)
        while index < end:
            if payload is None:
                payload = PAYLOADS[self._version](self._payload_limit)
                first_seq = base + index + 1
            index = payload.put_many(chunks, index)
            if index == end:
                break
            item = chunks[index]
            index += 1
            seq = base + index
            try:
                chunk = settle(item)  # its tags in its dicts: put() and its fallbacks encode those
            except Exception as exc:
                internal_error("writer.process", exc)
                self._drop(len(item[1]) // RECORD_LEN, "encode_failed", seq)
                continue
            try:
                if not payload.put(chunk):
                    self._queue_payload(payload, first_seq, seq - 1)
                    payload = PAYLOADS[self._version](self._payload_limit)
                    first_seq = seq
                    payload.put(chunk)
            except TraceTooBig:
                self._drop(len(chunk) // RECORD_LEN, "too_big", seq)
            except Exception:
                internal_error("writer.encode")
                self._drop(len(chunk) // RECORD_LEN, "encode_failed", seq)
        seq = base + end
        if payload is not None and payload.traces:
            self._queue_payload(payload, first_seq, seq)
        self._send_backlog()
        self._mark_done(seq)
        self._log_drops()

    def _queue_payload(self, payload: Any, first_seq: int, last_seq: int) -> None:
        body = payload.finish()
        item = _Payload(body, payload.version, payload.traces, payload.spans, first_seq, last_seq)
        self._backlog.append(item)
        self._backlog_bytes += len(body)
        # Bounded memory while the receiver is slow or down: the oldest go first.
        while self._backlog_bytes > self._buffer_bytes and len(self._backlog) > 1:
            self._drop_payload(self._backlog.popleft(), "send_failed")
        if not self._down:
            # Send as soon as a payload is full: a cycle may encode more than the backlog holds.
            self._send_backlog()

    def _mark_done(self, seq: int) -> None:
        done = self._backlog[0].first_seq - 1 if self._backlog else seq
        with self._done:
            if done > self._done_seq:
                self._done_seq = done
            self._done.notify_all()

    def _drop(self, spans: int, reason: str, seq: int) -> None:
        self._counts["spans_dropped_" + reason] += spans
        if seq > self._last_drop_seq:
            self._last_drop_seq = seq

    def _drop_payload(self, payload: _Payload, reason: str) -> None:
        self._backlog_bytes -= len(payload.body)
        self._drop(payload.spans, reason, payload.last_seq)

    def _drop_everything(self) -> None:
        """Count what is left (stop, or a cycle after stop) as dropped."""
        chunks, seq = self._take_pending()
        for _, chunk in chunks:
            seq += 1
            self._drop(len(chunk) // RECORD_LEN, "send_failed", seq)
        while self._backlog:
            self._drop_payload(self._backlog.popleft(), "send_failed")
        self._mark_done(seq)

    def _send_backlog(self) -> None:
        # When someone waits (flush/stop), an unreachable receiver means drop
        # now rather than hold: the caller wants an answer, not a wait.
        urgent = self._urgent > 0 or self._stopping
        while self._backlog:
            payload = self._backlog[0]
            outcome = self._send(payload, retry=not self._down)
            if outcome == "unreachable":
                # Held (bounded by TRACER_WRITER_BUFFER_BYTES, oldest dropped
                # first) until the receiver is back, unless someone waits.
                if urgent:
                    self._drop_payload(self._backlog.popleft(), "send_failed")
                    continue
                return
            self._backlog.popleft()
            self._backlog_bytes -= len(payload.body)
            if outcome == "sent":
                self._counts["spans_sent"] += payload.spans
                self._counts["traces_sent"] += payload.traces
                self._counts["payloads_sent"] += 1
            else:
                self._drop(payload.spans, outcome, payload.last_seq)

    # -- HTTP -------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _send(self, payload: _Payload, retry: bool) -> str:
        """PUT one payload. Returns "sent", "send_failed", "too_big" or
        "unreachable" (connection errors, after bounded retries)."""
        attempt = 0
        while True:
            if payload.version == "v0.5" and self._version == "v0.4":
                payload.body = v05_to_v04(payload.body)
                payload.version = "v0.4"
            headers = dict(self._headers)
            headers["X-Datadog-Trace-Count"] = str(payload.traces)
            headers["Content-Length"] = str(len(payload.body))
            started = time.monotonic()
            try:
                conn = self._connection()
                conn.request("PUT", f"/{payload.version}/traces", payload.body, headers)
                response = conn.getresponse()
                status = response.status
                reply = response.read()
            except TimeoutError:
                # The receiver is there but slow: do not resend what it may have taken.
                self._healthy = False
                self._close()
                self._log_once_a_minute(f"{self._url} did not answer within {self._timeout}s (TRACER_WRITER_TIMEOUT)")
                return "send_failed"
            except _CONNECTION_ERRORS as exc:
                self._close()
                attempt += 1
                if retry and attempt <= _RETRIES and not self._stopping:
                    # The first retry is immediate (a kept-alive connection the
                    # receiver closed); later ones back off with jitter.
                    if attempt > 1:
                        self._backoff(attempt)
                    continue
                self._note_unreachable(exc)
                return "unreachable"
            self._note_reachable()
            ok = 200 <= status < 300
            self._healthy = ok and time.monotonic() - started < _HEALTHY_SEND
            if ok:
                self._read_rates(reply)
                return "sent"
            if status in (404, 415) and payload.version == "v0.5":
                log.info("tracer: %s refused v0.5 (HTTP %d); sending v0.4 from now on", self._url, status)
                self._version = "v0.4"
                continue
            if status == 413:
                return "too_big"
            self._log_once_a_minute(f"{self._url} answered HTTP {status}: {reply[:200].decode('utf-8', 'replace')}")
            return "send_failed"

    def _backoff(self, attempt: int) -> None:
        if not self._stopping:
            time.sleep(min(self._timeout, 0.05 * (2 ** (attempt - 2))) * random.uniform(0.5, 1.5))

    def _read_rates(self, reply: bytes) -> None:
        if not reply:
            return
        try:
            rates = json.loads(reply).get("rate_by_service")
        except (ValueError, AttributeError, UnicodeDecodeError):
            return
        if isinstance(rates, dict):
            self._tracer.sampler.update_rates(rates)

    # -- logging ------------------------------------------------------------------
    def _note_unreachable(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        with self._lock:
            self._room.notify_all()  # app threads waiting for room: drop now
        if not self._warned_down:
            # One clear warning per writer; later outages only show in the drop counts.
            self._warned_down = True
            log.warning(
                "tracer: no trace receiver at %s: %s. Start one with `agent-sim serve`, or set TRACER_AGENT_URL",
                self._url,
                str(exc) or type(exc).__name__,
            )

    def _note_reachable(self) -> None:
        if self._down:
            self._down = False
            log.info("tracer: trace receiver at %s is reachable again; sending traces", self._url)

    def _log_once_a_minute(self, message: str) -> None:
        now = time.monotonic()
        if not self._last_problem_log or now - self._last_problem_log >= _LOG_EVERY:
            self._last_problem_log = now
            log.warning("tracer: %s", message)

    def _log_drops(self) -> None:
        dropped = sum(self._counts["spans_dropped_" + reason] for reason in _REASONS)
        if dropped == self._logged_drops:
            return
        now = time.monotonic()
        if self._last_drop_log and now - self._last_drop_log < _LOG_EVERY:
            return
        self._last_drop_log = now
        self._logged_drops = dropped
        detail = ", ".join(
            f"{reason} {self._counts['spans_dropped_' + reason]}"
            for reason in _REASONS
            if self._counts["spans_dropped_" + reason]
        )
        log.warning("tracer: dropped %d span(s) so far (%s); see tracer.stats()", dropped, detail)


def _on_queue(name: str) -> Any:
    """A field of QueuedAgentWriter kept in its WriterQueue (read-only
    where the queue's is)."""

    def get(self: QueuedAgentWriter) -> Any:
        return getattr(self._queue, name)

    def put(self: QueuedAgentWriter, value: Any) -> None:
        setattr(self._queue, name, value)

    return property(get, put)


class QueuedAgentWriter(AgentWriter):
    """The writer of the C build: its pending queue, counts and the state a
    push depends on (``_pending``, ``_pending_spans``, ``_seq``, the limit
    and batch, ``_down``, ``_stopped``, whether the thread runs) are a
    ``tracer._cspan.WriterQueue``, to which a trace's hand-over in C pushes
    its chunk without a Python frame or the lock (tracer/_cspan_queue.c),
    each push and take one C call. :meth:`write` is the rest: the first
    chunk (which starts the thread), a full queue (the wait for room, the
    drop), a stopped writer, and the chunks handed over in Python. Counts,
    the bound and ``seq`` are the same as AgentWriter's."""

    _pending = _on_queue("items")
    _pending_spans = _on_queue("spans")
    _seq = _on_queue("seq")
    _max_pending_spans = _on_queue("limit")
    _batch_spans = _on_queue("batch")
    _down = _on_queue("down")
    _stopped = _on_queue("stopped")

    def __init__(self, config: Any, tracer: Any) -> None:
        self._queue = _cspan.WriterQueue(0, 0)
        self._thread_: threading.Thread | None = None
        super().__init__(config, tracer)

    @property  # type: ignore[override]
    def _thread(self) -> threading.Thread | None:
        return self._thread_

    @_thread.setter
    def _thread(self, thread: threading.Thread | None) -> None:
        self._thread_ = thread
        self._queue.started = thread is not None

    def _reset_queue(self) -> None:
        self._queue.reset()
        self._queue.wake = self._wake.set

    def _swap_pending(self) -> tuple[list[Any], int]:
        return self._queue.take()  # type: ignore[no-any-return]

    def write(self, trace: Any, chunk: list[Any]) -> None:
        try:
            if self._thread is None:
                self._start()
            n = len(chunk) // RECORD_LEN
            queue = self._queue
            with self._lock:
                if queue.stopped:
                    self._counts["spans_dropped_stopped"] += n
                    return
                wake = queue.push(trace, chunk)
                if wake is None:
                    # The hand-over in C pushes without _lock: room seen by
                    # _wait_for_room may be taken before this thread pushes,
                    # so wait again (within one _ROOM_WAIT in all).
                    end = time.monotonic() + _ROOM_WAIT
                    while wake is None:
                        left = end - time.monotonic()
                        if left <= 0 or not self._wait_for_room(n, self._limit(), left):
                            break
                        wake = queue.push(trace, chunk)
                if wake is None:
                    self._counts["spans_dropped_queue_full"] += n
                    return
            if wake:
                self._wake.set()
        except Exception:
            internal_error("writer.write")

    #: Tracer hands chunks to the queue in C only while type(writer).write is this.
    _write_in_c = write


def new_writer(config: Any, tracer: Any) -> AgentWriter:
    """The stock writer: QueuedAgentWriter where tracer._cspan is built."""
    return AgentWriter(config, tracer) if _cspan is None else QueuedAgentWriter(config, tracer)
