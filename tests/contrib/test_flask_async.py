"""Flask's async views and hooks (``flask[async]``: asgiref runs each in an
event loop behind a sync wrapper Flask makes per call): traced like sync ones,
their spans named after the user's function, not Flask's wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contrib.apps.flask_helpers import patched_for_module, trees
from tests.utils import require_module


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("flask")


@pytest.fixture(scope="module")
def app() -> Any:
    require_module("asgiref", module_level=False)
    import flask

    app = flask.Flask("async_app")

    @app.before_request
    async def check_session() -> None:
        await asyncio.sleep(0)

    @app.route("/slow/<int:n>")
    async def slow_view(n: int) -> str:
        await asyncio.sleep(0)
        if n == 0:
            raise ValueError("zero")
        return f"n={n}"

    return app


def test_async_view_and_hook_spans_are_named_after_the_users_functions(traced: Any, app: Any) -> None:
    client = app.test_client()
    for _ in range(2):  # Flask builds a new sync wrapper per call
        response = client.get("/slow/3")
        assert (response.status_code, response.get_data()) == (200, b"n=3")
        response.close()
    expected = (
        "flask.request async_app 'GET /slow/<int:n>' http.status_code=200\n"
        "  flask.before_request async_app 'app.<locals>.check_session'\n"
        "  flask.view async_app 'app.<locals>.slow_view'"
    )
    assert trees(traced, n=2) == [expected, expected]


def test_async_view_error_is_recorded_on_its_span(traced: Any, app: Any) -> None:
    response = app.test_client().get("/slow/0")
    assert response.status_code == 500
    response.close()
    (tree,) = trees(traced, tags=("http.status_code", "error.type"))
    assert "flask.view async_app 'app.<locals>.slow_view' [error] error.type=builtins.ValueError" in tree, tree
