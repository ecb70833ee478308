"""``_cspan.TracedCall`` (tracer/_cspan_call.c): a function called in a
child span of the active one, started, tagged and finished in C; what
contrib/flask returns for each hook, view and error handler. The span must
be the one the Python wrapper made (``tracer.trace`` + the tags + finish),
the call untouched (arguments, result, the exception itself), and the
fallback, error and report callables reached exactly when they should be.
C-only: without the extension contrib keeps its Python wrapper."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tracer import _errors, tracer
from tracer.context import get_active, set_active
from tracer.span import _cspan

pytestmark = pytest.mark.skipif(_cspan is None, reason="the C span code is not in use")


@pytest.fixture(autouse=True)
def _nothing_left_active() -> Iterator[None]:
    yield
    set_active(None)


class Calls:
    """The fallback, failed and report callables, recording their calls."""

    def __init__(self) -> None:
        self.fallback: list[tuple[tuple, dict]] = []
        self.failed: list[tuple[Any, BaseException]] = []
        self.reports: list[tuple[BaseException, bool]] = []

    def on_fallback(self, *args: Any, **kwargs: Any) -> str:
        self.fallback.append((args, kwargs))
        return "from fallback"

    def on_failed(self, span: Any, exc: BaseException) -> None:
        self.failed.append((span, exc))
        span.set_exc_info(type(exc), exc, exc.__traceback__)
        span.finish()

    def on_report(self, exc: BaseException, finishing: bool) -> None:
        self.reports.append((exc, finishing))


def traced(func: Any, calls: Calls, tags: dict[str, str] | None = None) -> Any:
    return _cspan.TracedCall(
        func, "hook.name", "hook.resource", "web", {"component": "x"} if tags is None else tags,
        calls.on_fallback, calls.on_failed, calls.on_report,
    )


def user(a: int, b: int = 0, *, c: int = 0) -> tuple[int, int, int, Any]:
    return a, b, c, get_active()


def test_child_span_as_the_python_wrapper_makes_it(test_spans: Any) -> None:
    calls = Calls()
    call = traced(user, calls)
    with tracer.trace("root", service="svc") as root:
        a, b, c, active = call(1, 2, c=3)
        assert get_active() is root  # the previous span given back
    assert (a, b, c) == (1, 2, 3) and active is not root and active.duration_ns is not None
    assert call.__wrapped__ is user and call.fallback == calls.on_fallback
    child, parent = sorted(test_spans.spans, key=lambda s: s.name)
    assert (child.name, child.resource, child.span_type, child.service) == ("hook.name", "hook.resource", "web", "svc")
    assert (child.trace_id, child.parent_id) == (parent.trace_id, parent.span_id)
    assert child.meta == {"component": "x"} and child.metrics == {} and child.error == 0
    assert calls.fallback == calls.failed == calls.reports == []


def test_tags_are_a_copy_per_span(test_spans: Any) -> None:
    tags = {"component": "x"}
    call = traced(user, Calls(), tags)
    tags["late"] = "no"  # after construction: not seen
    with tracer.trace("root"):
        first = call(1)[3]
        first.meta["own"] = "1"
        second = call(2)[3]
    assert second.meta == {"component": "x"} and first.meta == {"component": "x", "own": "1"}


def test_no_active_span_goes_to_the_fallback(test_spans: Any) -> None:
    calls = Calls()
    assert traced(user, calls)(1, b=2) == "from fallback"
    assert calls.fallback == [((1,), {"b": 2})] and test_spans.spans == []


def test_exception_reaches_failed_and_propagates_unchanged(test_spans: Any) -> None:
    calls = Calls()
    boom = ValueError("boom")

    def fails() -> None:
        raise boom

    call = traced(fails, calls)
    with tracer.trace("root") as root:
        with pytest.raises(ValueError) as info:
            call()
        assert get_active() is root
    assert info.value is boom and boom.__traceback__ is not None
    assert [exc for _span, exc in calls.failed] == [boom]
    child = next(s for s in test_spans.spans if s.name == "hook.name")
    assert child.error == 1 and child.meta["error.type"] == "builtins.ValueError" and child.meta["component"] == "x"
    del info, child
    calls.failed.clear()
    boom.__traceback__ = None  # (each raise of the same object grows it)
    refs = sys.getrefcount(boom)
    with tracer.trace("root"):
        for _ in range(50):
            try:
                call()
            except ValueError:
                pass
    assert len(calls.failed) == 50
    calls.failed.clear()
    boom.__traceback__ = None
    assert sys.getrefcount(boom) == refs  # nothing kept a reference to it


@pytest.mark.internal_errors
def test_a_failed_start_is_reported_and_the_function_runs_once(test_spans: Any) -> None:
    class Broken:
        def __bool__(self) -> bool:
            raise RuntimeError("bad foreign flag")

    calls = Calls()
    ran: list[int] = []

    def counted(x: int) -> int:
        ran.append(x)
        return x * 2

    with tracer.trace("root") as root:
        trace = root._trace
        saved = trace.foreign
        trace.foreign = Broken()
        try:
            assert traced(counted, calls)(21) == 42
        finally:
            trace.foreign = saved
        assert get_active() is root
    assert ran == [21] and calls.fallback == [] and calls.failed == []
    assert [(str(exc), finishing) for exc, finishing in calls.reports] == [("bad foreign flag", False)]
    assert [s.name for s in test_spans.spans] == ["root"]


def test_an_interrupt_while_starting_propagates_and_the_function_does_not_run(test_spans: Any) -> None:
    # The Python wrapper's `except Exception` lets KeyboardInterrupt through.
    class Interrupting:
        def __bool__(self) -> bool:
            raise KeyboardInterrupt

    calls = Calls()
    ran: list[int] = []
    with tracer.trace("root") as root:
        trace = root._trace
        saved = trace.foreign
        trace.foreign = Interrupting()
        try:
            with pytest.raises(KeyboardInterrupt):
                traced(lambda: ran.append(1), calls)()
        finally:
            trace.foreign = saved
    assert ran == [] and calls.reports == [] and calls.failed == []


def test_an_exception_out_of_failed_keeps_the_functions_as_its_context(test_spans: Any) -> None:
    # As in Python: raised while handling the function's exception.
    class Interrupted(BaseException):
        pass

    def failed(span: Any, exc: BaseException) -> None:
        span.finish()
        raise Interrupted("from failed")

    calls = Calls()
    boom = ValueError("from the function")

    def raising() -> None:
        raise boom

    call = _cspan.TracedCall(raising, "n", "r", "web", {}, calls.on_fallback, failed, calls.on_report)
    with tracer.trace("root"), pytest.raises(Interrupted) as info:
        call()
    assert info.value.__context__ is boom


@pytest.mark.internal_errors
def test_contrib_reports_through_internal_error() -> None:
    from contrib.flask import patch

    exc = RuntimeError("x")
    patch._traced_error(exc, True)
    patch._traced_error(exc, False)
    assert _errors.swallowed[-2:] == [("flask.hook.finish", exc), ("flask.hook", exc)]


def test_references_are_given_back(test_spans: Any) -> None:
    arg = object()
    call = traced(lambda x, **kw: x, Calls())
    refs = sys.getrefcount(arg), sys.getrefcount(user)
    with tracer.trace("root"):
        for _ in range(100):
            assert call(arg, k=arg) is arg
    assert (sys.getrefcount(arg), sys.getrefcount(user)) == refs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((user, "n", "r", "web", {}, print, print), "expected 8 arguments, got 7"),
        ((user, b"n", "r", "web", {}, print, print, print), "name, resource and span_type must be str"),
        ((user, "n", "r", "web", [], print, print, print), "tags must be a dict"),
        ((user, "n", "r", "web", {}, print, None, print), "argument 7 must be callable"),
    ],
)
def test_bad_arguments_say_what_is_wrong(args: tuple, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _cspan.TracedCall(*args)
