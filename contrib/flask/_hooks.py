"""Which user functions get a span, and which: the per-endpoint hook plan.

Flask calls every user function of a request (before/after/teardown hooks,
the view, error handlers) as ``app.ensure_sync(func)(...)``. The plan of an
endpoint maps each of those functions to its :class:`Phase` (span name), so
the ``ensure_sync`` wrapper classifies a function with one dict look-up and
Flask's own loops, ordering and early returns stay untouched.

Plans are built on an endpoint's first traced request and cached per app.
Flask forbids registering hooks, views, error handlers or blueprints once the
app has handled its first request (its ``setupmethod`` check), so a plan
cannot go stale through Flask's API; functions put straight into the app's
dicts afterwards, and ``after_this_request`` callbacks, get no span.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Phase:
    """A kind of user function: its span name, and the traced versions of the
    functions seen in it (built once each, see ``patch._traced``)."""

    __slots__ = ("name", "traced")

    def __init__(self, name: str) -> None:
        self.name = name
        self.traced: dict[Any, Callable[..., Any]] = {}


BEFORE = Phase("flask.before_request")
VIEW = Phase("flask.view")
AFTER = Phase("flask.after_request")
TEARDOWN = Phase("flask.teardown_request")
HANDLER = Phase("flask.handle_exception")
PHASES = (BEFORE, VIEW, AFTER, TEARDOWN, HANDLER)


def _blueprint_names(endpoint: str | None) -> list[str | None]:
    # As Flask's request.blueprints: "outer.inner.view" runs the hooks of
    # "outer.inner", then "outer", plus the app's own (None).
    names: list[str | None] = [None]
    if endpoint and "." in endpoint:
        parts = endpoint.rpartition(".")[0].split(".")
        names.extend(".".join(parts[:i]) for i in range(len(parts), 0, -1))
    return names


def build_plan(app: Any, endpoint: str | None) -> dict[Any, Phase]:
    """Function → phase for a request to ``endpoint`` (None: no rule matched)."""
    plan: dict[Any, Phase] = {}
    for name in _blueprint_names(endpoint):
        for spec in getattr(app, "error_handler_spec", {}).get(name, {}).values():
            for handler in spec.values():
                plan[handler] = HANDLER
        for funcs, phase in (
            (app.teardown_request_funcs, TEARDOWN),
            (app.after_request_funcs, AFTER),
            (app.before_request_funcs, BEFORE),
        ):
            for func in funcs.get(name, ()):
                plan[func] = phase
    if endpoint is not None:
        view = app.view_functions.get(endpoint)
        if view is not None:
            plan[view] = VIEW
    return plan
