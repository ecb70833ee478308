"""The Flask request path's cost, counted rather than timed: Python-level
calls of ``contrib/`` per request (cProfile), deterministic on a loaded
machine where timings are noise. The figures of ``bench_flask.py --profile``;
the budget is the redesigned path's (issue 17: 41 before it), so a change that
adds per-request calls has to say so here."""

from __future__ import annotations

import cProfile
import inspect
import os
import pstats
import types
from collections.abc import Iterator
from typing import Any

import flask
import pytest

import tracer as tracer_pkg
from tests.contrib.apps.flask_helpers import patched_for_module, trees
from tests.utils import REPO
from tracer.config import config
from tracer.span import _cspan

# Request span + before_request, view, after_request spans, with view-arg and
# header tags on (the benchmark's app and settings). 19 before the body's
# generator became its __iter__ (one frame less) and _runs_no_user_code came
# in (one more, for no ContextVar writes while the body is read); 18 before
# the request state and the body wrapper were built without an __init__
# call and _runs_no_user_code was folded into respond (two fewer).
CONTRIB_CALLS_PER_REQUEST = 16
# With the C span, each hook and view span is a _cspan.TracedCall (no Python
# frame, tracer/_cspan_call.c): three calls fewer (15 before the two above).
# A plain body's wrapper is a _cspan.ClosingBody (tracer/_cspan_body.c): its
# __iter__, _BodyEnd.__iter__, close() and __del__ frames gone (13 before).
CONTRIB_CALLS_PER_REQUEST_C = 9
# Python calls in tracer/ per request with the C span: the sink's and the
# writer's write() only. The request span starts in C (no start_span frame)
# and, finishing last, hands its trace to the sink in C (no _Trace._flush,
# no started_count): 5 before.
TRACER_CALLS_PER_REQUEST_C = 2
REQUESTS = 50


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


@pytest.fixture
def settings() -> Iterator[Any]:
    saved = dict(vars(config))
    config.flask_view_args = True
    config.header_tags = {"x-request-id": None}
    yield config
    for key, value in saved.items():
        setattr(config, key, value)


def before() -> None:
    pass


def after(response: Any) -> Any:
    return response


def user(user_id: int) -> str:
    return "ok"


def _app() -> Any:
    app = flask.Flask("cost_app")
    app.before_request(before)
    app.after_request(after)
    app.add_url_rule("/users/<int:user_id>", view_func=user)
    return app


def _contrib_calls(stats: Any, package: str = "contrib") -> dict[str, int]:
    contrib = os.path.join(REPO, package) + os.sep
    return {
        f"{os.path.relpath(filename, REPO)}:{line}({name})": calls
        for (filename, line, name), (_cc, calls, _own, _cum, _callers) in stats.stats.items()
        if filename.startswith(contrib)
    }


def test_calls_per_request_within_budget(traced: Any, settings: Any) -> None:
    client = _app().test_client()
    headers = {"X-Request-Id": "abc123"}

    def requests(n: int) -> None:
        for _ in range(n):
            response = client.get("/users/42", headers=headers)
            assert response.get_data() == b"ok"
            response.close()

    requests(3)  # plans and traced hooks built, outside the count
    profiler = cProfile.Profile()
    profiler.runcall(requests, REQUESTS)
    stats = pstats.Stats(profiler)
    calls = _contrib_calls(stats)
    per_request = sum(calls.values()) / REQUESTS
    detail = "\n".join(f"{count / REQUESTS:5.2f} {where}" for where, count in sorted(calls.items()))
    # + 0.5: a stray call now and then (3.13 once counted 51 wsgi_app calls for 50 requests:
    # 23.02 against 23) is not a call per request; one more per request still fails.
    budget = CONTRIB_CALLS_PER_REQUEST if _cspan is None else CONTRIB_CALLS_PER_REQUEST_C
    assert per_request < budget + 0.5, f"{per_request} calls of contrib/ per request:\n{detail}"
    if _cspan is not None:
        ours = _contrib_calls(stats, "tracer")
        per_request = sum(ours.values()) / REQUESTS
        detail = "\n".join(f"{count / REQUESTS:5.2f} {where}" for where, count in sorted(ours.items()))
        assert per_request < TRACER_CALLS_PER_REQUEST_C + 0.5, f"{per_request} calls of tracer/ per request:\n{detail}"

    # The spans are what they were: the count was not bought by dropping work.
    assert tracer_pkg.tracer.flush(10)
    traced.wait_traces(3 + REQUESTS)
    tree = trees(traced)[-1]
    assert tree == (
        "flask.request cost_app 'GET /users/<int:user_id>' http.status_code=200\n"
        "  flask.before_request cost_app 'before'\n"
        "  flask.view cost_app 'user'\n"
        "  flask.after_request cost_app 'after'"
    ), tree


def test_the_per_request_targets_are_plain_functions() -> None:
    # A wrapt wrapper on a method builds a bound-wrapper object per call
    # (≈ 1.5 µs, 4 calls per request: 47 k of 213 k added instructions): the
    # two Flask methods every request goes through are replaced by plain
    # functions; the rare targets (500 path, templates) keep wrapt. With the
    # C extension, ensure_sync is a _cspan.EnsureSync (a method descriptor:
    # no bound object per call either) made from the plain function, which
    # it calls for what it does not answer itself.
    for name in ("wsgi_app", "ensure_sync"):
        raw = inspect.getattr_static(flask.Flask, name)
        assert type(raw.__wrapped__) is types.FunctionType, name
        if name == "ensure_sync" and _cspan is not None:
            assert type(raw) is _cspan.EnsureSync
            function = raw.fallback
            assert inspect.signature(raw) == inspect.signature(raw.__wrapped__)  # what users see, through __wrapped__
        else:
            function = raw
        assert type(function) is types.FunctionType, name
        own = inspect.signature(function, follow_wrapped=False).parameters
        assert raw.__qualname__ == f"Flask.{name}" and list(own) == list(inspect.signature(raw.__wrapped__).parameters)
