"""Loaded by Python at start-up in processes launched by ``tracer-run``.

``tracer-run`` puts this directory (which holds nothing else, and is not a
package) first on ``PYTHONPATH``, so ``site`` imports this file as
``sitecustomize``. It reads the configuration, calls ``patch_all()``
(which also enables log correlation when configured), then imports the user's own
``sitecustomize`` if one exists further along ``sys.path``. Any error here
is logged and never stops the application.
"""

import os
import sys


def _configure_logging() -> None:
    import logging

    from tracer.config import config

    if not config.debug:
        return
    logger = logging.getLogger("tracer")
    logger.setLevel(logging.DEBUG)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [pid %(process)d] %(message)s"))
        logger.addHandler(handler)
    logger.debug("tracer: bootstrap in pid %d: %s", os.getpid(), " ".join(sys.argv) or sys.executable)


def _start_tracer() -> None:
    try:
        _configure_logging()
        from tracer.config import config

        if not config.enabled:
            return
        import tracer

        tracer.patch_all()  # also installs log correlation when configured
    except ImportError as exc:
        if exc.name != "tracer":
            _bootstrap_failed()
            return
        # tracer-run found an interpreter without the tracer (venv not active).
        sys.stderr.write(
            f"tracer-run: {sys.executable} cannot import tracer, so the application runs untraced: "
            "activate the virtualenv that has it, or run `tracer-run .venv/bin/python ...`\n"
        )
    except Exception:
        _bootstrap_failed()


def _bootstrap_failed() -> None:
    try:
        import logging

        logging.getLogger("tracer").exception("tracer: bootstrap failed; the application runs untraced")
    except Exception:
        pass


def _load_user_sitecustomize() -> None:
    """Import the next ``sitecustomize`` on ``sys.path`` (the user's or the
    distribution's), which ours shadows; behave as ``site`` does on errors."""
    here = os.path.dirname(os.path.abspath(__file__))

    def is_here(entry: str) -> bool:
        try:
            return os.path.abspath(entry or os.getcwd()) == here
        except Exception:
            return False

    positions = [i for i, entry in enumerate(sys.path) if is_here(entry)]
    ours = sys.modules.pop("sitecustomize", None)
    for i in reversed(positions):
        del sys.path[i]
    try:
        import importlib

        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            _report_user_error()
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    except Exception:
        _report_user_error()
        if ours is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = ours
    finally:
        # Back where it was (children inherit PYTHONPATH anyway; this keeps
        # sys.path as the user would see it without a user sitecustomize).
        for i in positions:
            if not any(is_here(entry) for entry in sys.path):
                sys.path.insert(min(i, len(sys.path)), here)


def _report_user_error() -> None:
    # site.py's own wording for a failing sitecustomize.
    import traceback

    exc = sys.exc_info()[1]
    if os.environ.get("PYTHONVERBOSE"):
        traceback.print_exc()
    else:
        print(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(exc).__name__}: {exc}", file=sys.stderr)


_start_tracer()
_load_user_sitecustomize()
