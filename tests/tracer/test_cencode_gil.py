"""The C encoder's batch loop (``_cencode.put_many_v04``) lets other threads
run while it encodes a large batch, as the Python loop it replaced did."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tracer import encoding
from tracer.encoding import PayloadV04

pytestmark = pytest.mark.skipif(encoding._cencode is None, reason="the C encoder")


def _chunk(spans: int) -> list[Any]:
    meta = {f"tag.{i}": "v" * 40 for i in range(12)}
    metrics = {f"metric.{i}": float(i) for i in range(4)}
    record = [(1 << 64) | 5, 7, 0, "svc", "op", "res", None, 10, 5, 0, meta, metrics]
    return record * spans


def test_an_app_thread_runs_while_a_large_batch_is_encoded() -> None:
    """An app thread waits for the GIL about a switch interval (5 ms) at a
    time while the writer encodes a batch that takes ≥ 100 ms, not the whole
    encode: the C loop pauses every millisecond, and PayloadV04.put_many's
    loop lets the interpreter hand the GIL over between the calls."""
    chunk = _chunk(101)
    count = 50
    while True:  # a batch that takes at least 0.1 s to encode here
        started = time.perf_counter()
        PayloadV04(1 << 40).put_many([(None, chunk)] * count)
        took = time.perf_counter() - started
        if took >= 0.1:
            break
        count = int(count * min(8.0, 0.12 / max(took, 1e-4)) + 1)
    batch = [(None, chunk)] * count

    gaps: list[float] = []
    running = threading.Event()
    done = threading.Event()

    def app() -> None:
        last = time.perf_counter()
        running.set()
        while not done.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=app)
    thread.start()
    running.wait()
    time.sleep(0.02)
    del gaps[:]
    started = time.perf_counter()
    payload = PayloadV04(1 << 40)
    assert payload.put_many(batch) == count
    took = time.perf_counter() - started
    done.set()
    thread.join()
    assert payload.traces == count
    # Without the release the app thread waits for the whole encode.
    assert max(gaps) < took / 3, (max(gaps), took)
