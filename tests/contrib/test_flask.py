"""Flask integration through Flask's test client, traces read back from a real
agent_sim receiver (the ``traced`` fixture). Real servers: test_flask_servers.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import tracer as tracer_pkg
from tests.contrib.apps.flask_helpers import load_app, patched_for_module, root_of, stable_meta, trees
from tests.contrib.contract import IntegrationContract
from tests.utils import free_port
from tracer.encoding import encode_v04
from tracer.span import MAX_VALUE_LEN, RECORD_LEN, _cspan


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask", "requests")


@pytest.fixture(scope="module")
def app() -> Any:
    return load_app("flask_app").app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def get(client: Any, path: str, **kwargs: Any) -> tuple[int, bytes]:
    response = client.get(path, **kwargs)
    try:
        return response.status_code, response.get_data()
    finally:
        response.close()  # as a WSGI server does: ends the request span


def one_trace(receiver: Any) -> list[dict[str, Any]]:
    assert tracer_pkg.tracer.flush(10)
    (row,) = receiver.wait_traces(1)
    return receiver.spans(row["trace_id"])


def test_plain_route_tree_and_tags(traced: Any, client: Any) -> None:
    assert get(client, "/") == (200, b"hello")
    assert trees(traced) == [
        "flask.request flask_app 'GET /' http.status_code=200\n"
        "  flask.view flask_app 'index'"
    ]
    spans = one_trace(traced)
    root = root_of(spans)
    assert (root["type"], root["error"]) == ("web", 0)
    assert stable_meta(root) == {
        "component": "flask",
        "span.kind": "server",
        "http.method": "GET",
        "http.url": "http://localhost/",
        "http.route": "/",
        "http.status_code": "200",
        "http.useragent": root["meta"]["http.useragent"],
        "flask.endpoint": "index",
    }
    assert root["meta"]["http.useragent"].startswith("Werkzeug/")
    assert root["metrics"]["_dd.measured"] == 1
    (view,) = [s for s in spans if s["name"] == "flask.view"]
    assert (view["type"], view["meta"]["component"]) == ("web", "flask")


def test_path_parameter(traced: Any, client: Any) -> None:
    assert get(client, "/users/42") == (200, b'{"id":42}\n')
    assert trees(traced, tags=("http.route", "flask.view_args.user_id")) == [
        "flask.request flask_app 'GET /users/<int:user_id>' http.route=/users/<int:user_id>\n"
        "  flask.view flask_app 'get_user'"
    ]


def test_view_args_tags_when_enabled(traced: Any, client: Any, settings: Any) -> None:
    settings.flask_view_args = True
    get(client, "/api/items/lamp")
    root = root_of(one_trace(traced))
    assert root["meta"]["flask.view_args.name"] == "lamp"


def test_blueprint_route_with_hooks(traced: Any, client: Any) -> None:
    assert get(client, "/api/items/lamp") == (200, b'{"item":"lamp"}\n')
    assert trees(traced, tags=("http.route", "flask.endpoint")) == [
        "flask.request flask_app 'GET /api/items/<name>' http.route=/api/items/<name> flask.endpoint=api.get_item\n"
        "  flask.before_request flask_app 'authenticate'\n"
        "  flask.view flask_app 'get_item'\n"
        "  flask.after_request flask_app 'add_header'\n"
        "  flask.teardown_request flask_app 'release'"
    ]


def test_unknown_url_is_404_resource(traced: Any, client: Any) -> None:
    assert get(client, "/no/such/page")[0] == 404
    assert trees(traced) == ["flask.request flask_app 'GET 404' http.status_code=404"]
    root = root_of(one_trace(traced))
    assert "http.route" not in root["meta"]


def test_abort_403_is_not_an_error(traced: Any, client: Any) -> None:
    assert get(client, "/forbidden")[0] == 403
    assert trees(traced) == [
        "flask.request flask_app 'GET /forbidden' http.status_code=403\n"
        "  flask.view flask_app 'forbidden'"
    ]


def test_unhandled_exception_is_a_500_error(traced: Any, client: Any) -> None:
    status, body = get(client, "/boom")
    assert status == 500 and b"Internal Server Error" in body
    assert trees(traced) == [
        "flask.request flask_app 'GET /boom' [error] http.status_code=500 error.type=builtins.ValueError\n"
        "  flask.view flask_app 'boom' [error] error.type=builtins.ValueError"
    ]
    root = root_of(one_trace(traced))
    assert root["meta"]["error.message"] == "boom"
    assert "raise ValueError" in root["meta"]["error.stack"]


def test_error_handler_returning_200(traced: Any, client: Any) -> None:
    assert get(client, "/handled") == (200, b"recovered: handled it")
    assert trees(traced) == [
        "flask.request flask_app 'GET /handled' http.status_code=200\n"
        "  flask.view flask_app 'handled' [error] error.type=flask_app.Handled\n"
        "  flask.handle_exception flask_app 'on_handled'"
    ]


def test_exception_escaping_the_wsgi_app_propagates_unchanged(traced: Any, app: Any) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = True
    try:
        with pytest.raises(ValueError, match="^boom$"):
            app.test_client().get("/boom")
    finally:
        app.config["PROPAGATE_EXCEPTIONS"] = False
    assert trees(traced) == [
        "flask.request flask_app 'GET /boom' [error] error.type=builtins.ValueError\n"
        "  flask.view flask_app 'boom' [error] error.type=builtins.ValueError"
    ]


def test_streamed_response_duration_covers_the_stream(traced: Any, client: Any) -> None:
    assert get(client, "/stream") == (200, b"chunk0\nchunk1\nchunk2\n")
    spans = one_trace(traced)
    root = root_of(spans)
    (view,) = [s for s in spans if s["name"] == "flask.view"]
    assert root["duration_ns"] >= 150_000_000  # three 50 ms sleeps while streaming
    assert view["duration_ns"] < 50_000_000  # the view only built the generator
    # Work done while streaming joins the request (the span is active again).
    assert trees(traced) == [
        "flask.request flask_app 'GET /stream' http.status_code=200\n"
        "  flask.view flask_app 'stream'\n"
        "  flask.render_template flask_app '<string>'\n"
        "  flask.render_template flask_app '<string>'\n"
        "  flask.render_template flask_app '<string>'"
    ]


class _ServerFileWrapper:
    """A server's ``wsgi.file_wrapper`` (gunicorn's shape: filelike, blksize)."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.blksize), b"")

    def close(self) -> None:
        self.filelike.close()


