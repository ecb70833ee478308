"""STUB (to be replaced by the full writer): sends synchronously from a thread.

Contract:
    AgentWriter(config, tracer)
    .write(chunk: list[Span]) -> None      # app threads; never blocks, never raises
    .flush(timeout: float) -> bool
    .stop(timeout: float) -> None
    .stats() -> dict[str, int]
    .after_fork_in_child() -> None
"""

from __future__ import annotations

import http.client
import queue
import threading
import urllib.parse
from typing import Any

from tracer.encoding import encode_v04
from tracer.processor import process_chunk


class AgentWriter:
    def __init__(self, config: Any, tracer: Any) -> None:
        self.config = config
        self.tracer = tracer
        self.queue: queue.Queue = queue.Queue(maxsize=10000)
        self.thread: threading.Thread | None = None

    def write(self, chunk: list) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True, name="tracer-writer")
            self.thread.start()
        try:
            self.queue.put_nowait(chunk)
        except queue.Full:
            pass

    def _send(self, chunks: list) -> None:
        chunks = [c for c in chunks if process_chunk(c, self.tracer.sampler)]
        if not chunks:
            return
        body = encode_v04(chunks)
        u = urllib.parse.urlsplit(self.config.agent_url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=self.config.writer_timeout)
        try:
            conn.request("PUT", "/v0.4/traces", body, {"Content-Type": "application/msgpack", "X-Datadog-Trace-Count": str(len(chunks))})
            conn.getresponse().read()
        except OSError:
            pass
        finally:
            conn.close()

    def _run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                self.queue.task_done()
                return
            chunks = [chunk]
            while True:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.task_done()
                    break
                chunks.append(nxt)
            self._send(chunks)
            for _ in chunks:
                self.queue.task_done()

    def flush(self, timeout: float) -> bool:
        self.queue.join()
        return True

    def stop(self, timeout: float) -> None:
        self.flush(timeout)

    def stats(self) -> dict[str, int]:
        return {}
