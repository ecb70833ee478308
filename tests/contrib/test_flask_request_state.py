"""Where the Flask integration finds the request being served: on the root
span of the request (``span._request``, ``contrib.flask._request.request_state``)
from the active span up its parents and activations, set from the start of
the WSGI call until it returns (it was a ContextVar of the integration).
What it finds is pinned against the old code (the hook trees under a span
the app left active, the exception a 500 reports: those tests pass on both);
what is new (the state's lifetime on the span, no ContextVar of ours, a
copy of a root span without it) fails on the old code."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import flask
import pytest

import tracer as tracer_pkg
from contrib.flask._request import request_state
from tests.contrib.apps.flask_helpers import patched_for_module, trees
from tracer.context import ACTIVE_SPAN

HERE = "{}.<locals>"


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


@pytest.mark.parametrize("same_trace", [True, False])
def test_hooks_are_traced_under_a_span_the_app_left_active(traced: Any, same_trace: bool) -> None:
    """A before_request hook activates a span and never finishes it (it
    stays active after the hook's span ends): the view and after_request
    spans are still made, as its children, and the request still gets its
    route and status. Made by ``trace()``, the span is in the request's
    trace; by ``start_span(activate=True)``, it is the root of a trace of
    its own, which then holds them (as when the request was found from a
    ContextVar of its own)."""
    app = flask.Flask("state_app")
    left: list[Any] = []

    @app.before_request
    def opens() -> None:
        tracer = tracer_pkg.tracer
        # An app bug: never finished.
        left.append(tracer.trace("app.work") if same_trace else tracer.start_span("app.work", activate=True))

    @app.route("/users/<int:user_id>")
    def view(user_id: int) -> str:
        return "ok"

    @app.after_request
    def after(response: Any) -> Any:
        return response

    response = app.test_client().get("/users/7")
    assert response.get_data() == b"ok"
    response.close()
    assert ACTIVE_SPAN.get() is None
    left[0].finish()
    here = HERE.format("test_hooks_are_traced_under_a_span_the_app_left_active")
    request = (
        "flask.request state_app 'GET /users/<int:user_id>' http.status_code=200\n"
        f"  flask.before_request state_app '{here}.opens'"
    )
    hooks = f"flask.view state_app '{here}.view'", f"flask.after_request state_app '{here}.after'"
    if same_trace:
        assert trees(traced) == [request + "\n    app.work state_app 'app.work'\n" + "\n".join(f"      {h}" for h in hooks)]
    else:
        assert sorted(trees(traced, 2)) == sorted(
            [request, "app.work python 'app.work'\n" + "\n".join(f"  {h}".replace("state_app", "python") for h in hooks)]
        )


def test_the_state_lives_on_the_root_span_until_the_wsgi_call_returns(traced: Any) -> None:
    app = flask.Flask("state_app")
    seen: list[Any] = []

    @app.route("/")
    def view() -> str:
        root = tracer_pkg.tracer.current_root_span()
        seen.append((root, root._request, request_state(tracer_pkg.tracer.current_span())))
        return "ok"

    response = app.test_client().get("/")
    assert response.get_data() == b"ok"
    ((root, state, found),) = seen
    assert state is not None and found is state and state.span is root
    # Returned: the span lets go of the state (which holds the span: no
    # cycle left for the GC), and nothing finds it any more.
    assert root._request is None and request_state(root) is None
    response.close()
    assert root.finished and root._request is None
    trees(traced)


@pytest.mark.parametrize("handled", [False, True])
def test_a_failing_before_request_hook_is_what_the_request_reports(traced: Any, handled: bool) -> None:
    """The hook's exception makes the 500: the request span records that
    exception, whether Flask's 500 path (``handle_exception``) saw it or an
    error handler of the app turned it into a 500 response itself (then
    only the hook's span saw it: found through its parent)."""
    app = flask.Flask("state_app")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.before_request
    def fails() -> None:
        raise LookupError("no such tenant")

    @app.route("/")
    def view() -> str:
        return "never"

    if handled:
        app.register_error_handler(LookupError, lambda exc: ("unavailable", 500))
    response = app.test_client().get("/")
    assert response.status_code == 500
    response.close()
    (tree,) = trees(traced, tags=("http.status_code", "error.type", "error.message"))
    assert tree.splitlines()[0] == (
        "flask.request state_app 'GET /' [error] http.status_code=500 error.type=builtins.LookupError "
        "error.message=no such tenant"
    ), tree


def test_spans_made_outside_a_request_find_no_state() -> None:
    assert request_state(None) is None
    with tracer_pkg.tracer.trace("outside") as outer, tracer_pkg.tracer.trace("child") as inner:
        assert outer._request is None and request_state(inner) is None


def test_a_request_sets_no_context_variable_of_the_integration(traced: Any) -> None:
    """The tracer's active span is the only variable of ours in a request's
    context (the integration's own, set and reset per request, was two of
    its ContextVar writes; every copy of the context carried it too)."""
    app = flask.Flask("state_app")

    @app.route("/")
    def view() -> str:
        return ",".join(sorted(var.name for var in contextvars.copy_context()))

    response = app.test_client().get("/")
    names = response.get_data(as_text=True).split(",")
    response.close()
    assert [name for name in names if name.startswith("tracer")] == ["tracer_active_span"], names
    trees(traced)


@pytest.mark.parametrize("left", ["none", "same_trace", "other_trace", "deep"])
def test_an_exception_outside_any_hook_is_what_the_request_reports(traced: Any, left: str) -> None:
    """A view returning None makes Flask raise a TypeError after the view's
    span ended: only ``handle_exception`` sees it, and finds the request from
    the active span, whatever span the view left active (one of its trace,
    one of another, or 70 nested ones: the walk up parents is not bounded)."""
    app = flask.Flask("state_app")
    app.config["PROPAGATE_EXCEPTIONS"] = False
    tracer = tracer_pkg.tracer
    left_open: list[Any] = []

    @app.route("/")
    def view() -> Any:
        if left == "same_trace":
            left_open.append(tracer.trace("app.work"))
        elif left == "other_trace":
            left_open.append(tracer.start_span("app.work", activate=True))
        elif left == "deep":
            left_open.extend(tracer.trace(f"app.level{i}") for i in range(70))
        return None  # Flask: "The view function did not return a valid response"

    response = app.test_client().get("/")
    assert response.status_code == 500
    response.close()
    for span in reversed(left_open):
        span.finish()
    rows = trees(traced, 2 if left == "other_trace" else 1, tags=("http.status_code", "error.type"))
    (request,) = [tree for tree in rows if tree.startswith("flask.request")]
    assert request.splitlines()[0] == (
        "flask.request state_app 'GET /' [error] http.status_code=500 error.type=builtins.TypeError"
    ), request


def test_a_copy_of_a_request_span_holds_no_state(traced: Any) -> None:
    import copy

    app = flask.Flask("state_app")
    copies: list[Any] = []

    @app.route("/")
    def view() -> str:
        copies.append(copy.copy(tracer_pkg.tracer.current_root_span()))
        return "ok"

    response = app.test_client().get("/")
    response.close()
    (twin,) = copies
    assert twin.name == "flask.request" and twin._request is None and request_state(twin) is None
    trees(traced)
