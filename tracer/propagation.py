"""STUB (to be replaced): distributed header propagation.

Contract:
    inject(span_or_context: Span | Context, headers: MutableMapping[str, str]) -> None
    extract(headers: Mapping[str, str]) -> Context | None   # case-insensitive keys; never raises
"""

from __future__ import annotations

from typing import Any


def inject(span_or_context: Any, headers: Any) -> None:
    pass


def extract(headers: Any) -> Any:
    return None
