"""STUB (to be replaced by the full sampler): keeps everything.

Contract:
    Sampler(config)
    .decide(trace: _Trace, root: Span) -> None   # sets trace.priority / trace.mechanism once; thread-safe
    .update_rates(rate_by_service: dict[str, float]) -> None   # writer thread, from the receiver's reply
    .after_fork_in_child() -> None
"""

from __future__ import annotations

from typing import Any


class Sampler:
    def __init__(self, config: Any) -> None:
        self.config = config

    def decide(self, trace: Any, root: Any) -> None:
        if trace.priority is None:
            trace.priority = 1
            trace.mechanism = 0

    def update_rates(self, rate_by_service: dict[str, float]) -> None:
        pass
