"""Log correlation: trace ids on logging records (TRACER_LOGS_INJECTION)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.receiver import RunningReceiver
from tests.tracer.test_run import tracer_run
from tests.utils import REPO
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


def test_records_after_a_childs_end_carry_the_parents_ids(captured: Any, test_spans: Any) -> None:
    # The pure-Python span's end leaves the child (finished) in the active
    # variable: a record after it carries the parent's span id.
    logger, handler = captured
    with tracer.trace("work", service="billing") as root:
        with tracer.trace("inner"):
            pass
        logger.info("after inner")
    (record,) = handler.records
    assert (record.trace_id, record.span_id) == (f"{root.trace_id:032x}", f"{root.span_id:016x}")
    assert record.__dict__["dd.span_id"] == str(root.span_id)


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



# The app for the start-up tests: logs outside a span, inside one, and inside
# one continuing a 64-bit upstream trace id; prints the ids it expects.
APP = """
import logging, sys
import tracer
from tracer.propagation import extract
{start}
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format=sys.argv[1])
log = logging.getLogger("app")
log.info("outside")
with tracer.tracer.trace("work") as span:
    log.info("inside")
print("ids", span.trace_id, span.span_id)
upstream = extract({{"x-datadog-trace-id": "123", "x-datadog-parent-id": "456"}})
span = tracer.tracer.start_span("continued", child_of=upstream, activate=True)
log.info("upstream")
span.finish()
print("ids", span.trace_id, span.span_id)
"""


@pytest.fixture(scope="module")
def receiver_mod() -> Iterator[RunningReceiver]:
    with RunningReceiver() as r:
        yield r


def run_app(tmp_path: Path, how: str, fmt: str, env: dict[str, str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Run APP started ``how`` (under ``tracer-run``, or ``tracer.patch_all()``
    in plain python); its log lines and the (trace_id, span_id) of its spans."""
    (tmp_path / "logapp.py").write_text(APP.format(start="tracer.patch_all()" if how == "patch_all" else ""))
    if how == "tracer-run":
        proc = tracer_run(["python", "logapp.py", fmt], env=env, cwd=tmp_path)
    else:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
        full.update(PYTHONPATH=REPO, TRACER_WRITER_INTERVAL="0.1", **env)
        proc = subprocess.run([sys.executable, "logapp.py", fmt], env=full, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    ids = [(int(t), int(s)) for _, t, s in (line.split() for line in lines if line.startswith("ids "))]
    return [line for line in lines if not line.startswith("ids ")], ids


@pytest.mark.parametrize("how", ["tracer-run", "patch_all"])
def test_logs_injection_for_both_ways_of_starting(tmp_path: Path, receiver_mod: RunningReceiver, how: str) -> None:
    env = {"TRACER_LOGS_INJECTION": "true", "TRACER_SERVICE": "shop", "TRACER_AGENT_URL": receiver_mod.url}
    lines, ids = run_app(tmp_path, how, "%(message)s trace_id=%(trace_id)s span_id=%(span_id)s service=%(service)s",
                         env)
    (work_trace, work_span), (up_trace, up_span) = ids
    assert lines == [
        "outside trace_id= span_id= service=",
        f"inside trace_id={work_trace:032x} span_id={work_span:016x} service=shop",
        f"upstream trace_id={up_trace:032x} span_id={up_span:016x} service=shop",
    ]
    assert up_trace == 123 and work_trace >= 1 << 64


def test_ddtrace_format_string_under_tracer_run(tmp_path: Path, receiver_mod: RunningReceiver) -> None:
    # ddtrace's own documented format (ddtrace/_logger.py), with ddtrace's variables.
    fmt = ("%(asctime)s %(levelname)s [%(name)s] [dd.service=%(dd.service)s dd.env=%(dd.env)s "
           "dd.version=%(dd.version)s dd.trace_id=%(dd.trace_id)s dd.span_id=%(dd.span_id)s] - %(message)s")
    env = {"DD_LOGS_INJECTION": "true", "DD_SERVICE": "shop", "DD_ENV": "prod", "DD_VERSION": "1.0",
           "TRACER_AGENT_URL": receiver_mod.url}
    lines, ids = run_app(tmp_path, "tracer-run", fmt, env)
    (work_trace, work_span), (up_trace, up_span) = ids
    tails = [line.split(" INFO [app] ", 1)[1] for line in lines]
    tags = "dd.service=shop dd.env=prod dd.version=1.0"
    assert tails == [
        f"[{tags} dd.trace_id=0 dd.span_id=0] - outside",
        # 128-bit id: 32 hex, as ddtrace writes it; span ids in decimal.
        f"[{tags} dd.trace_id={work_trace:032x} dd.span_id={work_span}] - inside",
        # an id that fits in 64 bits: decimal, as ddtrace writes it.
        f"[{tags} dd.trace_id=123 dd.span_id={up_span}] - upstream",
    ]
