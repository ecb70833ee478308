"""Helpers shared by the Flask test modules: loading the test apps under their
own import names (so their service is ``flask_app`` / ``downstream_app``, as
when a server imports them), patching, and reading traces back as text."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import tracer as tracer_pkg
from tests.utils import render_tree
from tracer import _patching, tracer

APPS_DIR = os.path.dirname(os.path.abspath(__file__))
TAGS = ("http.status_code", "error.type")
VOLATILE_META = ("runtime-id", "_dd.p.tid", "_dd.p.dm", "language")


def patched_for_module(*names: str) -> Iterator[None]:
    """Body of a module-scoped fixture: patch ``names``, and afterwards unpatch
    those that were not patched before."""
    was = {name: _patching.is_patched(name) for name in names}
    tracer_pkg.patch(**{name: True for name in names})
    yield
    for name, before in was.items():
        if not before:
            tracer_pkg.unpatch(**{name: True})


def load_app(name: str) -> Any:
    """Import ``tests/contrib/apps/<name>.py`` as top-level module ``name``."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, os.path.join(APPS_DIR, f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def trees(receiver: Any, n: int = 1, tags: tuple[str, ...] = TAGS, **filters: Any) -> list[str]:
    """Flush, wait for ``n`` traces, return each rendered (oldest first)."""
    assert tracer.flush(10)
    rows = receiver.wait_traces(n, **filters)
    return [render_tree(receiver.spans(row["trace_id"]), tags) for row in reversed(rows)]


def root_of(spans: list[dict[str, Any]]) -> dict[str, Any]:
    (root,) = [s for s in spans if s["name"] == "flask.request" and s["parent_id"] is None]
    return root


def stable_meta(span: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in span["meta"].items() if k not in VOLATILE_META}


def get_body(client: Any, path: str) -> bytes:
    """The body of ``GET path`` from a Flask test client, the response closed
    (as a WSGI server closes it: the request's span ends there)."""
    response = client.get(path)
    try:
        return bytes(response.get_data())
    finally:
        response.close()
