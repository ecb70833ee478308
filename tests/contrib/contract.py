"""The contract every integration passes, each scenario in a fresh interpreter.

Usage (one subclass per integration, in ``tests/contrib/test_<name>.py``)::

    from tests.contrib.contract import IntegrationContract

    class TestRequestsContract(IntegrationContract):
        integration = "requests"          # keyword of tracer.patch() / REGISTRY
        module = "requests"               # the hooks module (REGISTRY[...].hooks_module)
        span_name = "requests.request"    # spans counted by the default check_spans()
        spans_per_exercise = 5            # how many of them one exercise() makes
        exercise_code = '''
    def exercise():
        import requests                   # import the library INSIDE exercise()
        ...                               # use it: happy path, an error path, ...
        return [...]                      # JSON-able description of what the app saw
    '''

``exercise_code`` is Python source defining ``exercise()``; top-level code in
it may set things up (start a stdlib server, read env) but must not import
the library (the "patch before import" scenario asserts it). ``exercise()``
returns what the application observes (status codes, bodies, exception type
names, rows): every scenario's result must equal the unpatched baseline's, so
the host library's behaviour is unchanged. Keep it deterministic (no ports,
ids or times in the result).

Scenarios (each one subprocess, spans collected in memory in the child):
patch before import, patch after import, patch twice (``patch`` repeated,
``patch_all`` and the contrib ``patch()`` called directly: no double spans),
unpatch (no spans; every target's original restored identity-equal),
re-patch, ``TRACER_PATCH_<X>=false`` (and an explicit keyword beating it),
``TRACER_ENABLED=false``, and the app run under a real ``tracer-run`` (the
bootstrap patches; the app's code only imports and uses the library). No
scenario may swallow an internal error or print a traceback.

"Before import" is before the first import in the process: nothing is
forgotten from ``sys.modules``. A hooks module that ``import tracer`` itself
loads (``preloaded = True``: ``concurrent.futures``, through wrapt >= 2.5's
``import asyncio``) cannot be patched before its import by any process that
can call ``patch()``; for it the scenario checks the order the app sees:
patch() applies at once, before the app's first import of the modules that
hold the targets (``concurrent.futures.thread`` for futures). The contract
asserts ``preloaded`` both ways, so the day ``import tracer`` stops loading
the module the scenario becomes the hook-path test on its own.

Hooks to override: ``check_spans(spans, patched)`` for integrations that do
not just count spans (futures checks parent links); ``subprocess_env()`` for
settings the child needs (a database address); ``targets`` to list the
patched ``(module, attribute path)`` pairs explicitly (default: the first two
items of each entry of the contrib module's ``TARGETS`` or ``_TARGETS``).
Spans reach ``check_spans`` as dicts: name, service, resource, type, trace_id,
span_id, parent_id, error, meta, metrics.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, ClassVar

from tests.utils import free_port, run_python

_MARK = "@@CONTRACT@@"

_PRELUDE = """
import importlib, inspect, json, sys
import tracer
from tracer import _errors, _patching
from tracer import tracer as _tracer

class _Sink:
    def __init__(self):
        self.spans = []
    def write(self, trace, chunk):
        from tracer.span import records
        self.spans.extend(records(chunk))
    def flush(self, timeout=0):
        return True
    def stop(self, timeout=0):
        pass
    def stats(self):
        return {}

_sink = _Sink()
_tracer._writer = _sink
NAME = %(integration)r
MODULE = %(module)r
# Loaded by `import tracer` itself (see the contract's docstring), before any patch() can run.
_PRELOADED = MODULE in sys.modules
_TARGETS_GIVEN = %(targets)r

def _spans():
    out = [dict(name=s.name, service=s.service, resource=s.resource, type=s.span_type,
                trace_id=s.trace_id, span_id=s.span_id, parent_id=s.parent_id, error=s.error,
                meta=dict(s.meta), metrics=dict(s.metrics)) for s in _sink.spans]
    del _sink.spans[:]
    return out

def _targets():
    if _TARGETS_GIVEN is not None:
        return [tuple(t) for t in _TARGETS_GIVEN]
    contrib = importlib.import_module(_patching.REGISTRY[NAME].contrib_module)
    table = getattr(contrib, "TARGETS", None) or getattr(contrib, "_TARGETS")
    return [(t[0], t[1]) for t in table]

