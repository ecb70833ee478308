"""agent_sim: a local, Datadog-compatible trace receiver with stats and persistence.

Run it with ``agent-sim serve`` (or ``python -m agent_sim``); see DESIGN.md
"Receiver" for the flags, the JSON API and the retention rules.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
