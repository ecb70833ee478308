"""The docs cannot drift from the code: the configuration reference is
exactly what ``tracer._config_doc`` renders from ``OPTIONS``, and the
migration guide and integrations page name every ``DD_*`` fallback and every
integration."""

from __future__ import annotations

import os

from tests.utils import REPO
from tracer import _config_doc
from tracer._patching import registry
from tracer.config import OPTIONS, Option


def read(name: str) -> str:
    with open(os.path.join(REPO, "docs", name), encoding="utf-8") as f:
        return f.read()


def test_configuration_reference_is_generated_from_options() -> None:
    current = read("configuration.md")
    assert current == _config_doc.splice(current, _config_doc.render()), (
        "docs/configuration.md is stale: run `python -m tracer._config_doc --write`"
    )
    assert _config_doc.main(["--check"]) == 0


def test_every_variable_is_in_the_reference() -> None:
    doc = read("configuration.md")
    for option in OPTIONS:
        assert f"| `{option.env}` |" in doc
    for name in registry():
        assert f"`TRACER_PATCH_{name.upper()}`" in doc


def test_the_check_notices_a_new_option() -> None:
    # What a forgotten `--write` after adding an Option looks like.
    extra = Option("TRACER_NEW_THING", "new_thing", str, "x", "something new")
    original = _config_doc.OPTIONS
    try:
        _config_doc.OPTIONS = (*original, extra)  # type: ignore[misc]
        current = read("configuration.md")
        assert current != _config_doc.splice(current, _config_doc.render())
    finally:
        _config_doc.OPTIONS = original  # type: ignore[misc]


def test_migration_guide_names_every_datadog_fallback() -> None:
    doc = read("migrating-from-ddtrace.md")
    for option in OPTIONS:
        if option.fallback:
            assert f"`{option.fallback}`" in doc, option.fallback
    assert "DD_TRACE_<INTEGRATION>_ENABLED" in doc


def test_integrations_page_covers_every_integration() -> None:
    doc = read("integrations.md")
    for name in registry():
        assert f"## `{name}`" in doc, name
