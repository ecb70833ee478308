"""Log correlation: trace ids on logging records (TRACER_LOGS_INJECTION)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tracer import logs, tracer
from tracer.config import config
from tracer.context import wrap_context

FIELDS = ("trace_id", "span_id", "service", "env", "version")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[logging.Logger, Capture]]:
    original = logging.getLogRecordFactory()
    monkeypatch.setattr(config, "env", "test-env")
    monkeypatch.setattr(config, "version", "1.2.3")
    logger = logging.getLogger("tests.logs.app")
    handler = Capture()
    logger.addHandler(handler)
    previous = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logs.install()
    try:
        yield logger, handler
    finally:
        logs.uninstall()
        logger.removeHandler(handler)
        logger.level, logger.propagate = previous
        logging.setLogRecordFactory(original)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def test_records_inside_a_span_carry_ids(captured: Any, test_spans: Any) -> None:
    logger, handler = captured
    with tracer.trace("work", service="billing") as root, tracer.trace("inner") as inner:
        logger.info("inside")
    logger.info("outside")
    first, second = handler.records
    assert fields(first) == {
        "trace_id": f"{root.trace_id:032x}",
        "span_id": f"{inner.span_id:016x}",
        "service": "billing",
        "env": "test-env",
        "version": "1.2.3",
    }
    assert len(first.trace_id) == 32 and len(first.span_id) == 16
    assert fields(second) == dict.fromkeys(FIELDS, "")
    formatter = logging.Formatter("%(message)s trace_id=%(trace_id)s span_id=%(span_id)s")
    assert formatter.format(first) == f"inside trace_id={root.trace_id:032x} span_id={inner.span_id:016x}"
    assert formatter.format(second) == "outside trace_id= span_id="


def test_each_thread_sees_its_own_span(captured: Any, test_spans: Any) -> None:
    logger, handler = captured
    with tracer.trace("request") as span:
        plain = threading.Thread(target=logger.info, args=("plain thread",))
        carried = threading.Thread(target=wrap_context(logger.info), args=("carried",))
        for t in (plain, carried):
            t.start()
            t.join()
    by_message = {r.getMessage(): r for r in handler.records}
    assert by_message["plain thread"].trace_id == ""
    assert by_message["carried"].span_id == f"{span.span_id:016x}"


def test_install_is_idempotent_and_uninstall_restores(captured: Any) -> None:
    logger, handler = captured
    ours = logging.getLogRecordFactory()
    logs.install()
    assert logging.getLogRecordFactory() is ours and logs.installed()
    logs.uninstall()
    logs.uninstall()
    assert not logs.installed()
    assert logging.getLogRecordFactory() is ours.__wrapped__  # type: ignore[attr-defined]
    logger.info("after")
    assert not hasattr(handler.records[-1], "trace_id")


def test_uninstall_under_another_wrapper_becomes_pass_through(captured: Any, test_spans: Any) -> None:
    logger, handler = captured
    ours = logging.getLogRecordFactory()

    def theirs(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = ours(*args, **kwargs)
        record.theirs = True
        return record

    logging.setLogRecordFactory(theirs)
    logs.uninstall()
    assert logging.getLogRecordFactory() is theirs  # never unhook someone else's wrapper
    with tracer.trace("quiet"):
        logger.info("disabled")
    assert handler.records[-1].theirs and not hasattr(handler.records[-1], "trace_id")
    logs.install()
    with tracer.trace("loud") as span:
        logger.info("enabled again")
    assert handler.records[-1].span_id == f"{span.span_id:016x}"


def test_install_if_configured(captured: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    logs.uninstall()
    monkeypatch.setattr(config, "logs_injection", False)
    assert logs.install_if_configured() is False and not logs.installed()
    monkeypatch.setattr(config, "logs_injection", True)
    assert logs.install_if_configured() is True and logs.installed()
