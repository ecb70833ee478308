"""Delivering notifications: to the log, and by webhook on a background thread.

``Notifier.send`` is called by the evaluation with the engine's lock held: it
only logs one line and queues (``put_nowait``; a full queue counts a drop),
so a slow or dead webhook never delays an evaluation. The delivery thread
POSTs JSON with a timeout and retries (connection errors, 429 and 5xx) with
a doubling backoff, and writes the outcome into the event's ``deliveries``.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from agent_sim.monitors.state import Event

QUEUE_SIZE = 1000


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def payload(ev: Event) -> dict[str, Any]:
    """The webhook body: Datadog's default webhook fields, plus the monitor's details."""
    return {"id": str(ev.id), "title": ev.title, "body": ev.body, "event_type": "metric_alert_monitor",
            "alert_transition": ev.transition, "date": int(ev.time * 1000), "last_updated": int(ev.time * 1000),
            "monitor_id": ev.monitor_id, "monitor_name": ev.monitor_name, "group": ev.group, "tags": ev.tags,
            "state": ev.state, "previous_state": ev.previous, "value": ev.value, "kind": ev.kind}


class Notifier:
    def __init__(self, log: Callable[[str], None] = _stderr, timeout: float = 5.0, attempts: int = 3,
                 backoff: float = 0.5) -> None:
        self.log = log
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.dropped = 0
        self._queue: queue.Queue[tuple[Event, str, str] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, ev: Event, webhooks: dict[str, str]) -> None:
        value = "" if ev.value is None else f" (value {ev.value:.6g})"
        self.log(f"agent-sim monitor: {ev.title}{value}")
        for name, url in webhooks.items():
            ev.deliveries[name] = "queued"
            try:
                self._queue.put_nowait((ev, name, url))
            except queue.Full:
                self.dropped += 1
                ev.deliveries[name] = "dropped: queue full"
        if webhooks:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agent_sim-webhooks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            ev, name, url = item
            try:
                ev.deliveries[name] = self._deliver(url, json.dumps(payload(ev)).encode())
            except Exception as exc:  # a bug here must not end deliveries
                ev.deliveries[name] = f"failed: {exc!r}"
            if not ev.deliveries[name].startswith("HTTP 2"):
                self.log(f"agent-sim monitor: webhook {name} ({url}) for event {ev.id}: {ev.deliveries[name]}")

    def _deliver(self, url: str, body: bytes) -> str:
        outcome = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (a URL the user configured)
                    resp.read()
                    return f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                outcome = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    return outcome
            except (OSError, ValueError) as exc:
                outcome = f"failed: {exc}"
        return f"{outcome} after {self.attempts} attempts"

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            thread.join(timeout)
