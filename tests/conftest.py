"""Fixtures shared by the whole suite.

- ``internal_errors`` (autouse): a test fails if tracer code swallowed an
  exception during it, or if the ``tracer``/``contrib`` loggers logged an
  error (instrumentation errors are logged in production and must never be
  silent in tests). A test that provokes one on purpose is marked
  ``@pytest.mark.internal_errors``. Child processes: ``tests.utils.assert_clean_output``.
- ``test_spans``: an in-memory chunk sink on the global tracer, for unit tests
  of the core only; integrations are tested against a real receiver.
- ``receiver``: a real agent_sim HTTP server in a thread on a free port.
- ``traced``: the global tracer pointed at ``receiver``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import pytest

from tests.mariadb import mariadb  # noqa: F401  (session fixture: one real MariaDB for the suite)
from tracer import _errors
from tracer import tracer as global_tracer
from tracer.config import config
from tracer.span import FinishedSpan, records

# `agent-sim serve` subprocesses in tests must never bind the real DogStatsD port 8125.
os.environ.setdefault("AGENT_SIM_STATSD_PORT", "0")


class _ErrorRecords(logging.Handler):
    """Keeps the ERROR (and worse) records of our loggers. Those of
    ``_errors.internal_error`` are left to ``_errors.swallowed``: it logs a
    (place, type) pair once per process, so whether a record appears depends
    on the test order, while ``swallowed`` sees every call (and a test that
    provokes one may take it from there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not (record.pathname == _errors.__file__ and record.funcName == "internal_error"):
            self.records.append(record)


_OUR_LOGGERS = ("tracer", "contrib")


@pytest.fixture(autouse=True)
def internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    handler = _ErrorRecords()
    loggers = [logging.getLogger(name) for name in _OUR_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    del _errors.swallowed[:]
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    swallowed = list(_errors.swallowed)
    del _errors.swallowed[:]
    if request.node.get_closest_marker("internal_errors"):
        return
    if swallowed:
        where, exc = swallowed[0]
        raise AssertionError(f"tracer swallowed {len(swallowed)} internal error(s); first in {where}") from exc
    if handler.records:
        first = handler.records[0]
        raise AssertionError(
            f"{len(handler.records)} error(s) logged by {first.name}; first: {handler.format(first)}"
        )


class SpanSink:
    """Collects finished chunks in memory, as named span views
    (``tracer.span.FinishedSpan``); ``processed()`` runs the writer's
    processing on them first."""

    def __init__(self) -> None:
        self.raw: list[tuple[Any, list[Any]]] = []

    def write(self, trace: Any, chunk: list[Any]) -> None:
        self.raw.append((trace, chunk))

    def flush(self, timeout: float = 0) -> bool:
        return True

    def stop(self, timeout: float = 0) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}

    @property
    def chunks(self) -> list[list[FinishedSpan]]:
        return [records(chunk) for _, chunk in self.raw]

    @property
    def spans(self) -> list[FinishedSpan]:
        return [span for chunk in self.chunks for span in chunk]

    def processed(self) -> list[list[FinishedSpan]]:
        from tracer.processor import process_chunk

        return [records(chunk) for trace, chunk in self.raw if process_chunk(trace, chunk, global_tracer.sampler)]

    def reset(self) -> None:
        self.raw = []


@pytest.fixture
def test_spans() -> Iterator[SpanSink]:
    sink = SpanSink()
    previous = global_tracer._writer
    global_tracer._writer = sink
    try:
        yield sink
    finally:
        global_tracer._writer = previous


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A real agent_sim server on 127.0.0.1:<free port>, in-memory store."""
    from tests.receiver import RunningReceiver

    with RunningReceiver() as running:
        yield running


@pytest.fixture
def traced(receiver: Any) -> Iterator[Any]:
    """The global tracer sending to ``receiver``; yields the receiver."""
    previous_url = config.agent_url
    previous_interval = config.writer_interval
    config.agent_url = receiver.url
    config.writer_interval = 0.1
    global_tracer._reset_writer()
    try:
        yield receiver
    finally:
        global_tracer.flush(5)
        global_tracer._reset_writer()
        config.agent_url = previous_url
        config.writer_interval = previous_interval


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which real external parts this run used (and which it did not reach)."""
    from tests.utils import REAL_PARTS_USED, STRICT

    used = ", ".join(f"{what}: {path}" for what, path in sorted(REAL_PARTS_USED.items())) or "none"
    mode = "missing ones fail" if STRICT else "missing ones skip (set CI=true or use scripts/run-tests.sh)"
    terminalreporter.write_line(f"real parts used: {used} [{mode}]")
