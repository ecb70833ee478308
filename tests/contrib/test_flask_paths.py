"""The Flask request path's fast paths, each against the general one: a
body Werkzeug builds from the response's own list (a view returning str,
bytes, a dict) is read without making the request span active
(``RequestState.respond``: two ContextVar writes per chunk); every other body
is read with it active (streamed bodies' spans: test_flask.py). And an app
calling another app's ``wsgi_app`` with its own environ inside a request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import pytest
from werkzeug.test import EnvironBuilder

from tests.contrib.apps.flask_helpers import patched_for_module, trees


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


def _app() -> Any:
    app = flask.Flask("paths_app")

    @app.route("/text")
    def text() -> str:
        return "ok"

    @app.route("/json")
    def json() -> Any:
        return {"a": 1}

    @app.route("/list")
    def listed() -> Any:
        return flask.Response([b"a", b"b"])

    @app.route("/generator")
    def generator() -> Any:
        return flask.Response(iter([b"a", b"b"]))

    @app.route("/with-context")
    def with_context() -> Any:
        return flask.Response(flask.stream_with_context(iter([b"a"])))

    @app.route("/passthrough")
    def passthrough() -> Any:
        response = flask.Response([b"a"])
        response.direct_passthrough = True
        return response

    return app


@pytest.mark.parametrize(
    "method, path, activates",
    [
        ("GET", "/text", False),
        ("GET", "/json", False),
        ("GET", "/list", False),
        ("HEAD", "/text", False),
        ("GET", "/missing", True),  # an HTTPException's response wraps its own iterator: the general way
        ("GET", "/generator", True),
        ("GET", "/with-context", True),
        ("GET", "/passthrough", True),
    ],
)
def test_only_a_body_that_runs_code_of_the_app_is_read_with_the_span_active(
    traced: Any, method: str, path: str, activates: bool
) -> None:
    app = _app()
    environ = EnvironBuilder(path=path, method=method).get_environ()
    body = app.wsgi_app(environ, lambda status, headers, exc_info=None: None)
    try:
        if type(body).__name__ == "ClosingBody":  # a plain body's wrapper in C (tracer/_cspan_body.c)
            assert not activates
        else:
            assert type(body).__name__ == "_ClosingBody" and body._activate is activates
        b"".join(body)
    finally:
        body.close()
    (tree,) = trees(traced)
    assert tree.startswith(f"flask.request paths_app '{method} "), tree


def test_an_app_called_with_the_same_environ_gives_the_outer_request_back(traced: Any) -> None:
    """An outer view calls an inner app's ``wsgi_app`` with its own environ:
    the inner request is traced inside the outer one, and the outer's hooks
    after it are still traced (the outer request is the current one again)."""
    inner = flask.Flask("inner_app")
    inner.add_url_rule("/inner", "inner_view", lambda: "inner")
    outer = flask.Flask("outer_app")

    @outer.route("/inner")
    def call_inner() -> Any:
        environ = flask.request.environ
        body = inner.wsgi_app(environ, lambda status, headers, exc_info=None: None)
        try:
            return b"".join(body)
        finally:
            body.close()

    @outer.after_request
    def after(response: Any) -> Any:
        return response

    response = outer.test_client().get("/inner")
    assert response.get_data() == b"inner"
    response.close()
    here = "test_an_app_called_with_the_same_environ_gives_the_outer_request_back.<locals>"
    assert trees(traced) == [
        "flask.request outer_app 'GET /inner' http.status_code=200\n"
        f"  flask.view outer_app '{here}.call_inner'\n"
        "    flask.request inner_app 'GET /inner' http.status_code=200\n"
        f"      flask.view inner_app '{here}.<lambda>'\n"
        f"  flask.after_request outer_app '{here}.after'"
    ]