def _raw():
    out = []
    for module, path in _targets():
        obj = importlib.import_module(module)
        *parents, attr = path.split(".")
        for part in parents:
            obj = getattr(obj, part)
        out.append(inspect.getattr_static(obj, attr))
    return out

def _report(**kw):
    kw["swallowed"] = [f"{where}: {exc!r}" for where, exc in _errors.swallowed]
    kw["patched"] = _patching.is_patched(NAME)
    print("\\n%(mark)s" + json.dumps(kw, default=repr))
"""

_SCENARIOS = {
    "baseline": """
r = exercise()
_report(result=r, spans=_spans())
""",
    "before_import": """
target_modules = sorted({module for module, _path in _targets()} - {MODULE})
imported_first = [m for m in target_modules if m in sys.modules]
assert _PRELOADED or MODULE not in sys.modules, "exercise_code imported the library at top level"
tracer.patch(**{NAME: True})
assert _PRELOADED or MODULE not in sys.modules, "patch() imported the library"
deferred = not _patching.is_patched(NAME)
r = exercise()
_report(result=r, spans=_spans(), deferred=deferred, preloaded=_PRELOADED, imported_first=imported_first)
""",
    "tracer_run": """
# Under tracer-run: the bootstrap called patch_all() before this code; the
# app only imports and uses the library.
before = MODULE in sys.modules
r = exercise()
_report(result=r, spans=_spans(), imported_before_app=before and not _PRELOADED)
""",
    "after_import": """
importlib.import_module(MODULE)
tracer.patch(**{NAME: True})
r = exercise()
_report(result=r, spans=_spans())
""",
    "twice": """
tracer.patch(**{NAME: True})
tracer.patch(**{NAME: True})
importlib.import_module(MODULE)
tracer.patch(**{NAME: True})
tracer.patch_all()
importlib.import_module(_patching.REGISTRY[NAME].contrib_module).patch()
r = exercise()
_report(result=r, spans=_spans())
""",
    "unpatch": """
importlib.import_module(MODULE)
before = _raw()
tracer.patch(**{NAME: True})
during = _raw()
r1 = exercise()
s1 = _spans()
tracer.unpatch(**{NAME: True})
after = _raw()
r = exercise()
changed = [a is not b for a, b in zip(before, during)]
restored = [a is b for a, b in zip(before, after)]
assert r == r1, (r, r1)
_report(result=r, spans=_spans(), spans_while_patched=s1, changed=changed, restored=restored)
""",
    "unpatch_before_import": """
tracer.patch(**{NAME: True})
tracer.unpatch(**{NAME: True})
r = exercise()
_report(result=r, spans=_spans())
""",
    "repatch": """
importlib.import_module(MODULE)
tracer.patch(**{NAME: True})
tracer.unpatch(**{NAME: True})
tracer.patch(**{NAME: True})
r = exercise()
_report(result=r, spans=_spans())
""",
    "env_off": """
tracer.patch_all()
r = exercise()
off = _spans()
off_patched = _patching.is_patched(NAME)
tracer.patch_all(**{NAME: True})
r2 = exercise()
assert r == r2, (r, r2)
_report(result=r, spans=_spans(), spans_env_off=off, patched_env_off=off_patched)
""",
    "disabled": """