def test_file_wrapper_body_kept_for_the_server(traced: Any, app: Any) -> None:
    seen: list[Any] = []
    wsgi_app = app.wsgi_app

    def server(environ: dict[str, Any], start_response: Any) -> Any:
        body = wsgi_app(environ, start_response)
        seen.append(body)  # what a server would test for sendfile()
        return body

    app.wsgi_app = server
    try:
        response = app.test_client().get("/file", environ_overrides={"wsgi.file_wrapper": _ServerFileWrapper})
        assert (response.status_code, response.get_data()) == (200, b"<p>Hello {{ name }}!</p>\n")
        assert tracer_pkg.tracer.flush(10)
        assert traced.traces() == []  # the request span waits for close()
        response.close()
    finally:
        del app.wsgi_app
    assert type(seen[0]) is _ServerFileWrapper
    assert trees(traced) == ["flask.request flask_app 'GET /file' http.status_code=200\n  flask.view flask_app 'file'"]


def test_template_render(traced: Any, client: Any) -> None:
    assert get(client, "/template") == (200, b"<p>Hello world!</p>")
    assert get(client, "/template-string") == (200, b"<b>42</b>")
    assert trees(traced, n=2, tags=("flask.template_name",)) == [
        "flask.request flask_app 'GET /template'\n"
        "  flask.view flask_app 'template'\n"
        "    flask.render_template flask_app 'hello.html' flask.template_name=hello.html",
        "flask.request flask_app 'GET /template-string'\n"
        "  flask.view flask_app 'template_string'\n"
        "    flask.render_template flask_app '<string>' flask.template_name=<string>",
    ]
    spans = [s for row in traced.traces() for s in traced.spans(row["trace_id"])]
    assert {s["type"] for s in spans if s["name"] == "flask.render_template"} == {"template"}


def test_query_string_secrets_redacted(traced: Any, client: Any) -> None:
    get(client, "/users/1?page=2&api_key=s3cr3t&token=abc")
    root = root_of(one_trace(traced))
    assert root["meta"]["http.url"] == "http://localhost/users/1?page=2&api_key=<redacted>&token=<redacted>"


