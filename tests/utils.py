"""Shared test helpers: free ports, real parts, span trees rendered as text."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, NoReturn

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# scripts/run-tests.sh (the README's command) sets this unless ALLOW_SKIPS=1:
# there, as under CI=true, a missing real part fails the run.
STRICT = IN_CI or os.environ.get("TESTS_REQUIRE_REAL_PARTS") == "1"
REAL_PARTS_USED: dict[str, str] = {}  # what -> path; printed at the end of the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def real_part(env_var: str, default_names: Iterable[str], what: str) -> str:
    """Path of a real external part (MariaDB, Chromium, the test agent).

    ``.ci/run`` exports the variable; by hand the default names are looked up
    on PATH. Missing: skip with a loud reason, or fail when CI=true (a green
    CI run must mean the real parts ran)."""
    path = os.environ.get(env_var)
    if path and (os.path.exists(path) or shutil.which(path)):
        REAL_PARTS_USED[what] = shutil.which(path) or path
        return REAL_PARTS_USED[what]
    for name in default_names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.path.exists(name) else None)
        if found:
            REAL_PARTS_USED[what] = found
            return found
    missing(f"{what} not found (set {env_var} or install it; scripts/run-tests.sh does)")
    raise AssertionError("unreachable")


def missing(reason: str, module_level: bool = False) -> NoReturn:
    """A part the test command installs is missing: skip with a loud reason
    by hand, fail when CI=true or under scripts/run-tests.sh without
    ALLOW_SKIPS=1 (a green run of the test command means the real parts ran)."""
    if STRICT:
        pytest.fail(f"real parts required (CI=true or scripts/run-tests.sh; ALLOW_SKIPS=1 skips) and {reason}",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_module(name: str, module_level: bool = False) -> None:
    """``name`` is importable (a package of the ``test`` extra), else ``missing``."""
    if importlib.util.find_spec(name) is None:
        missing(f"{name} is not installed (pip install -e '.[test]')", module_level)


def require_program(name: str) -> str:
    """Path of the program ``name`` (installed by the test command), else ``missing``."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not on PATH (pip install -e '.[test]')")
    REAL_PARTS_USED[name] = path
    return path


def span_key(span: dict[str, Any]) -> tuple:
    return (span.get("start_ns", span.get("start", 0)), span.get("name", ""))


def render_tree(spans: list[dict[str, Any]], tags: Iterable[str] = (), show_service: bool = True) -> str:
    """Render spans (agent_sim JSON shape or v0.4 dicts) as an indented tree.

    One line per span: ``name service resource [error] tag=value ...`` with
    children indented under their parent, siblings ordered by start time. Ids
    and timings are left out so the text can be asserted whole."""
    def sid(s: dict[str, Any], key: str) -> Any:
        return s.get(key)

    by_parent: dict[Any, list[dict[str, Any]]] = {}
    ids = {sid(s, "span_id") for s in spans}
    roots = []
    for s in spans:
        parent = sid(s, "parent_id")
        if parent in (None, 0, "0", "0000000000000000") or parent not in ids:
            roots.append(s)
        else:
            by_parent.setdefault(parent, []).append(s)
    lines: list[str] = []

    def emit(s: dict[str, Any], depth: int) -> None:
        parts = [s["name"]]
        if show_service:
            parts.append(s.get("service") or "-")
        parts.append(repr(s.get("resource", "")))
        if s.get("error"):
            parts.append("[error]")
        meta = {**(s.get("meta") or {}), **{k: v for k, v in (s.get("metrics") or {}).items()}}
        for tag in tags:
            if tag in meta:
                parts.append(f"{tag}={meta[tag]}")
        lines.append("  " * depth + " ".join(str(p) for p in parts))
        for child in sorted(by_parent.get(sid(s, "span_id"), []), key=span_key):
            emit(child, depth + 1)

    for root in sorted(roots, key=span_key):
        emit(root, 0)
    return "\n".join(lines)


# Lines by which a child process reports an error it survived: our guard
# (tracer._errors), the tracer-run bootstrap, agent_sim's request handler,
# statsd intake, maintenance and detectors, and Python's own report of an
# exception in __del__, a callback or a thread at exit.
_INTERNAL_ERROR = re.compile(
    r"tracer: internal error|bootstrap failed|statsd ingest failed|maintenance failed|detectors failed"
    r"|^Exception ignored in|^Exception in thread",
    re.MULTILINE,
)
_TRACEBACK = "Traceback (most recent call last):"


def assert_clean_output(output: str, allow: Iterable[str] = ()) -> None:
    """Fail the test if a child process's output (apps under ``tracer-run``,
    gunicorn workers, ``agent-sim``) shows an internal error of ours or a
    Python traceback. ``allow``: text found in the final line
    (``ValueError: boom``) of each traceback the test provokes on purpose,
    such as an app's exception that Flask logs; any other traceback fails."""
    allowed = tuple(allow)
    problems = [m.group() for m in _INTERNAL_ERROR.finditer(output)]
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != _TRACEBACK:
            continue
        # The exception line is the first one after the frames that is not indented.
        final = next((later for later in lines[i + 1 :] if later and not later[0].isspace()), "")
        if not any(expected in final for expected in allowed):
            problems.append(f"traceback ending in {final!r}")
    if problems:
        pytest.fail(f"the child process reported {problems}:\n{output}")


def run_python(
    code: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    allow: Iterable[str] = (),
    under_tracer_run: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for patch-before/after-import
    contracts and fork tests), under ``tracer-run`` if asked; fails the test
    with its output if it fails or reports an internal error or a traceback
    (``allow``: see :func:`assert_clean_output`)."""
    full_env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if env:
        full_env.update(env)
    launcher = [sys.executable, "-m", "tracer.run"] if under_tracer_run else []
    proc = subprocess.run(
        [*launcher, sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    assert_clean_output(proc.stderr, allow)
    return proc


def terminate(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[str, str]:
    """SIGTERM ``proc`` (an ``agent-sim serve`` or app started with separate
    stdout/stderr pipes), wait up to ``timeout`` seconds, kill it past that;
    its (stdout, stderr). The caller asserts on the exit code."""
    if proc.poll() is None:
        proc.send_signal(15)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def stop_process(proc: subprocess.Popen[str], sig: int = 15, timeout: float = 20) -> str:
    """Send ``sig`` (SIGTERM by default) if the process still runs, wait up to
    ``timeout`` seconds, kill it past that; its combined output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def run_interleaved(*targets: Callable[[], None]) -> list[BaseException]:
    """Run each target in its own thread with the GIL handed over as often as
    it can be (``sys.setswitchinterval(1e-6)``), for races; the exceptions
    the targets raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # reported to the caller
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    return errors


def python_calls(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """fn()'s result and the names of the Python functions it ran (C code
    runs none: how a test sees that a fast path stayed in C)."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return result, calls
