"""Flush on SIGTERM (what Docker, systemd and Kubernetes send to stop an app).

Python's default action for SIGTERM kills the process without running
``atexit``, so the tracer's exit flush never runs and the last traces are
lost. ``install()`` (called by ``patch_all()``, hence by ``tracer-run``) sets a
handler that sends what is finished, bounded by ``FLUSH_TIMEOUT`` seconds,
then:

* when SIGTERM had its default action: restores it and re-sends SIGTERM to
  the process, so the parent still sees death by signal 15;
* when the app had installed a Python handler before us: calls it.

A handler the app installs after ours replaces it (the app's wins); the
``atexit`` flush then covers the app's normal exit. SIGTERM ignored
(``SIG_IGN``) or handled outside Python is left alone. Installs only from
the main thread; never raises.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger("tracer")

FLUSH_TIMEOUT = 4.0


class _Handler:
    """The installed handler; ``previous`` is the app's callable, or None for SIG_DFL."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        log.debug("tracer: SIGTERM: sending what is finished (at most %ss)", FLUSH_TIMEOUT)
        _flush_bounded()
        previous = self.previous
        if previous is not None:
            return previous(signum, frame)
        try:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        except Exception:  # pragma: no cover - kill of oneself does not fail on POSIX
            log.debug("tracer: could not re-send signal %d", signum, exc_info=True)
        return None


def _flush_bounded() -> None:
    # In a helper thread: the main thread may have been interrupted while
    # holding a lock the flush needs; then we give up after the bound.
    done: list[bool] = []

    def run() -> None:
        try:
            from tracer import tracer

            deadline = time.monotonic() + FLUSH_TIMEOUT
            # Twice: the second sends chunks other threads finished during the first.
            tracer.flush(FLUSH_TIMEOUT)
            done.append(tracer.flush(max(0.0, deadline - time.monotonic())))
        except Exception:
            pass

    try:
        thread = threading.Thread(target=run, name="tracer-sigterm-flush", daemon=True)
        thread.start()
        thread.join(FLUSH_TIMEOUT + 0.5)
        if done != [True]:
            log.warning("tracer: SIGTERM: not everything finished was sent within %ss", FLUSH_TIMEOUT)
    except Exception:
        pass


def install() -> bool:
    """Install the SIGTERM flush handler; True when it is (now or already) in place."""
    try:
        sigterm = getattr(signal, "SIGTERM", None)
        if sigterm is None or threading.current_thread() is not threading.main_thread():
            return False
        current = signal.getsignal(sigterm)
        if isinstance(current, _Handler):
            return True
        if current is signal.SIG_DFL:
            previous = None
        elif callable(current):
            previous = current
        else:  # SIG_IGN, or a handler set outside Python: the app's choice
            return False
        signal.signal(sigterm, _Handler(previous))
        return True
    except Exception:
        log.debug("tracer: SIGTERM flush handler not installed", exc_info=True)
        return False
