"""agent_sim: a local, Datadog-compatible trace receiver with stats and persistence.

Run it with ``agent-sim serve`` (or ``python -m agent_sim``); see DESIGN.md
"Receiver" for the flags, the JSON API and the retention rules.
"""

import logging
import sys

__all__ = ["__version__"]

__version__ = "0.1.0"

# The C fast paths' interface these Python files call (agent_sim/_cdecode.c's
# CDECODE_ABI, exported as ABI): bumped with it.
_CDECODE_ABI = 1


def _refuse_stale_cdecode() -> None:
    """A ``_cdecode`` built from other sources than these files (a checkout
    updated without rebuilding) is refused with one warning naming the fix:
    every ``from agent_sim._cdecode import ...`` then raises ImportError and
    its Python code runs, as without a compiler."""
    try:
        from agent_sim import _cdecode
    except ImportError:
        return
    abi = getattr(_cdecode, "ABI", None)
    if abi == _CDECODE_ABI:
        return
    sys.modules[__name__ + "._cdecode"] = None  # type: ignore[assignment]
    globals().pop("_cdecode", None)
    logging.getLogger("agent_sim").warning(
        "agent_sim._cdecode was built from other sources (ABI %s, these files need %s): using pure Python;"
        " rebuild it: pip install -e . (or python setup.py build_ext --inplace)",
        abi,
        _CDECODE_ABI,
    )


_refuse_stale_cdecode()
