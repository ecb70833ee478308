"""STUB (to be replaced): patch_all / patch / unpatch."""

from __future__ import annotations

from typing import Any


def patch_all(**overrides: bool) -> None:
    pass


def patch(**integrations: bool) -> None:
    pass


def unpatch(**integrations: bool) -> None:
    pass


def _unused(*a: Any) -> None:
    pass