tracer.patch_all()
tracer.patch(**{NAME: True})
r = exercise()
_report(result=r, spans=_spans())
""",
}


class IntegrationContract:
    """Base class of each integration's contract tests (see module docstring)."""

    integration: ClassVar[str]
    module: ClassVar[str]
    span_name: ClassVar[str] = ""
    spans_per_exercise: ClassVar[int] = 1
    exercise_code: ClassVar[str]
    targets: ClassVar[list[tuple[str, str]] | None] = None
    timeout: ClassVar[float] = 60
    preloaded: ClassVar[bool] = False  # the hooks module is imported by `import tracer` (see above)

    _baseline_cache: ClassVar[dict[type, Any]] = {}

    # -- hooks -------------------------------------------------------------------
    def subprocess_env(self) -> dict[str, str]:
        return {}

    def check_spans(self, spans: list[dict[str, Any]], patched: bool) -> None:
        """Assert the spans one ``exercise()`` produced, patched or not."""
        names = [s["name"] for s in spans if s["name"] == self.span_name]
        expected = self.spans_per_exercise if patched else 0
        brief = [(s["name"], s["resource"], s["parent_id"]) for s in spans]
        assert len(names) == expected, f"expected {expected} {self.span_name} span(s), got {len(names)}: {brief}"

    # -- machinery ---------------------------------------------------------------
    def run_scenario(
        self, scenario: str, env: dict[str, str] | None = None, under_tracer_run: bool = False
    ) -> dict[str, Any]:
        code = (
            _PRELUDE % {"integration": self.integration, "module": self.module, "targets": self.targets, "mark": _MARK}
            + textwrap.dedent(self.exercise_code)
            + _SCENARIOS[scenario]
        )
        full_env = {"TRACER_ENABLED": "true", f"TRACER_PATCH_{self.integration.upper()}": "true"}
        full_env.update(self.subprocess_env())
        full_env.update(env or {})
        proc = run_python(code, env=full_env, timeout=self.timeout, under_tracer_run=under_tracer_run)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
        assert lines, f"no report from the scenario {scenario}:\n{proc.stdout}\n{proc.stderr}"
        report = json.loads(lines[-1][len(_MARK) :])
        assert report["swallowed"] == [], f"{scenario}: internal errors swallowed: {report['swallowed']}\n{proc.stderr}"
        return report

    def baseline(self) -> Any:
        cls = type(self)
        if cls not in self._baseline_cache:
            report = self.run_scenario("baseline")
            self.check_spans(report["spans"], patched=False)
            self._baseline_cache[cls] = report["result"]
        return self._baseline_cache[cls]

    def assert_patched_run(self, report: dict[str, Any]) -> None:
        assert report["result"] == self.baseline(), "the library behaves differently when patched"
        assert report["patched"] is True
        self.check_spans(report["spans"], patched=True)

    # -- the contract --------------------------------------------------------------
    def test_patch_before_import(self) -> None:
        report = self.run_scenario("before_import")
        assert report["preloaded"] is self.preloaded, f"`import tracer` loads {self.module}: {report['preloaded']}"
        if self.preloaded:
            assert report["deferred"] is False
            assert report["imported_first"] == [], "the app imported the patched classes before patch()"
        else:
            assert report["deferred"] is True, "patch() applied at once: the post-import hook path did not run"
        self.assert_patched_run(report)

    def test_under_tracer_run(self) -> None:
        # TRACER_AGENT_URL: a free port, never 8126 (the child's sink replaces the writer anyway).
        env = {"TRACER_AGENT_URL": f"http://127.0.0.1:{free_port()}"}
        report = self.run_scenario("tracer_run", env=env, under_tracer_run=True)
        assert report["imported_before_app"] is False, "the bootstrap imported the library before the app did"
        self.assert_patched_run(report)

    def test_patch_after_import(self) -> None:
        self.assert_patched_run(self.run_scenario("after_import"))

    def test_patch_twice_wraps_once(self) -> None:
        self.assert_patched_run(self.run_scenario("twice"))

    def test_unpatch_restores_originals(self) -> None:
        report = self.run_scenario("unpatch")
        assert report["result"] == self.baseline()
        self.check_spans(report["spans_while_patched"], patched=True)
        assert report["patched"] is False
        self.check_spans(report["spans"], patched=False)
        assert report["changed"] and all(report["changed"]), f"patch() left some targets unwrapped: {report['changed']}"
        assert all(report["restored"]), f"unpatch() did not restore every original: {report['restored']}"

    def test_unpatch_before_import_cancels_the_hook(self) -> None:
        report = self.run_scenario("unpatch_before_import")
        assert report["result"] == self.baseline()
        assert report["patched"] is False
        self.check_spans(report["spans"], patched=False)

    def test_repatch(self) -> None:
        self.assert_patched_run(self.run_scenario("repatch"))

    def test_env_switch_off_and_explicit_keyword_wins(self) -> None:
        report = self.run_scenario("env_off", env={f"TRACER_PATCH_{self.integration.upper()}": "false"})
        assert report["patched_env_off"] is False
        self.check_spans(report["spans_env_off"], patched=False)
        self.assert_patched_run(report)

    def test_tracer_disabled_patches_nothing(self) -> None:
        report = self.run_scenario("disabled", env={"TRACER_ENABLED": "false"})
        assert report["result"] == self.baseline()
        assert report["patched"] is False
        assert report["spans"] == []
