"""Every request counted once, under real servers and clients that hang up.

A Flask app (``apps/hangup_app.py``) runs under ``tracer-run`` in Werkzeug's
development server (threaded and single-threaded), ``flask run``, gunicorn
(sync and gthread workers) and waitress, reporting to a real agent_sim
receiver. Raw-socket clients behave as browsers and load balancers do: one
reads the status line of a 500 and resets the connection, one reads the
first chunk of a streamed body and resets, one sends a request and closes
before any response, one behaves. The receiver's stats must show exactly one
hit per request sent, errors exactly where the app failed, and every
``flask.request`` span as the root of its own trace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients import close_before_response, first_chunk_then_reset, status_line_then_reset, well_behaved
from tests.contrib.apps.flask_helpers import APPS_DIR
from tests.receiver import RunningReceiver
from tests.utils import (
    REPO,
    assert_clean_output,
    free_port,
    require_module,
    require_program,
    stop_process,
    wait_for_port,
)

pytestmark = pytest.mark.slow


def _tracer_run() -> list[str]:
    return [require_program("tracer-run")]


def _command(server: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if server == "werkzeug-threaded":
        return [sys.executable, "hangup_app.py", str(port), "threaded"]
    if server == "werkzeug-single":
        return [sys.executable, "hangup_app.py", str(port), "single"]
    if server == "flask-run":
        return [sys.executable, "-m", "flask", "--app", "hangup_app", "run", "--port", str(port)]
    if server == "gunicorn-sync":
        return [require_program("gunicorn"), "-w", "1", "-b", bind, "hangup_app:app"]
    if server == "gunicorn-gthread":
        return [require_program("gunicorn"), "-w", "1", "-k", "gthread", "--threads", "4", "-b", bind, "hangup_app:app"]
    if server == "waitress":
        require_module("waitress")
        return [sys.executable, "-m", "waitress", f"--listen={bind}", "hangup_app:app"]
    raise AssertionError(server)


def _stop(proc: subprocess.Popen[str]) -> str:
    return stop_process(proc, signal.SIGINT)


@pytest.fixture
def receiver() -> Iterator[Any]:
    with RunningReceiver() as running:
        yield running


def _hits(receiver: Any, deadline: float, want: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(hits, errors) of each ``flask.request`` resource, once the hits reach ``want`` or time is up."""
    while True:
        rows = receiver.stats(service="hangup_app")
        got = {r["resource"]: (r["hits"], r["errors"]) for r in rows if r["name"] == "flask.request"}
        if all(got.get(k, (0, 0))[0] >= v for k, v in want.items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


SERVERS = ["werkzeug-threaded", "werkzeug-single", "flask-run", "gunicorn-sync", "gunicorn-gthread", "waitress"]


@pytest.mark.parametrize("server", SERVERS)
def test_every_request_counted_once_with_clients_that_hang_up(server: str, receiver: Any) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
    env.update(
        PYTHONPATH=REPO + os.pathsep + APPS_DIR,
        TRACER_AGENT_URL=receiver.url,
        TRACER_WRITER_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        _tracer_run() + _command(server, port),
        cwd=APPS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    sent = {"GET /ok": 0, "GET /boom": 0, "GET /stream": 0, "GET /badstream": 0}
    try:
        wait_for_port(port, timeout=20)
        for _ in range(3):
            assert status_line_then_reset(port, "/boom")[9:12] == b"500"
            sent["GET /boom"] += 1
            assert first_chunk_then_reset(port, "/stream")[9:12] == b"200"
            sent["GET /stream"] += 1
            close_before_response(port, "/ok")
            sent["GET /ok"] += 1
            assert b"first" in well_behaved(port, "/badstream")
            sent["GET /badstream"] += 1
            assert well_behaved(port, "/ok").endswith(b"ok")
            sent["GET /ok"] += 1
            assert well_behaved(port, "/boom")[9:12] == b"500"
            sent["GET /boom"] += 1
        assert well_behaved(port, "/stream")[9:12] == b"200"
        sent["GET /stream"] += 1
        got = _hits(receiver, time.monotonic() + 15, sent)
    finally:
        output = _stop(proc)
    # The app's own exceptions, logged by Flask or the server, are the only tracebacks.
    assert_clean_output(output, allow=("ValueError: boom 42", "RuntimeError: stream broke"))
    # Errors: the 500s, and the streamed bodies that raised.
    want = {resource: (n, n if resource in ("GET /boom", "GET /badstream") else 0) for resource, n in sent.items()}
    assert got == want, output
    # Every request is its own trace: no request joined another's.
    rows = receiver.traces(service="hangup_app", limit=200)
    assert len(rows) == sum(sent.values()), output
    for row in rows:
        assert row["name"] == "flask.request", row
        spans = receiver.spans(row["trace_id"])
        roots = [s for s in spans if s["parent_id"] is None]
        assert [s["name"] for s in roots] == ["flask.request"], spans
        assert sum(s["name"] == "flask.request" for s in spans) == 1, spans
    boom = receiver.spans(receiver.traces(service="hangup_app", resource="GET /boom", limit=1)[0]["trace_id"])
    (root,) = [s for s in boom if s["name"] == "flask.request"]
    assert (root["meta"]["http.status_code"], root["meta"]["error.type"]) == ("500", "builtins.ValueError")
    bad = receiver.spans(receiver.traces(service="hangup_app", resource="GET /badstream", limit=1)[0]["trace_id"])
    (root,) = [s for s in bad if s["name"] == "flask.request"]
    assert root["error"] == 1, root
    assert (root["meta"]["http.status_code"], root["meta"]["error.type"]) == ("200", "builtins.RuntimeError")
    assert root["meta"]["error.message"] == "stream broke"
