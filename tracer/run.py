"""``tracer-run``: trace an unmodified Python program.

    tracer-run [--info] [--debug] COMMAND [ARGS...]

Puts ``tracer/bootstrap`` (a directory holding only ``sitecustomize.py``)
first on ``PYTHONPATH`` and replaces itself with ``COMMAND`` (looked up on
``PATH``; exit 127 if not found). Every Python process started from there
(``python app.py``, ``python -m pkg``, ``flask run``, ``gunicorn`` and its
forked workers) loads the bootstrap, which calls ``patch_all()``. Does not
work with ``python -I`` / ``-E`` / ``-S``, which ignore ``PYTHONPATH`` or
``site``.

``--debug`` sets ``TRACER_DEBUG=true`` for the command (tracer logs on stderr).

``--info`` prints the effective configuration, the integrations (enabled,
installed version, supported) and whether a receiver answers ``GET /info`` at
the agent URL, with the fix when it does not; then exits without running
anything: status 0 when the receiver answers, 1 when it does not (so scripts
can check a set-up). A COMMAND given with ``--info`` is only used to show the
service name it would get.

Exit status 2: usage error (no command, unknown option).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TextIO

USAGE = "usage: tracer-run [--info] [--debug] COMMAND [ARGS...]"

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")
# The directory holding the `tracer` package we run from.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(Exception):
    pass


def parse_args(argv: Sequence[str]) -> tuple[bool, bool, list[str]]:
    """(info, debug, command). Options stop at the first non-option or ``--``."""
    info = debug = False
    args = list(argv)
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "--":
            break
        if opt == "--info":
            info = True
        elif opt == "--debug":
            debug = True
        elif opt in ("-h", "--help"):
            raise SystemExit(_help())
        else:
            raise UsageError(f"unknown option {opt}")
    if not args and not info:
        raise UsageError("missing COMMAND")
    return info, debug, args


def _help() -> int:
    print(USAGE)
    print(__doc__.split("\n\n", 2)[2].strip())
    return 0


def child_env(environ: dict[str, str], debug: bool) -> dict[str, str]:
    """The command's environment: bootstrap dir first on PYTHONPATH."""
    env = dict(environ)
    front = [BOOTSTRAP_DIR]
    if _found_through_sys_path():
        front.append(PACKAGE_ROOT)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in front]
    env["PYTHONPATH"] = os.pathsep.join(front + rest)
    if debug:
        env["TRACER_DEBUG"] = "true"
    return env


def _found_through_sys_path() -> bool:
    """True when this tracer was imported from a source tree on sys.path
    (PYTHONPATH, the current directory): the command needs it on its path
    too. An installed copy (site-packages, editable finder) is found anyway."""
    if os.path.basename(PACKAGE_ROOT) in ("site-packages", "dist-packages"):
        return False
    for entry in sys.path:
        try:
            if os.path.abspath(entry or os.getcwd()) == PACKAGE_ROOT:
                return True
        except OSError:
            continue
    return False


def resolve(command: str, path: str | None) -> str | None:
    if os.sep in command:
        return command if os.path.isfile(command) and os.access(command, os.X_OK) else None
    return shutil.which(command, path=path)


# -- --info ------------------------------------------------------------------------
def derived_service(command: Sequence[str]) -> str | None:
    """The service a command's process would derive (no TRACER_SERVICE), by
    the rule the process itself applies (``tracer._service``); None when only
    the running process can tell (flask/gunicorn: the Flask app's import name)."""
    from tracer._service import service_name

    if not command:
        return None
    prog = os.path.basename(command[0])
    if not prog.startswith("python"):
        return None
    args = list(command[1:])
    while args:
        arg = args.pop(0)
        if arg == "-m" and args:
            return service_name("", args[0])
        if arg.startswith("-m") and len(arg) > 2:
            return service_name("", arg[2:])
        if arg == "-c":
            return service_name("-c", None)
        if not arg.startswith("-"):
            return service_name(arg, None)
    return None


def check_receiver(url: str, timeout: float = 1.0) -> tuple[bool, str]:
    """GET <url>/info; (answered with 200, one line saying what happened)."""
    fix = f"no trace receiver at {url}: start one with `agent-sim serve`, or set TRACER_AGENT_URL"
    try:
        with urllib.request.urlopen(url + "/info", timeout=timeout) as resp:
            body = resp.read(65536)
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code} to GET /info: is it a trace receiver? {fix}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{fix} ({reason})"
    detail = ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            version = data.get("version")
            endpoints = data.get("endpoints")
            if version:
                detail += f" version {version}"
            if isinstance(endpoints, list):
                detail += f"; endpoints: {', '.join(str(e) for e in endpoints[:8])}"
    except ValueError:
        pass
    return True, f"a receiver answers at {url}{detail}"


