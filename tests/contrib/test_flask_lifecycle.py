"""Each way a WSGI server can end (or fail to end) a response, driven by hand
on the app's WSGI callable, as a server would: the request span ends exactly
once with what it would carry anyway, and nothing stays active afterwards.
Real servers and clients that hang up: test_flask_hangups.py."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, g

import tracer as tracer_pkg
from contrib.flask._request import CLIENT_DISCONNECTED
from tests.contrib.apps.flask_helpers import patched_for_module
from tracer.context import ACTIVE_SPAN

pytestmark = pytest.mark.usefixtures("spans_in_memory")


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


@pytest.fixture
def app() -> Flask:
    app = Flask("lifecycle_app")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            for i in range(3):
                yield f"chunk{i}"

        return Response(body())

    @app.route("/badstream")
    def badstream() -> Response:
        def body() -> Iterator[str]:
            yield "first"
            raise RuntimeError("stream broke")

        return Response(body())

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("boom 7")

    @app.route("/leak")
    def leak() -> str:
        g.span = tracer_pkg.tracer.start_span("never.finished", activate=True)  # an app bug: never finished
        return "leaked"

    return app


def call(app: Flask, path: str) -> tuple[list[str], Any]:
    """Call the WSGI app as a server does, up to (not including) iterating the body."""
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
        "wsgi.url_scheme": "http", "wsgi.input": None, "wsgi.errors": None,
    }
    body = app.wsgi_app(environ, lambda s, h, *a: status.append(s))
    return status, body


def requests_of(sink: Any) -> list[Any]:
    return [s for s in sink.spans if s.name == "flask.request"]


def test_body_exhausted_without_close_ends_the_span(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/stream")
    assert b"".join(body) == b"chunk0chunk1chunk2"
    (span,) = requests_of(test_spans)  # ended at StopIteration: close() never came
    assert span.meta["http.status_code"] == "200" and CLIENT_DISCONNECTED not in span.meta
    body.close()  # a late close() ends nothing twice
    assert len(requests_of(test_spans)) == 1
    assert ACTIVE_SPAN.get() is None


def test_body_dropped_mid_stream_without_close(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/stream")
    assert next(iter(body)) == b"chunk0"
    assert ACTIVE_SPAN.get() is None  # between chunks the server's context is its own
    del body  # the server gave up on the client and never called close()
    gc.collect()
    (span,) = requests_of(test_spans)
    assert (span.meta["http.status_code"], span.meta[CLIENT_DISCONNECTED], span.error) == ("200", "true", 0)


def test_body_closed_mid_stream(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/stream")
    assert next(iter(body)) == b"chunk0"
    body.close()  # the client hung up: the server closes an unfinished body
    (span,) = requests_of(test_spans)
    assert span.meta[CLIENT_DISCONNECTED] == "true" and span.error == 0


def test_body_closed_before_iteration_is_not_a_disconnect(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/stream")
    body.close()
    (span,) = requests_of(test_spans)
    assert CLIENT_DISCONNECTED not in span.meta


def test_exception_inside_the_body_is_recorded(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/badstream")
    it = iter(body)
    assert next(it) == b"first"
    with pytest.raises(RuntimeError, match="stream broke"):
        next(it)
    (span,) = requests_of(test_spans)
    assert (span.error, span.meta["error.type"], span.meta["error.message"]) == (1, "builtins.RuntimeError", "stream broke")
    assert span.meta["http.status_code"] == "200"  # what was sent
    assert ACTIVE_SPAN.get() is None


def test_error_sent_without_close_keeps_flask_error(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/boom")
    assert status[0].startswith("500")
    b"".join(body)  # sent; close() never called (Werkzeug after a client reset)
    (span,) = requests_of(test_spans)
    assert (span.error, span.meta["error.type"], span.meta["http.status_code"]) == (1, "builtins.ValueError", "500")


def test_a_leaked_span_is_never_the_next_request_parent(app: Flask, test_spans: Any) -> None:
    status, body = call(app, "/leak")
    assert b"".join(body) == b"leaked"
    body.close()
    assert ACTIVE_SPAN.get() is None  # the app's unfinished span did not outlive its request
    with tracer_pkg.tracer.trace("after.request") as after:
        pass
    assert after.parent_id == 0
    status, body = call(app, "/stream")
    b"".join(body)
    first, second = requests_of(test_spans)
    assert second.parent_id == 0 and second.trace_id != first.trace_id


def test_a_request_span_left_active_by_another_path_is_dropped(app: Flask, test_spans: Any) -> None:
    # As if an older tracer version or another server path had leaked it.
    leaked = tracer_pkg.tracer.start_span("flask.request", activate=True)
    try:
        status, body = call(app, "/stream")
        b"".join(body)
        (span,) = requests_of(test_spans)
        assert span.parent_id == 0 and span.trace_id != leaked.trace_id
        assert ACTIVE_SPAN.get() is None
    finally:
        leaked.finish()
