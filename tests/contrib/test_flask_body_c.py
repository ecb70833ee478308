"""A plain body's wrapper in C (``tracer._cspan.ClosingBody``,
tracer/_cspan_body.c) against the Python one (``_ClosingBody`` with
``itertools.chain`` and ``_BodyEnd``): each scenario a server can play
(read to the end, closed early, dropped, iterated twice, HEAD, a failing
close()) runs against both, and the request spans and the points where they
ended must be the same. Plus: no object leaks over many requests, and our
own failures go to ``internal_error`` as the Python wrapper's do."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, Response

from contrib.flask import _request
from tests.contrib.apps.flask_helpers import patched_for_module
from tests.contrib.test_flask_plain_body import call, requests_of
from tracer import _errors
from tracer.context import ACTIVE_SPAN
from tracer.span import Span, _cspan

pytestmark = [
    pytest.mark.usefixtures("spans_in_memory"),
    pytest.mark.skipif(_cspan is None, reason="the C span is not built (TRACER_PURE_PYTHON or no compiler)"),
]


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


class _Boom(Exception):
    pass


@pytest.fixture(scope="module")
def app() -> Flask:
    app = Flask("body_c_app")
    app.add_url_rule("/text", "text", lambda: "ok")
    app.add_url_rule("/empty", "empty", lambda: ("", 204))

    @app.route("/failing-close")
    def failing_close() -> Response:
        response = Response("ok")

        @response.call_on_close
        def boom() -> None:
            raise _Boom("close failed")

        return response

    return app


@pytest.fixture
def python_wrapper(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """use(True): respond builds the Python wrapper, as without the C module
    (the Python respond, which then finds no C wrapper to build)."""

    c_respond = _request.RequestState.__dict__["respond"]  # as patch() put it: a _cspan.Respond
    assert type(c_respond) is _cspan.Respond

    def use(python: bool) -> None:
        monkeypatch.setattr(_request, "_CClosingBody", None if python else _cspan.ClosingBody)
        monkeypatch.setattr(_request.RequestState, "respond", _request._respond if python else c_respond)

    return use


def _state(sink: Any) -> list[tuple[Any, ...]]:
    """The request spans ended so far, without ids and times."""
    return [
        (s.name, s.resource, s.error, {k: v for k, v in s.meta.items() if k != "runtime-id"}, s.duration_ns is not None)
        for s in requests_of(sink)
    ]


def _read_all(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    seen: list[Any] = [b"".join(body), _state(sink)]
    body.close()
    return [*seen, _state(sink), ACTIVE_SPAN.get()]


def _closed_after_chunk(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    seen: list[Any] = [next(iter(body)), _state(sink)]
    body.close()
    body.close()  # a second close() ends nothing twice
    return [*seen, _state(sink)]


def _closed_unread(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    body.close()
    return [_state(sink)]


def _dropped_after_chunk(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    seen: list[Any] = [next(iter(body)), _state(sink)]
    del body
    gc.collect()
    return [*seen, _state(sink)]


def _dropped_unread(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    del body
    gc.collect()
    return [_state(sink)]


def _iterated_twice(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    first, second = iter(body), iter(body)
    seen = [next(first), list(second), list(first), _state(sink)]
    body.close()
    return [*seen, _state(sink)]


def _head_and_204(app: Flask, sink: Any) -> list[Any]:
    seen: list[Any] = []
    for path, method in (("/text", "HEAD"), ("/empty", "GET")):
        body = call(app, path, method)
        seen += [list(body), _state(sink)]
        body.close()
    return [*seen, _state(sink)]


def _failing_close(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/failing-close")
    seen: list[Any] = [next(iter(body))]
    with pytest.raises(_Boom, match="close failed"):
        body.close()  # the body's exception reaches the server
    return [*seen, _state(sink)]  # and the span ended all the same


def _dropped_while_an_exception_is_handled(app: Flask, sink: Any) -> list[Any]:
    body = call(app, "/text")
    next(iter(body))
    try:
        raise _Boom("in flight")
    except _Boom as exc:
        del body  # finalized now, with an exception being handled
        assert gc.collect() >= 0 and repr(exc) == "_Boom('in flight')"
        import sys

        assert sys.exc_info()[1] is exc
    return [_state(sink)]


SCENARIOS = [
    _read_all,
    _closed_after_chunk,
    _closed_unread,
    _dropped_after_chunk,
    _dropped_unread,
    _iterated_twice,
    _head_and_204,
    _failing_close,
    _dropped_while_an_exception_is_handled,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_the_c_wrapper_ends_the_span_as_the_python_one(
    app: Flask, test_spans: Any, python_wrapper: Callable[[bool], None], scenario: Callable[..., list[Any]]
) -> None:
    results = {}
    for python in (True, False):
        python_wrapper(python)
        body = call(app, "/text")
        assert (type(body).__name__ == "ClosingBody") is not python
        body.close()
        test_spans.raw.clear()
        results[python] = scenario(app, test_spans)
        test_spans.raw.clear()
    assert results[False] == results[True]
    assert any(results[True])  # a scenario that saw nothing compares nothing


def test_the_c_wrapper_is_used_for_plain_bodies_of_c_spans_only(app: Flask, test_spans: Any) -> None:
    body = call(app, "/text")
    assert type(body) is _cspan.ClosingBody and body._plain and not body._activate and not body.started
    assert type(body._span) is Span and iter(body) is body and body.started
    body.close()
    with pytest.raises(TypeError, match="span must be a tracer.span.Span in C"):
        _cspan.ClosingBody([b"x"], object())
    with pytest.raises(TypeError):
        _cspan.ClosingBody([b"x"])


def _live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def test_no_objects_leak_over_many_requests(app: Flask, test_spans: Any) -> None:
    def requests(n: int) -> None:
        for i in range(n):
            body = call(app, "/text")
            if i % 3 == 0:
                b"".join(body)
                body.close()
            elif i % 3 == 1:
                next(iter(body))
                body.close()
            else:
                next(iter(body))
                del body  # dropped: finalized
            test_spans.raw.clear()

    requests(50)
    gc.collect()
    before = (len(gc.get_objects()), _live(Span), _live(_cspan.ClosingBody))
    requests(600)
    gc.collect()
    after = (len(gc.get_objects()), _live(Span), _live(_cspan.ClosingBody))
    # Spans other tests left alive may exist in a whole-suite run: none more.
    assert after[1:] == before[1:] and before[2] == 0
    assert after[0] - before[0] < 50, (before, after)


class _FailingMeta(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: str, value: Any) -> None:
        if key == _request.CLIENT_DISCONNECTED:
            raise _Boom("tag failed")
        super().__setitem__(key, value)


@pytest.mark.internal_errors
@pytest.mark.parametrize("how", ["close", "drop"])
def test_our_failure_goes_to_internal_error_as_in_python(
    app: Flask, test_spans: Any, python_wrapper: Callable[[bool], None], how: str
) -> None:
    seen = {}
    for python in (True, False):
        python_wrapper(python)
        del _errors.swallowed[:]
        body = call(app, "/text")
        next(iter(body))
        span = body._span
        span.meta = _FailingMeta(span.meta)
        if how == "close":
            body.close()  # no exception reaches the server
        else:
            del body
            gc.collect()
        seen[python] = ([(where, type(exc)) for where, exc in _errors.swallowed], span.duration_ns is None)
        span.finish()
        test_spans.raw.clear()
    where = "flask.response.close" if how == "close" else "flask.response.dropped"
    assert seen[False] == seen[True] == ([(where, _Boom)], True)
