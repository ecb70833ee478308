"""The service name a process derives when ``TRACER_SERVICE`` is unset.

One rule, used at run time (``tracer._tracer.default_service``) and by
``tracer-run --info`` before the process starts (``tracer.run.derived_service``):

- ``python -m pkg.mod`` (or ``-m pkg``): the top-level package, ``pkg``, so
  every module of one package reports as one service;
- ``python app.py``: the script's name without ``.py`` (``app``); a
  package's ``__main__.py`` run by path: the package directory's name;
- a launcher or interpreter (``gunicorn``, ``flask``, ``python -c``, ...):
  ``python`` (a launcher's name is never a service name).
"""

from __future__ import annotations

import os

LAUNCHERS = frozenset(("gunicorn", "flask", "uwsgi", "uvicorn", "python", "python3", "tracer-run", "pytest", "-c", "-m", ""))


def service_name(script: str, module: str | None) -> str:
    """``script`` is ``sys.argv[0]``; ``module`` the name given to ``python -m``
    (``__main__.__spec__.name``), else None."""
    if module and module != "__main__":  # "__main__": a directory or zip run by path
        top = module.split(".")[0]
        return "python" if top in LAUNCHERS else top
    base = os.path.basename(script)
    if base in ("__main__.py", "__init__.py"):
        base = os.path.basename(os.path.dirname(script))
    if base.endswith(".py"):
        base = base[:-3]
    return "python" if base in LAUNCHERS or base.startswith("python") else base