def test_header_tags(traced: Any, client: Any, settings: Any) -> None:
    settings.header_tags = {"x-request-id": None, "x-api": "api.answered"}
    get(client, "/api/items/x", headers={"X-Request-Id": "req-1"})
    meta = root_of(one_trace(traced))["meta"]
    assert meta["http.request.headers.x-request-id"] == "req-1"
    assert meta["api.answered"] == "1"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-datadog-trace-id": "12345", "x-datadog-parent-id": "67890", "x-datadog-sampling-priority": "1"},
        {"traceparent": "00-00000000000000000000000000003039-0000000000010932-03"},
    ],
    ids=["datadog", "w3c-flags-03"],
)
def test_distributed_tracing_continues_the_callers_trace(traced: Any, client: Any, headers: dict[str, str]) -> None:
    get(client, "/", headers=headers)
    (request_span,) = [s for s in one_trace(traced) if s["name"] == "flask.request"]
    assert request_span["trace_id"].endswith(f"{12345:016x}")
    # The remote parent is not in the receiver; the link to it is kept.
    assert request_span["parent_id"] == f"{67890:016x}"


def test_distributed_tracing_off(traced: Any, client: Any, settings: Any) -> None:
    settings.distributed_tracing = False
    get(client, "/", headers={"x-datadog-trace-id": "12345", "x-datadog-parent-id": "67890"})
    (request_span,) = [s for s in one_trace(traced) if s["name"] == "flask.request"]
    assert request_span["parent_id"] is None
    assert not request_span["trace_id"].endswith(f"{12345:016x}")


def test_service_name_settings(traced: Any, client: Any, settings: Any) -> None:
    settings.service = "process-svc"
    get(client, "/")
    settings.flask_service = "web-svc"
    get(client, "/")
    assert trees(traced, n=2) == [
        "flask.request process-svc 'GET /' http.status_code=200\n  flask.view process-svc 'index'",
        "flask.request web-svc 'GET /' http.status_code=200\n  flask.view web-svc 'index'",
    ]


def test_receiver_down_responses_unchanged(app: Any, settings: Any) -> None:
    paths = ["/", "/users/3", "/api/items/a", "/forbidden", "/boom", "/handled", "/stream", "/template", "/nope"]
    settings.agent_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.writer_timeout = 0.5
    tracer_pkg.tracer._reset_writer()
    try:
        client = app.test_client()
        traced_results = [get(client, p) for p in paths]
        tracer_pkg.tracer.flush(3)
        tracer_pkg.unpatch(flask=True)
        try:
            plain_results = [get(client, p) for p in paths]
        finally:
            tracer_pkg.patch(flask=True)
    finally:
        tracer_pkg.tracer._reset_writer()
    assert traced_results == plain_results
    assert [status for status, _ in traced_results] == [200, 200, 200, 403, 500, 200, 200, 200, 404]


_EXERCISE = '''
import io, logging, sys
logging.disable(logging.CRITICAL)  # Flask logs the /boom traceback

def exercise():
    import flask

    app = flask.Flask("contract_app")

    @app.before_request
    def before():
        pass

    @app.route("/u/<int:uid>")
    def user(uid):
        return flask.render_template_string("u{{ uid }}", uid=uid)

    @app.route("/boom")
    def boom():
        raise KeyError("k")

    @app.route("/gone")
    def gone():
        flask.abort(410)

    out = []
    client = app.test_client()
    for path in ("/u/1", "/boom", "/gone", "/missing"):
        response = client.get(path)
        out.append([response.status_code, response.get_data(as_text=True)[:40]])
        response.close()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    try:
        client.get("/boom")
    except KeyError as exc:
        out.append(["raised", repr(exc)])
    return out
'''


class TestFlaskContract(IntegrationContract):
    integration = "flask"
    module = "flask"
    span_name = "flask.request"
    spans_per_exercise = 5
    exercise_code = _EXERCISE


def test_class_based_view_and_nested_blueprint(traced: Any) -> None:
    import flask
    from flask.views import MethodView

    app = flask.Flask("nested_app")
    outer = flask.Blueprint("outer", __name__, url_prefix="/outer")
    inner = flask.Blueprint("inner", __name__, url_prefix="/inner")

    class Thing(MethodView):
        def get(self, thing_id: int) -> str:
            return f"thing {thing_id}"

    @outer.before_request
    def outer_hook() -> None:
        pass

    @inner.before_request
    def inner_hook() -> None:
        pass

    inner.add_url_rule("/things/<int:thing_id>", view_func=Thing.as_view("thing"))
    outer.register_blueprint(inner)
    app.register_blueprint(outer)
    assert get(app.test_client(), "/outer/inner/things/9") == (200, b"thing 9")
    # One view span per request, named after the class, and the hooks of both
    # blueprints, outer first (Flask's order).
    assert trees(traced, tags=("flask.endpoint",)) == [
        "flask.request nested_app 'GET /outer/inner/things/<int:thing_id>' flask.endpoint=outer.inner.thing\n"
        "  flask.before_request nested_app 'test_class_based_view_and_nested_blueprint.<locals>.outer_hook'\n"
        "  flask.before_request nested_app 'test_class_based_view_and_nested_blueprint.<locals>.inner_hook'\n"
        "  flask.view nested_app 'test_class_based_view_and_nested_blueprint.<locals>.Thing'"
    ]


