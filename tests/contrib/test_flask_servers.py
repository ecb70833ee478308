"""Flask served for real, hit over HTTP with ``requests``, traces read back
from a real agent_sim receiver: werkzeug's server in a thread (two apps, two
services), and ``tracer-run gunicorn`` / ``tracer-run flask run`` subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

import tracer as tracer_pkg
from contrib._http import untraced
from tests.contrib.apps.flask_helpers import APPS_DIR, load_app, patched_for_module, root_of, trees
from tests.receiver import RunningReceiver
from tests.utils import REPO, assert_clean_output, free_port, render_tree, stop_process, wait_for_port


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask", "requests")


def _serve(app: Any) -> tuple[Any, str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def servers(patched: None) -> Iterator[dict[str, str]]:
    """flask_app and downstream_app on werkzeug servers; /call goes from one to the other."""
    front = load_app("flask_app").app
    back = load_app("downstream_app").app
    front_server, front_url = _serve(front)
    back_server, back_url = _serve(back)
    front.config["DOWNSTREAM_URL"] = back_url
    yield {"front": front_url, "back": back_url}
    front_server.shutdown()
    back_server.shutdown()


def fetch(url: str) -> tuple[int, str]:
    with untraced():  # the test's own calls are not part of the app's traces
        reply = requests.get(url, timeout=10)
    return reply.status_code, reply.text


def test_werkzeug_server_routes(traced: Any, servers: dict[str, str]) -> None:
    base = servers["front"]
    assert fetch(base + "/api/items/cup") == (200, '{"item":"cup"}\n')
    assert fetch(base + "/missing")[0] == 404
    assert fetch(base + "/boom")[0] == 500
    assert sorted(trees(traced, n=3)) == [
        "flask.request flask_app 'GET /api/items/<name>' http.status_code=200\n"
        "  flask.before_request flask_app 'authenticate'\n"
        "  flask.view flask_app 'get_item'\n"
        "  flask.after_request flask_app 'add_header'\n"
        "  flask.teardown_request flask_app 'release'",
        "flask.request flask_app 'GET /boom' [error] http.status_code=500 error.type=builtins.ValueError\n"
        "  flask.view flask_app 'boom' [error] error.type=builtins.ValueError",
        "flask.request flask_app 'GET 404' http.status_code=404",
    ]


def test_werkzeug_server_stream_duration(traced: Any, servers: dict[str, str]) -> None:
    assert fetch(servers["front"] + "/stream") == (200, "chunk0\nchunk1\nchunk2\n")
    assert tracer_pkg.tracer.flush(10)
    (row,) = traced.wait_traces(1)
    spans = traced.spans(row["trace_id"])
    assert root_of(spans)["duration_ns"] >= 150_000_000
    assert render_tree(spans) == (
        "flask.request flask_app 'GET /stream'\n"
        "  flask.view flask_app 'stream'\n"
        "  flask.render_template flask_app '<string>'\n"
        "  flask.render_template flask_app '<string>'\n"
        "  flask.render_template flask_app '<string>'"
    )


def test_one_trace_across_two_services(traced: Any, servers: dict[str, str]) -> None:
    assert fetch(servers["front"] + "/call") == (200, 'downstream said 200 {"id":7,"source":"downstream"}')
    assert tracer_pkg.tracer.flush(10)
    # Both services' chunks are one trace (the receiver joins chunks; the
    # trace's row describes its root, in flask_app).
    (row,) = traced.wait_traces(1, service="flask_app")
    spans = traced.spans(row["trace_id"])
    assert render_tree(spans, ("http.status_code",)) == (
        "flask.request flask_app 'GET /call' http.status_code=200\n"
        "  flask.view flask_app 'call'\n"
        "    requests.request flask_app 'GET /users/?' http.status_code=200\n"
        "      flask.request downstream_app 'GET /users/<int:user_id>' http.status_code=200\n"
        "        flask.view downstream_app 'downstream_user'"
    )
    by_name = {(s["name"], s["service"]): s for s in spans}
    client = by_name[("requests.request", "flask_app")]
    server = by_name[("flask.request", "downstream_app")]
    assert server["parent_id"] == client["span_id"]
    assert len({s["trace_id"] for s in spans}) == 1


# -- tracer-run subprocesses ---------------------------------------------------------


def _tracer_run() -> list[str]:
    exe = shutil.which("tracer-run")
    return [exe] if exe else [sys.executable, "-m", "tracer.run"]


def _env(receiver: Any, interval: str = "0.2") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
    env.update(
        PYTHONPATH=REPO + os.pathsep + APPS_DIR,
        TRACER_AGENT_URL=receiver.url,
        TRACER_WRITER_INTERVAL=interval,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def subprocess_receiver() -> Iterator[Any]:
    with RunningReceiver() as receiver:
        yield receiver


def _stop(proc: subprocess.Popen[str]) -> str:
    return stop_process(proc, signal.SIGTERM)


def test_gunicorn_two_workers_preload_every_request_traced_once(subprocess_receiver: Any) -> None:
    port = free_port()
    cmd = _tracer_run() + ["gunicorn", "-w", "2", "--preload", "-b", f"127.0.0.1:{port}", "flask_app:app"]
    # A writer interval longer than the test: what the workers hold is only
    # delivered by their flush at exit.
    env = _env(subprocess_receiver, interval="60")
    proc = subprocess.Popen(cmd, cwd=APPS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, timeout=20)
        session = requests.Session()
        with untraced():
            for i in range(20):
                reply = session.get(f"http://127.0.0.1:{port}/users/{i}", timeout=10)
                assert (reply.status_code, reply.json()) == (200, {"id": i})
        session.close()
    finally:
        output = _stop(proc)  # workers exit here: what they hold must still be sent
    assert proc.returncode == 0, output
    assert_clean_output(output)
    rows = subprocess_receiver.wait_traces(20, timeout=10, service="flask_app", limit=100)
    assert len(rows) == 20, output
    urls = []
    for row in rows:
        spans = subprocess_receiver.spans(row["trace_id"])
        assert render_tree(spans) == (
            "flask.request flask_app 'GET /users/<int:user_id>'\n  flask.view flask_app 'get_user'"
        )
        urls.append(root_of(spans)["meta"]["http.url"])
    assert sorted(urls) == sorted(f"http://127.0.0.1:{port}/users/{i}" for i in range(20))
    assert subprocess_receiver.info()["duplicate_span_ids"] == 0


def test_flask_run_service_is_the_app_not_the_launcher(subprocess_receiver: Any) -> None:
    port = free_port()
    cmd = _tracer_run() + [sys.executable, "-m", "flask", "--app", "flask_app", "run", "--port", str(port)]
    cmd_cli = _tracer_run() + ["flask", "--app", "flask_app", "run", "--port", str(port)]
    if shutil.which("flask"):
        cmd = cmd_cli
    proc = subprocess.Popen(
        cmd, cwd=APPS_DIR, env=_env(subprocess_receiver), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, timeout=20)
        assert fetch(f"http://127.0.0.1:{port}/users/5") == (200, '{"id":5}\n')
        rows = subprocess_receiver.wait_traces(1, timeout=10)
    finally:
        output = _stop(proc)
    assert_clean_output(output)
    assert [(r["service"], r["resource"]) for r in rows] == [("flask_app", "GET /users/<int:user_id>")], output


@pytest.mark.parametrize(
    ("redact", "query"),
    [
        # A custom pattern replaces the default: `token` is kept, and the match is case-sensitive as written.
        ("^user$", "user=<redacted>&USER=x&token=abc&page=2"),
        # Empty turns redaction off.
        ("", "user=bob&USER=x&token=abc&page=2"),
    ],
)
def test_query_string_redact_from_the_environment(
    subprocess_receiver: Any, tmp_path: Any, redact: str, query: str
) -> None:
    port = free_port()
    app = tmp_path / "app.py"
    app.write_text("import sys\nfrom flask_app import app\napp.run(host='127.0.0.1', port=int(sys.argv[1]))\n")
    env = {**_env(subprocess_receiver), "TRACER_QUERY_STRING_REDACT": redact}
    proc = subprocess.Popen(
        _tracer_run() + [sys.executable, str(app), str(port)],
        cwd=APPS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, timeout=20)
        assert fetch(f"http://127.0.0.1:{port}/users/7?user=bob&USER=x&token=abc&page=2")[0] == 200
        (row,) = subprocess_receiver.wait_traces(1, timeout=10, service="flask_app")
    finally:
        output = _stop(proc)
    assert_clean_output(output)
    root = root_of(subprocess_receiver.spans(row["trace_id"]))
    assert root["meta"]["http.url"] == f"http://127.0.0.1:{port}/users/7?{query}", output
