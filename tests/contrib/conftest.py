from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def spans_in_memory(test_spans: Any) -> None:
    """Nothing leaves the process unless a test asks for the receiver
    (``traced``). Modules use it with ``pytest.mark.usefixtures``."""
