"""What the Flask request path's fewer frames rely on (issue 17, thirteenth
session): a traced user function is found in one look-up among its
endpoint's (Flask's own ``ensure_sync`` is not called again for it), the
same traced function serves every endpoint that runs it, async hooks are
never taken for sync ones, and ``start_response`` hands the server
``exc_info`` only when it was given one."""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from werkzeug.test import EnvironBuilder

from tests.contrib.apps.flask_helpers import get_body, patched_for_module, trees


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


def _flask_calls(name: str, run: Any) -> int:
    """Calls of Flask's own function ``name`` (in the flask package, not
    our wrapper of it) while ``run()`` runs, counted by cProfile."""
    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats: Any = pstats.Stats(profiler)
    package = os.path.dirname(flask.__file__) + os.sep
    return sum(
        calls
        for (filename, _line, func), (_cc, calls, _own, _cum, _callers) in stats.stats.items()
        if func == name and filename.startswith(package)
    )


def test_a_traced_function_skips_flasks_ensure_sync_after_its_first_request(traced: Any) -> None:
    """The endpoint's traced functions are found in one look-up: Flask's
    ensure_sync runs for each function on the endpoint's first request
    only, and a hook shared by two endpoints has its span under both."""
    app = flask.Flask("fast_app")
    bp = flask.Blueprint("bp", __name__)

    def before() -> None:
        pass

    def only_bp() -> None:
        pass

    @bp.route("/a")
    def a() -> str:
        return "a"

    @app.route("/b")
    def b() -> str:
        return "b"

    app.before_request(before)
    bp.before_request(only_bp)
    app.register_blueprint(bp)
    client = app.test_client()

    def first() -> None:
        assert get_body(client, "/a") == b"a" and get_body(client, "/b") == b"b"

    def again() -> None:
        for _ in range(3):
            first()

    assert _flask_calls("ensure_sync", first) == 5  # before, only_bp, a; before (traced already), b
    assert _flask_calls("ensure_sync", again) == 0
    here = "test_a_traced_function_skips_flasks_ensure_sync_after_its_first_request.<locals>"
    got = trees(traced, 8)
    assert got == [
        "flask.request fast_app 'GET /a' http.status_code=200\n"
        f"  flask.before_request fast_app '{here}.before'\n"
        f"  flask.before_request fast_app '{here}.only_bp'\n"
        f"  flask.view fast_app '{here}.a'",
        "flask.request fast_app 'GET /b' http.status_code=200\n"
        f"  flask.before_request fast_app '{here}.before'\n"
        f"  flask.view fast_app '{here}.b'",
    ] * 4, got


def test_an_async_hook_is_run_through_flasks_wrapper_on_every_request(traced: Any) -> None:
    """Flask makes a new sync callable of an async function on each
    ensure_sync call: it is never taken for the endpoint's traced ones (the
    coroutine function called as it is would return an unawaited coroutine)."""
    pytest.importorskip("asgiref")
    app = flask.Flask("fast_async_app")
    runs: list[int] = []

    @app.before_request
    async def before() -> None:
        runs.append(1)

    @app.route("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    for _ in range(3):
        assert get_body(client, "/") == b"ok"
    assert runs == [1, 1, 1]
    here = "test_an_async_hook_is_run_through_flasks_wrapper_on_every_request.<locals>"
    assert trees(traced, 3) == [
        "flask.request fast_async_app 'GET /' http.status_code=200\n"
        f"  flask.before_request fast_async_app '{here}.before'\n"
        f"  flask.view fast_async_app '{here}.index'"
    ] * 3


class _ExcInfoResponse(flask.Response):
    """Calls start_response with the exception being handled, as a WSGI app
    may when its response reports an error (PEP 3333)."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        try:
            raise ValueError("reported")
        except ValueError:
            start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"failed"]


@pytest.mark.parametrize("with_exc_info", [False, True])
def test_start_response_passes_exc_info_only_when_given(traced: Any, with_exc_info: bool) -> None:
    app = flask.Flask("fast_start_app")
    if with_exc_info:
        app.response_class = _ExcInfoResponse

    @app.route("/")
    def index() -> str:
        return "ok"

    calls: list[tuple[Any, ...]] = []

    def start_response(*args: Any) -> Any:
        calls.append(args)
        return lambda data: None

    body = app.wsgi_app(EnvironBuilder(path="/").get_environ(), start_response)
    try:
        b"".join(body)
    finally:
        body.close()
    ((status, _headers, *rest),) = calls
    if with_exc_info:
        assert status.startswith("500") and len(rest) == 1 and isinstance(rest[0][1], ValueError)
    else:
        assert status.startswith("200") and rest == []
    (tree,) = trees(traced)
    first = tree.splitlines()[0]
    assert first.startswith("flask.request fast_start_app 'GET /'") and first.endswith(f"http.status_code={status[:3]}"), tree
