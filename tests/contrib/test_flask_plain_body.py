"""A plain body (one bytes chunk from ``set_data``: a view returning str, a
dict or a template; or no body: HEAD) is read through ``itertools.chain``
instead of a generator (``_ClosingBody.__iter__``): each way a server can end
it ends the request span as the generator did (test_flask_lifecycle.py for
streamed bodies), and a body that can fail while read (a str item, encoded
then) is not plain, so its exception is still recorded."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response

from contrib.flask._request import CLIENT_DISCONNECTED
from tests.contrib.apps.flask_helpers import patched_for_module
from tests.contrib.test_flask_paths import _app as paths_app
from tracer.context import ACTIVE_SPAN

pytestmark = pytest.mark.usefixtures("spans_in_memory")


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


class _Unsized(Response):
    automatically_set_content_length = False  # else Werkzeug encodes the items to count them


@pytest.fixture
def app() -> Flask:
    """test_flask_paths' app (/text, /json, /list: two bytes chunks, ...)
    and two bodies of str items."""
    app: Flask = paths_app()

    @app.route("/str-item")
    def str_item() -> Response:
        return Response(["é"])  # a str item: encoded while the server reads it

    @app.route("/unencodable")
    def unencodable() -> Response:
        return _Unsized(["\ud800"])  # encoded while the server reads it: fails then

    return app


def call(app: Flask, path: str, method: str = "GET") -> Any:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
        "wsgi.url_scheme": "http", "wsgi.input": None, "wsgi.errors": None,
    }
    return app.wsgi_app(environ, lambda s, h, *a: None)


def requests_of(sink: Any) -> list[Any]:
    return [s for s in sink.spans if s.name == "flask.request"]


@pytest.mark.parametrize(
    "method, path, plain",
    [("GET", "/text", True), ("GET", "/json", True), ("HEAD", "/text", True), ("GET", "/list", False),
     ("GET", "/str-item", False)],
)
def test_which_bodies_are_plain(app: Flask, test_spans: Any, method: str, path: str, plain: bool) -> None:
    body = call(app, path, method)
    assert body._plain is plain and body._activate is False
    body.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_exhausted_without_close_ends_the_span_at_the_end(app: Flask, test_spans: Any, method: str) -> None:
    body = call(app, "/text", method)
    assert b"".join(body) == (b"ok" if method == "GET" else b"")
    (span,) = requests_of(test_spans)  # ended when the chunks ran out: close() never came
    assert span.meta["http.status_code"] == "200" and CLIENT_DISCONNECTED not in span.meta
    body.close()  # a late close() ends nothing twice
    assert len(requests_of(test_spans)) == 1 and ACTIVE_SPAN.get() is None


def test_closed_after_the_chunk_before_the_end_is_a_disconnect(app: Flask, test_spans: Any) -> None:
    body = call(app, "/text")
    assert next(iter(body)) == b"ok"
    assert requests_of(test_spans) == []  # the end not reached yet
    body.close()
    (span,) = requests_of(test_spans)
    assert span.meta[CLIENT_DISCONNECTED] == "true" and span.error == 0


def test_closed_before_iteration_is_not_a_disconnect(app: Flask, test_spans: Any) -> None:
    body = call(app, "/text")
    body.close()
    (span,) = requests_of(test_spans)
    assert CLIENT_DISCONNECTED not in span.meta


def test_dropped_after_the_chunk_without_close(app: Flask, test_spans: Any) -> None:
    body = call(app, "/text")
    assert next(iter(body)) == b"ok"
    del body
    gc.collect()
    (span,) = requests_of(test_spans)
    assert (span.meta[CLIENT_DISCONNECTED], span.error) == ("true", 0)


def test_a_body_that_fails_while_read_has_its_exception_recorded(app: Flask, test_spans: Any) -> None:
    body = call(app, "/unencodable")
    with pytest.raises(UnicodeEncodeError):
        b"".join(body)
    (span,) = requests_of(test_spans)
    assert (span.error, span.meta["error.type"]) == (1, "builtins.UnicodeEncodeError")
    body.close()
