"""The one wrapper template (``tracer._errors.guarded_wrapper``): our pre- and
post-work are guarded, the user's call is not."""

from __future__ import annotations

from typing import Any

import pytest

from tracer import _errors
from tracer._errors import guarded_wrapper, keep_result


def _take_swallowed() -> list[tuple[str, str]]:
    found = [(where, str(exc)) for where, exc in _errors.swallowed]
    del _errors.swallowed[:]
    return found


def _user(*args: Any, **kwargs: Any) -> Any:
    """The user's function: echoes its arguments, or raises what it is given."""
    if "raise_" in kwargs:
        raise kwargs["raise_"]
    return args, kwargs


def _broken(*_: Any) -> Any:
    raise RuntimeError("tracer bug")


def _record(log: list) -> tuple[Any, Any]:
    def start(instance: Any, args: tuple, kwargs: dict) -> Any:
        log.append(("start", instance))
        return "state", args + ("added",), kwargs

    def finish(instance: Any, state: Any, result: Any, exc: BaseException | None) -> Any:
        log.append(("finish", state, result, exc))
        return result

    return start, finish


def test_user_result_and_changed_arguments_pass_through() -> None:
    log: list = []
    wrapper = guarded_wrapper("t", *_record(log))
    assert wrapper(_user, "inst", (1,), {"k": 2}) == ((1, "added"), {"k": 2})
    assert log == [("start", "inst"), ("finish", "state", ((1, "added"), {"k": 2}), None)]


def test_user_exception_passes_through_unchanged_after_finish_sees_it() -> None:
    log: list = []
    wrapper = guarded_wrapper("t", *_record(log))
    error = KeyboardInterrupt("user's own")  # a BaseException, not only Exception
    with pytest.raises(KeyboardInterrupt) as raised:
        wrapper(_user, None, (), {"raise_": error})
    assert raised.value is error
    assert log[-1] == ("finish", "state", None, error)
    assert _take_swallowed() == []


def test_broken_start_is_recorded_and_the_user_call_runs_with_its_own_arguments() -> None:
    wrapper = guarded_wrapper("t.place", _broken, keep_result)
    assert wrapper(_user, None, (1,), {}) == ((1,), {})
    assert _take_swallowed() == [("t.place", "tracer bug")]


def test_broken_finish_is_recorded_and_the_result_or_exception_is_kept() -> None:
    wrapper = guarded_wrapper("t", lambda i, a, k: (None, a, k), _broken)
    assert wrapper(_user, None, (1,), {}) == ((1,), {})
    error = ValueError("user's")
    with pytest.raises(ValueError) as raised:
        wrapper(_user, None, (), {"raise_": error})
    assert raised.value is error
    assert _take_swallowed() == [("t.finish", "tracer bug"), ("t.finish", "tracer bug")]


def test_start_returning_none_skips_the_post_work() -> None:
    wrapper = guarded_wrapper("t", lambda i, a, k: None, _broken)
    assert wrapper(_user, None, (1,), {}) == ((1,), {})
    assert _take_swallowed() == []


def test_guarded_call_records_and_never_raises() -> None:
    seen: list = []
    assert _errors.guarded_call("t.call", seen.append, 1) is None
    assert _errors.guarded_call("t.call", _broken) is None
    assert seen == [1] and _take_swallowed() == [("t.call", "tracer bug")]
