"""Sub-interpreters (mod_wsgi runs each application in one): the C modules keep
their state (the Span class, the active-span ContextVar) process-wide, so they
load in the main interpreter only; a sub-interpreter importing ``tracer`` runs
the pure-Python code, and neither interpreter disturbs the other's spans.

``_testcapi.run_in_subinterp`` creates a legacy sub-interpreter (shared GIL,
``Py_NewInterpreter``, as mod_wsgi does) on every CPython this suite runs on;
the run happens in a subprocess, as a crash would otherwise end the suite."""

from __future__ import annotations

from typing import Any

from tests.utils import require_module, run_python

SCRIPT = r'''
import _testcapi
from tracer import tracer
from tracer.context import ACTIVE_SPAN
from tracer.span import _cspan

def child_span(name):
    # Where built, the C fast path still serves this interpreter (trace_child
    # gives None when it does not see this interpreter's active span).
    span = tracer.trace(name) if _cspan is None else _cspan.trace_child(name, None, None, None)
    assert span is not None, "the C code lost this interpreter's active span"
    return span

def request(name):
    with tracer.trace(name, service="main") as root:
        with child_span(name + ".child") as child:
            assert tracer.current_span() is child
        assert tracer.current_span() is root
    assert (child.trace_id, child.parent_id) == (root.trace_id, root.span_id)
    assert ACTIVE_SPAN.get() is None, f"{name}: a finished span is still active: {ACTIVE_SPAN.get()!r}"
    assert tracer.current_root_span() is None, f"{name}: {tracer.current_root_span()!r}"
    return root

SUB = """
from tracer import tracer
from tracer.encoding import _cencode
from tracer.span import _cspan
assert _cspan is None and _cencode is None, "the C modules loaded in a sub-interpreter"
with tracer.trace("sub.request", service="sub") as root:
    with tracer.trace("sub.request.child") as child:
        assert tracer.current_span() is child
assert (child.trace_id, child.parent_id) == (root.trace_id, root.span_id)
assert root.finished and child.finished and tracer.current_span() is None
assert tracer.flush(5)
"""

first = request("main.before")
assert _testcapi.run_in_subinterp(SUB) == 0, "the sub-interpreter failed (traceback above)"
after = request("main.after")
assert _testcapi.run_in_subinterp(SUB) == 0, "a second sub-interpreter failed (traceback above)"
later = request("main.later")
assert len({first.trace_id, after.trace_id, later.trace_id}) == 3
assert tracer.flush(5)
'''


def test_a_sub_interpreter_runs_pure_python_and_leaves_the_main_ones_spans_alone(receiver: Any) -> None:
    require_module("_testcapi")
    run_python(SCRIPT, env={"TRACER_AGENT_URL": receiver.url, "TRACER_WRITER_INTERVAL": "0.05"})
    rows = receiver.wait_traces(5)
    by_service: dict[str, list[list[str]]] = {}
    for row in rows:
        names = sorted(span["name"] for span in receiver.spans(row["trace_id"]))
        by_service.setdefault(row["service"], []).append(names)
    assert sorted(by_service["main"]) == [[f"main.{n}", f"main.{n}.child"] for n in ("after", "before", "later")]
    assert by_service["sub"] == [["sub.request", "sub.request.child"]] * 2
