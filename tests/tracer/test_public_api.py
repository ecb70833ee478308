"""The public surface is exactly what DESIGN's "Public API" lists; drift fails here."""

from __future__ import annotations

import inspect

import tracer
from tests.utils import run_python


def test_exported_members():
    assert sorted(tracer.__all__) == sorted(
        ["Context", "Span", "Tracer", "__version__", "config", "patch", "patch_all", "propagation", "tracer", "unpatch"]
    )
    for name in tracer.__all__:
        assert hasattr(tracer, name), name
    assert isinstance(tracer.tracer, tracer.Tracer)


def test_tracer_methods_and_signatures():
    t = tracer.Tracer
    assert list(inspect.signature(t.trace).parameters) == ["self", "name", "service", "resource", "span_type"]
    assert list(inspect.signature(t.wrap).parameters) == ["self", "name", "service", "resource", "span_type"]
    params = inspect.signature(t.start_span).parameters
    assert list(params)[:3] == ["self", "name", "child_of"] and "activate" in params
    assert inspect.signature(t.flush).parameters["timeout"].default == 5.0
    assert inspect.signature(t.shutdown).parameters["timeout"].default == 5.0
    for name in ("current_span", "current_root_span"):
        assert callable(getattr(t, name))
    for name in ("set_tag", "set_tags", "set_metric", "set_exc_info", "finish"):
        assert callable(getattr(tracer.Span, name))
    assert callable(tracer.propagation.inject) and callable(tracer.propagation.extract)


def test_disabled_tracer_makes_no_threads_and_sends_nothing():
    out = run_python(
        """
import threading
from tracer import tracer
with tracer.trace("op") as span:
    span.set_tag("k", "v")
tracer.flush(1)
print(threading.active_count(), tracer._writer is None)
""",
        env={"TRACER_ENABLED": "false", "TRACER_AGENT_URL": "http://127.0.0.1:9"},
    ).stdout.split()
    assert out == ["1", "True"]


def test_bad_config_value_warns_once_and_falls_back():
    proc = run_python(
        """
from tracer.config import config
print(config.sample_rate, config.writer_timeout)
""",
        env={"TRACER_SAMPLE_RATE": "lots", "TRACER_WRITER_TIMEOUT": "-1"},
    )
    assert proc.stdout.split() == ["None", "2.0"]
    assert proc.stderr.count("TRACER_SAMPLE_RATE") == 1
    assert proc.stderr.count("TRACER_WRITER_TIMEOUT") == 1
