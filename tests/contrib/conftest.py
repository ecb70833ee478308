from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tracer.config import config


@pytest.fixture
def spans_in_memory(test_spans: Any) -> None:
    """Nothing leaves the process unless a test asks for the receiver
    (``traced``). Modules use it with ``pytest.mark.usefixtures``."""


@pytest.fixture
def settings() -> Iterator[Any]:
    """``config`` with every attribute a test changes restored afterwards
    (a module may define its own ``settings`` with other starting values)."""
    saved = dict(vars(config))
    yield config
    for key, value in saved.items():
        setattr(config, key, value)
