"""contrib/flask's per-call methods in C (issue 17, fifteenth session).

``_cspan.EnsureSync`` (Flask.ensure_sync): inside a request whose root span
is active, an endpoint's traced function comes back without the Python
wrapper's frame; everything else (no request, a span the app left active, a
function not seen yet, a function that cannot be looked up, odd arguments)
is decided by the Python wrapper, as without the C code.

``_cspan.StartResponse`` (RequestState.start_response): a matched route's
non-5xx status and its response-header tags are recorded in C; a 404, a
5xx, an ``exc_info``, a value beyond the length limit go to the Python
method.

``_cspan.Respond`` (RequestState.respond): a plain Werkzeug body (one bytes
chunk or none) is wrapped in C; any other body goes to the Python method
(tests/contrib/test_flask_body_c.py compares the two wrappers' behaviour).

The behaviour tests run in both modes (the pure-Python pass of CI runs this
file too)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from werkzeug.wsgi import ClosingIterator

from contrib.flask._request import RequestState
from tests.contrib.apps.flask_helpers import get_body, patched_for_module, trees
from tracer import _errors, tracer
from tracer.span import MAX_VALUE_LEN, _cspan


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


def _wrapper_calls(run: Any, raw: Any = None) -> int:
    """Calls of the Python function behind ``raw`` (default: the
    ensure_sync wrapper) while ``run()`` runs."""
    raw = raw or flask.Flask.__dict__["ensure_sync"]
    code = (raw.fallback if _cspan is not None else raw).__code__
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code is code:
            calls += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.skipif(_cspan is None, reason="the C span is not built (TRACER_PURE_PYTHON or no compiler)")
def test_the_endpoints_next_requests_never_enter_the_python_wrapper(traced: Any) -> None:
    """Each user function goes through the wrapper on its endpoint's first
    request (the rule is matched there, and the function traced); on the
    next ones the first ensure_sync call of a request still goes there (it
    matches the rule), the others are answered in C. Fails when the C look-up
    finds nothing (every call then goes to the wrapper)."""
    app = flask.Flask("ensure_sync_app")

    @app.before_request
    def before() -> None:
        pass

    @app.after_request
    def after(response: Any) -> Any:
        return response

    @app.route("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    assert _wrapper_calls(lambda: get_body(client, "/")) == 3
    assert _wrapper_calls(lambda: [get_body(client, "/") for _ in range(4)]) == 4  # one a request: the rule's match
    here = "test_the_endpoints_next_requests_never_enter_the_python_wrapper.<locals>"
    assert trees(traced, 5) == [
        "flask.request ensure_sync_app 'GET /' http.status_code=200\n"
        f"  flask.before_request ensure_sync_app '{here}.before'\n"
        f"  flask.view ensure_sync_app '{here}.index'\n"
        f"  flask.after_request ensure_sync_app '{here}.after'"
    ] * 5


def test_outside_a_request_it_is_flasks_ensure_sync() -> None:
    """No active span (a CLI command, a test calling it): Flask's own
    answer, the function itself for a sync one, bound or through the class."""
    app = flask.Flask("ensure_sync_outside")

    def hook() -> None:
        pass

    assert app.ensure_sync(hook) is hook
    assert flask.Flask.ensure_sync(app, hook) is hook
    assert app.ensure_sync(func=hook) is hook  # keywords: the wrapper binds them
    with pytest.raises(TypeError):
        app.ensure_sync()
    with pytest.raises(TypeError):
        app.ensure_sync(hook, hook)


def test_a_span_the_app_left_active_still_leads_to_the_request(traced: Any) -> None:
    """A before_request hook leaves a span of its own active: the C look-up
    (which reads the active span's request state only) passes, the wrapper
    finds the request from that span, and the view and after hook still get
    their spans, under the span left active (a child of the hook's span,
    the active one when the hook ran)."""
    app = flask.Flask("ensure_sync_left_active")

    @app.before_request
    def before() -> None:
        flask.g.span = tracer.start_span("app.kept", child_of=tracer.current_span(), activate=True)

    @app.after_request
    def after(response: Any) -> Any:
        flask.g.span.finish()
        return response

    @app.route("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    for _ in range(2):
        assert get_body(client, "/") == b"ok"
    here = "test_a_span_the_app_left_active_still_leads_to_the_request.<locals>"
    assert trees(traced, 2) == [
        "flask.request ensure_sync_left_active 'GET /' http.status_code=200\n"
        f"  flask.before_request ensure_sync_left_active '{here}.before'\n"
        "    app.kept ensure_sync_left_active 'app.kept'\n"
        f"      flask.view ensure_sync_left_active '{here}.index'\n"
        f"      flask.after_request ensure_sync_left_active '{here}.after'"
    ] * 2


class _Unhashable:
    """A callable hook that cannot be a dict key."""

    __hash__ = None  # type: ignore[assignment]
    __name__ = __qualname__ = "unhashable"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.mark.internal_errors
def test_a_hook_that_cannot_be_looked_up_runs_untraced(traced: Any) -> None:
    """Looking the function up raises (it is unhashable): the wrapper
    reports it (logged once) and hands the function back as Flask would;
    the request is served as without the tracer, its root span still sent.
    The endpoint's plan cannot be built either, so its view runs untraced
    too: as without the C code."""
    app = flask.Flask("ensure_sync_unhashable")
    hook = _Unhashable()
    app.before_request_funcs.setdefault(None, []).append(hook)

    @app.route("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    for _ in range(3):
        assert get_body(client, "/") == b"ok"
    assert hook.calls == 3
    assert {where for where, _ in _errors.swallowed} == {"flask.ensure_sync"}
    assert trees(traced, 3) == ["flask.request ensure_sync_unhashable 'GET /' http.status_code=200"] * 3


@pytest.mark.skipif(_cspan is None, reason="the C span is not built (TRACER_PURE_PYTHON or no compiler)")
def test_ensure_sync_checks_what_it_is_made_from() -> None:
    class NoSlot:
        traced: dict[Any, Any] = {}

    class Slotted:
        __slots__ = ("traced",)

    def fallback(self: Any, func: Any) -> Any:
        return func

    with pytest.raises(TypeError):
        _cspan.EnsureSync(fallback, NoSlot)
    with pytest.raises(TypeError):
        _cspan.EnsureSync(len, 1)
    with pytest.raises(TypeError):
        _cspan.EnsureSync(fallback)
    method = _cspan.EnsureSync(fallback, Slotted)
    assert method.fallback is fallback
    assert method(None, len) is len  # no request: the fallback


def _status_app(name: str) -> Any:
    app = flask.Flask(name)

    @app.before_request
    def before() -> None:
        pass  # the rule is matched (no rule, for a 404) before start_response

    @app.route("/ok")
    def ok() -> Any:
        return "ok", 200, {"X-Api": "v1", "X-Long": "x" * (MAX_VALUE_LEN + 5)}

    @app.route("/created")
    def created() -> Any:
        return "made", 201, {"x-api": "v2"}

    @app.route("/fail")
    def fail() -> str:
        raise RuntimeError("boom")

    return app


def _root_tags(traced: Any, n: int) -> list[tuple[str, str, dict[str, str]]]:
    """(resource, error, the tags start_response sets) of the last ``n``
    request spans, oldest first."""
    trees(traced, n)
    out = []
    for row in reversed(traced.wait_traces(n)):
        (root,) = [s for s in traced.spans(row["trace_id"]) if s["name"] == "flask.request"]
        meta = root["meta"]
        tags = {k: v for k, v in meta.items() if k in ("http.status_code", "api.version", "long") or k.startswith("error.type")}
        out.append((root["resource"], str(root["error"]), tags))
    return out


def test_start_response_records_the_status_and_the_header_tags(traced: Any, settings: Any) -> None:
    """The tags the request span gets from the response's status and
    headers, in each of start_response's cases."""
    settings.header_tags = {"x-api": "api.version", "x-long": "long"}
    client = _status_app("status_app").test_client()
    for path in ("/ok", "/created", "/missing", "/fail", "/ok"):
        get_body(client, path)
    long_tag = "x" * MAX_VALUE_LEN
    assert _root_tags(traced, 5) == [
        ("GET /ok", "0", {"http.status_code": "200", "api.version": "v1", "long": long_tag}),
        ("GET /created", "0", {"http.status_code": "201", "api.version": "v2"}),
        ("GET 404", "0", {"http.status_code": "404"}),
        ("GET /fail", "1", {"http.status_code": "500", "error.type": "builtins.RuntimeError"}),
        ("GET /ok", "0", {"http.status_code": "200", "api.version": "v1", "long": long_tag}),
    ]


@pytest.mark.skipif(_cspan is None, reason="the C span is not built (TRACER_PURE_PYTHON or no compiler)")
def test_start_response_leaves_only_the_unusual_cases_to_python(traced: Any, settings: Any) -> None:
    """A matched route's 2xx with header tags within the limits is recorded
    in C; a value beyond the limit, a 404 and a 500 go to the Python method.
    Fails when the C path declines its common case."""
    settings.header_tags = {"x-api": "api.version"}
    client = _status_app("status_c_app").test_client()
    raw = RequestState.__dict__["start_response"]
    assert type(raw) is _cspan.StartResponse
    assert _wrapper_calls(lambda: [get_body(client, "/created") for _ in range(3)], raw) == 0
    settings.header_tags = {"x-api": "api.version", "x-long": "long"}
    assert _wrapper_calls(lambda: get_body(client, "/ok"), raw) == 1
    assert _wrapper_calls(lambda: [get_body(client, p) for p in ("/missing", "/fail")], raw) == 2
    trees(traced, 6)


@pytest.mark.skipif(_cspan is None, reason="the C span is not built (TRACER_PURE_PYTHON or no compiler)")
def test_respond_wraps_a_plain_body_in_c_and_leaves_the_rest_to_python(traced: Any) -> None:
    """A str, an empty body (a 204: Werkzeug's ClosingIterator over an
    empty tuple), a one-chunk Response and a ClosingIterator over a one-chunk
    list are wrapped in C; two chunks and a generator go to the Python
    method. Every request span is sent, and none is left active or holding
    its request's state."""

    class ListBody(flask.Response):
        def get_app_iter(self, environ: Any) -> Any:
            return ClosingIterator([b"p"], self.close)

    app = flask.Flask("respond_app")
    app.add_url_rule("/text", "text", lambda: "ok")
    app.add_url_rule("/empty", "empty", lambda: ("", 204))
    app.add_url_rule("/chunk", "chunk", lambda: flask.Response(b"one"))
    app.add_url_rule("/list", "list", lambda: ListBody())
    app.add_url_rule("/chunks", "chunks", lambda: flask.Response([b"a", b"b"]))
    app.add_url_rule("/stream", "stream", lambda: flask.Response(iter([b"s"])))
    client = app.test_client()
    raw = RequestState.__dict__["respond"]
    assert type(raw) is _cspan.Respond
    bodies = [get_body(client, path) for path in ("/text", "/empty", "/chunk", "/list", "/chunks", "/stream")]
    assert bodies == [b"ok", b"", b"one", b"p", b"ab", b"s"]  # each endpoint's first request
    assert _wrapper_calls(lambda: [get_body(client, p) for p in ("/text", "/empty", "/chunk", "/list") * 2], raw) == 0
    assert _wrapper_calls(lambda: [get_body(client, p) for p in ("/chunks", "/stream")], raw) == 2
    assert tracer.current_span() is None
    got = trees(traced, 16)
    assert [tree.split(" ")[2] for tree in got] == ["'GET"] * 16
    assert all("http.status_code=" in tree for tree in got)


@pytest.mark.skipif(_cspan is None, reason="the C span is not built (TRACER_PURE_PYTHON or no compiler)")
def test_respond_checks_what_it_is_made_from() -> None:
    from contrib.flask import _request

    def fallback(self: Any, body: Any) -> Any:
        return body

    code = (lambda: None).__code__
    with pytest.raises(TypeError):
        _cspan.Respond(fallback, RequestState)
    with pytest.raises(TypeError):
        _cspan.Respond(fallback, RequestState, list, None, _cspan.ClosingBody)
    method = _cspan.Respond(fallback, RequestState, list, code, _cspan.ClosingBody)
    state = object.__new__(RequestState)
    assert method(state, [b"x"]) == [b"x"]  # not a ClosingIterator: the fallback
    assert _request._respond is not None