def _stale(name: str) -> str | None:
    """Why a built C module is not used: it was built from other sources."""
    from tracer.span import _C_ABI, stale_builds

    if name not in stale_builds:
        return None
    return (f"pure Python: tracer.{name} was built from other sources (ABI {stale_builds[name]}, these files need "
            f"{_C_ABI}); rebuild it: pip install -e . (or python setup.py build_ext --inplace)")


def span_code() -> str:
    """Which version of the span hot path runs, and how to get the C one."""
    from tracer.config import config
    from tracer.span import _cspan

    if _cspan is not None:
        return "C (tracer._cspan)"
    if config.pure_python:
        return "pure Python (TRACER_PURE_PYTHON is set)"
    return _stale("_cspan") or ("pure Python: tracer._cspan was not built; for ~40 % less overhead per span, reinstall "
            "with a C compiler and the Python headers (apt-get install gcc python3-dev)")


def encoder_code() -> str:
    """Which payload encoder runs (tracer._cencode or pure Python)."""
    from tracer.config import config
    from tracer.encoding import _cencode

    if _cencode is not None:
        return "C (tracer._cencode)"
    if config.pure_python:
        return "pure Python (TRACER_PURE_PYTHON is set)"
    return _stale("_cencode") or "pure Python: tracer._cencode was not built (reinstall with gcc and python3-dev for a ~5x faster encoder)"


def print_info(command: Sequence[str], out: TextIO) -> int:
    from tracer import _patching
    from tracer.config import config
    from tracer.version import __version__

    def row(key: str, value: object) -> None:
        out.write(f"  {key + ':':<17}{value}\n")

    def shown(value: object) -> str:
        return "(unset)" if value in (None, "", {}, []) else str(value)

    out.write(f"tracer-run {__version__} (Python {_patching.python_version()}, {sys.executable})\n")
    if not config.enabled:
        out.write("WARNING: tracing is disabled (TRACER_ENABLED=false): nothing will be traced\n")
    out.write("configuration:\n")
    row("enabled", str(config.enabled).lower())
    if config.service:
        row("service", config.service)
    else:
        guess = derived_service(command)
        hint = f"{guess} (derived from the command)" if guess else "derived at run time (Flask app import name, else script or module name)"
        row("service", f"{hint}; set TRACER_SERVICE to choose")
    row("env", shown(config.env))
    row("version", shown(config.version))
    rejected = config.rejected.get("agent_url")
    if rejected:
        name, raw, reason = rejected
        row("agent URL", f"{config.agent_url} (REJECTED {name}={raw!r}: {reason}; using the default)")
    else:
        row("agent URL", config.agent_url)
    row("API version", config.api_version)
    rate = config.sample_rate
    row("sample rate", "(unset: the receiver's rates, else 1.0)" if rate is None else rate)
    row("sampling rules", len(config.sampling_rules) if config.sampling_rules else "none")
    row("inject styles", ",".join(config.propagation_style_inject) or "none")
    row("extract styles", ",".join(config.propagation_style_extract) or "none")
    row("logs injection", str(config.logs_injection).lower())
    row("debug", str(config.debug).lower())
    row("span code", span_code())
    row("encoder", encoder_code())
    out.write("integrations:\n")
    out.write(f"  {'name':<10}{'enabled':<9}{'installed':<18}{'supported':<11}note\n")
    for name, st in _patching.status().items():
        version = st["installed_version"] or "not installed"
        if _patching.REGISTRY[name].dist is None and st["installed_version"]:
            version = "stdlib"
        supported = {True: "yes", False: "NO", None: "-"}[st["supported"]]
        note = st["reason"] if st["reason"] and not st["reason"].startswith("unpatched") else ""
        enabled = "yes" if st["enabled"] else "no"
        out.write(f"  {name:<10}{enabled:<9}{version:<18}{supported:<11}{note}\n".rstrip() + "\n")
    ok, message = check_receiver(config.agent_url)
    out.write("receiver:\n")
    out.write(f"  {'OK' if ok else 'FAIL'}: {message}\n")
    if rejected:
        out.write(f"ERROR: {rejected[0]}={rejected[1]!r} was rejected; fix it or unset it\n")
    return 0 if ok and not rejected else 1


# -- main ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        info, debug, command = parse_args(args)
    except UsageError as exc:
        print(f"tracer-run: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    if info:
        if debug:
            from tracer.config import config

            os.environ["TRACER_DEBUG"] = "true"
            config.reload()
        return print_info(command, sys.stdout)
    env = child_env(dict(os.environ), debug)
    path = resolve(command[0], env.get("PATH", os.defpath))
    if path is None:
        print(f"tracer-run: command not found: {command[0]}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(path, command, env)
    except OSError as exc:
        print(f"tracer-run: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())