def test_async_views_and_hooks_every_request(traced: Any) -> None:
    # Flask runs coroutine functions through async_to_sync (asgiref when
    # installed; asyncio.run here): ensure_sync returns a new callable each
    # time, so only sync functions may come from the traced-function cache.
    import asyncio
    import functools

    import flask

    class AsyncioFlask(flask.Flask):
        def async_to_sync(self, func: Any) -> Any:
            @functools.wraps(func)
            def run(*args: Any, **kwargs: Any) -> Any:
                return asyncio.run(func(*args, **kwargs))

            return run

    app = AsyncioFlask("async_app")

    @app.before_request
    async def async_hook() -> None:
        await asyncio.sleep(0)

    @app.route("/async/<int:n>")
    async def async_view(n: int) -> str:
        await asyncio.sleep(0)
        return f"async {n}"

    client = app.test_client()
    for n in (1, 2):  # the second request takes the cached path
        assert get(client, f"/async/{n}") == (200, f"async {n}".encode())
    assert trees(traced, 2) == 2 * [
        "flask.request async_app 'GET /async/<int:n>' http.status_code=200\n"
        "  flask.before_request async_app 'test_async_views_and_hooks_every_request.<locals>.async_hook'\n"
        "  flask.view async_app 'test_async_views_and_hooks_every_request.<locals>.async_view'"
    ]


def test_a_sampling_decision_only_header_starts_a_new_trace(traced: Any, client: Any) -> None:
    # b3 single header "0" / "1": a decision without a trace to continue. The
    # C root builder hands such a context back (None), start_span takes it:
    # the request is traced in a new trace that keeps the caller's decision.
    get(client, "/", headers={"b3": "0"})
    get(client, "/", headers={"b3": "1"})
    spans = one_trace(traced)  # the "0" trace was sampled out
    (request_span,) = [s for s in spans if s["name"] == "flask.request"]
    assert request_span["parent_id"] is None and len(spans) == 2
    assert [s["metrics"].get("_sampling_priority_v1") for s in spans if s["name"] == "flask.view"] == [1]
    # "1" is also what the default sampling gives: "d" (debug, 2) shows that
    # the header's decision is the one kept.
    get(client, "/", headers={"b3": "d"})
    assert tracer_pkg.tracer.flush(10)
    (row,) = [r for r in traced.wait_traces(2) if r["trace_id"] != request_span["trace_id"]]
    debug = traced.spans(row["trace_id"])
    assert [s["metrics"].get("_sampling_priority_v1") for s in debug if s["name"] == "flask.view"] == [2]


def test_view_args_tags_are_cut_as_set_tag_cuts_them(test_spans: Any, client: Any, settings: Any) -> None:
    # In memory and as encoded: the receiver cuts long values too, which would hide ours.
    settings.flask_view_args = True
    get(client, "/api/items/" + "n" * (MAX_VALUE_LEN + 10))
    get(client, "/users/7")
    long, short = (s for s in test_spans.spans if s.name == "flask.request")
    value = long.meta["flask.view_args.name"]
    # The C span cuts it when set; the pure-Python one when it is encoded.
    kept = MAX_VALUE_LEN if _cspan is not None else MAX_VALUE_LEN + 10
    assert (len(value), set(value)) == (kept, {"n"})  # not the value itself: 25,000 characters
    (chunk,) = [c for _, c in test_spans.raw if long.span_id in c[1::RECORD_LEN]]
    (sent,) = msgpack.unpackb(encode_v04([chunk]))
    value = next(s["meta"] for s in sent if s["name"] == "flask.request")["flask.view_args.name"]
    assert (len(value), set(value)) == (MAX_VALUE_LEN, {"n"})
    assert short.meta["flask.view_args.user_id"] == "7"
