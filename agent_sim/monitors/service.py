"""``MonitorService``: the engine of a running receiver, its evaluation thread and file watcher.

The thread evaluates every ``interval`` seconds (60, Datadog's cadence) and
checks the definitions file every second. Tests drive evaluations through
``POST /api/monitors/evaluate`` instead of waiting for it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from agent_sim.monitors.engine import Engine
from agent_sim.monitors.files import FileWatcher
from agent_sim.monitors.notify import Notifier
from agent_sim.monitors.persist import MonitorStore
from agent_sim.monitors.source import MetricSource

EVAL_INTERVAL_S = 60.0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class MonitorService:
    def __init__(self, aggregator: Any, receiver: Any, path: str | None = None,
                 interval: float = EVAL_INTERVAL_S) -> None:
        persist = MonitorStore(receiver.store) if receiver is not None else None
        self.engine = Engine(MetricSource(aggregator), Notifier(log=_log), persist=persist)
        self.watcher = FileWatcher(path, self.engine, _log) if path else None
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Restore the saved monitors, load the file, then evaluate on a thread. ``ReceiverServer``
        calls this before it serves (a first request sees them) and, under ``serve``, after the
        signal handlers are set (a SIGTERM during the load still stops cleanly)."""
        if self._thread is None:
            self.engine.restore()
            if self.watcher is not None:
                self.watcher.check()
            self._thread = threading.Thread(target=self._run, name="agent_sim-monitors", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        waited = 0.0
        while not self._stop.wait(1.0):
            waited += 1.0
            try:
                if self.watcher is not None:
                    self.watcher.check()
                if waited >= self.interval:
                    waited = 0.0
                    self.engine.evaluate()
            except Exception as exc:  # keep evaluating on the next tick
                _log(f"agent-sim monitors: evaluation failed: {exc!r}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.engine.notifier.stop()
