"""SIGTERM (Docker, systemd, Kubernetes stopping an app) flushes what is
finished: real apps in real subprocesses, a real agent_sim receiver, and a
writer interval of 60 s so only the exit flush can deliver."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from contrib._http import untraced
from tests.contrib.test_flask_servers import _env, _stop, _tracer_run
from tests.receiver import RunningReceiver
from tests.utils import assert_clean_output, free_port, run_python, wait_for_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def receiver() -> Iterator[RunningReceiver]:
    with RunningReceiver() as running:
        yield running


def _serve_five_then_term(cmd: list[str], cwd: str, receiver: Any, port: int) -> tuple[int, str]:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=_env(receiver, interval="60"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, timeout=20)
        with untraced(), requests.Session() as session:
            for i in range(5):
                assert session.get(f"http://127.0.0.1:{port}/users/{i}", timeout=10).status_code == 200
        # A request span ends in the response's close(), just after the client
        # has the response: let the last one end (60 s from the next send).
        time.sleep(0.5)
    finally:
        output = _stop(proc)  # SIGTERM
    assert_clean_output(output)
    return proc.returncode, output


def _wait_five(receiver: Any, output: str, **filters: Any) -> list[dict[str, Any]]:
    try:
        return receiver.wait_traces(5, timeout=10, **filters)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noutput:\n{output}") from None


def test_plain_app_under_tracer_run_flushes_and_dies_by_sigterm(receiver: Any, tmp_path: Any) -> None:
    app = tmp_path / "app.py"
    app.write_text("import sys\nfrom flask_app import app\napp.run(host='127.0.0.1', port=int(sys.argv[1]))\n")
    port = free_port()
    rc, output = _serve_five_then_term(
        _tracer_run() + [sys.executable, str(app), str(port)], str(tmp_path), receiver, port
    )
    assert rc == -signal.SIGTERM, output  # the default action's status is kept
    rows = _wait_five(receiver, output)
    assert sorted((r["service"], r["resource"]) for r in rows) == [("flask_app", "GET /users/<int:user_id>")] * 5, (
        output
    )


def test_gunicorn_under_tracer_run_flushes_on_sigterm(receiver: Any) -> None:
    from tests.contrib.apps.flask_helpers import APPS_DIR

    port = free_port()
    cmd = _tracer_run() + ["gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "flask_app:app"]
    rc, output = _serve_five_then_term(cmd, APPS_DIR, receiver, port)
    assert rc == 0, output  # gunicorn handles SIGTERM itself: a clean exit
    rows = _wait_five(receiver, output, service="flask_app")
    assert len(rows) == 5, output


# A script that makes five traces, says "ready", then waits for a signal.
# {before} runs before patch_all(), {after} after it.
SCRIPT = """
import os, signal, sys, time
{before}
import tracer
tracer.patch_all()
{after}
for i in range(5):
    with tracer.tracer.trace("job", service="sigterm_app", resource=f"job{{i}}"):
        pass
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

APP_HANDLER = """
def on_term(signum, frame):
    print("app handler, spans pending:", tracer.tracer.stats().get("spans_pending"), flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
"""


def _run_script(receiver_url: str, before: str = "", after: str = "") -> tuple[int, str, float]:
    """Run SCRIPT, SIGTERM it once ready; (return code, output, seconds from SIGTERM to exit)."""
    code = SCRIPT.format(before=textwrap.dedent(before), after=textwrap.dedent(after))
    env = _env(SimpleNamespace(url=receiver_url), interval="60")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "ready\n", first + proc.stdout.read()
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        seconds = time.monotonic() - start
        assert_clean_output(rest)
        return proc.returncode, first + rest, seconds
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_patch_all_alone_flushes_on_sigterm(receiver: Any) -> None:
    rc, output, _ = _run_script(receiver.url)
    assert rc == -signal.SIGTERM, output
    assert len(_wait_five(receiver, output, service="sigterm_app")) == 5


def test_app_handler_set_before_patch_all_is_called_after_the_flush(receiver: Any) -> None:
    rc, output, _ = _run_script(receiver.url, before="import tracer\n" + APP_HANDLER)
    # Already flushed when the app's handler runs; its exit status is the app's.
    assert "app handler, spans pending: 0" in output, output
    assert rc == 3, output
    assert len(_wait_five(receiver, output, service="sigterm_app")) == 5


def test_app_handler_set_after_patch_all_wins_and_atexit_flushes(receiver: Any) -> None:
    rc, output, _ = _run_script(receiver.url, after=APP_HANDLER)
    assert "app handler, spans pending: 5" in output, output  # ours did not run
    assert rc == 3, output
    assert len(_wait_five(receiver, output, service="sigterm_app")) == 5


def test_flush_is_bounded_when_the_receiver_never_answers() -> None:
    # A listening socket that never accepts: connections succeed, replies never come.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        rc, output, seconds = _run_script(f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert rc == -signal.SIGTERM, output
    assert seconds < 8, (seconds, output)  # FLUSH_TIMEOUT is 4 s


def test_install_leaves_ignored_and_foreign_threads_alone() -> None:
    run_python(
        textwrap.dedent(
            """
            import signal, threading
            from tracer import _sigterm

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            assert _sigterm.install() is False
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN

            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            results = []
            t = threading.Thread(target=lambda: results.append(_sigterm.install()))
            t.start(); t.join()
            assert results == [False] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

            assert _sigterm.install() is True
            ours = signal.getsignal(signal.SIGTERM)
            assert _sigterm.install() is True and signal.getsignal(signal.SIGTERM) is ours
            """
        ),
        env={"TRACER_AGENT_URL": "http://127.0.0.1:9"},
    )
