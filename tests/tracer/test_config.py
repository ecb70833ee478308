"""Configuration: every option declared once, parsed from its documented
default, bad values warn once (naming the variable) and fall back."""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

import pytest

from tracer._patching import registry
from tracer.config import OPTIONS, Config, config

# the package attribute `tracer.config` is the Config object; the module lives in sys.modules
config_module = importlib.import_module("tracer.config")

UNDOCUMENTED_DEFAULTS = ("unset", "derived", "unset (1.0)")


def as_env(value: Any) -> str:
    """The environment spelling of a parsed value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "tracer"]


def test_options_declared_once() -> None:
    envs = [o.env for o in OPTIONS]
    attrs = [o.attr for o in OPTIONS]
    assert len(envs) == len(set(envs)) and len(attrs) == len(set(attrs))
    for option in OPTIONS:
        assert option.env.startswith("TRACER_") and option.doc
        assert option.fallback is None or option.fallback.startswith("DD_")
    # Every typed attribute of Config is an option, and every option one of its attributes.
    assert list(Config.__annotations__) == attrs
    # Values live on the instance only: a class attribute of the same name
    # would make every `config.x` read on the hot paths unspecialized (slower).
    assert not set(attrs) & set(vars(Config))


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.env)
def test_every_option_parses_its_documented_default(option: Any, caplog: pytest.LogCaptureFixture) -> None:
    if option.default_doc in UNDOCUMENTED_DEFAULTS:
        assert option.default in (None, {}, [])
        return
    raw = option.default_doc if option.default_doc is not None else as_env(option.default)
    parsed = option.parse(raw)
    if isinstance(option.default, re.Pattern):
        assert parsed.pattern.endswith(raw)
    else:
        assert parsed == option.default
    assert getattr(Config({option.env: raw}), option.attr) == parsed
    assert warnings_of(caplog) == []


def test_empty_environment_gives_defaults() -> None:
    cfg = Config({})
    for option in OPTIONS:
        assert getattr(cfg, option.attr) == option.default, option.env


def test_parsed_values() -> None:
    cfg = Config({
        "TRACER_ENABLED": "0",
        "TRACER_SERVICE": " shop ",
        "TRACER_TAGS": "team:core, tier:1",
        "TRACER_AGENT_URL": "http://localhost:9000/",
        "TRACER_API_VERSION": "V0.5",
        "TRACER_SAMPLE_RATE": "0.25",
        "TRACER_SAMPLING_RULES": '[{"service": "web*", "sample_rate": 0.5}]',
        "TRACER_RATE_LIMIT": "0",
        "TRACER_PROPAGATION_STYLE_EXTRACT": "tracecontext, Datadog,tracecontext",
        "TRACER_PROPAGATION_STYLE_INJECT": "none",
        "TRACER_HEADER_TAGS": "X-Request-Id:req.id, User-Agent",
        "TRACER_QUERY_STRING_REDACT": "",
        "TRACER_WRITER_INTERVAL": "0.5",
    })
    assert cfg.enabled is False
    assert cfg.service == "shop"
    assert cfg.tags == {"team": "core", "tier": "1"}
    assert cfg.agent_url == "http://localhost:9000"
    assert cfg.api_version == "v0.5"
    assert cfg.sample_rate == 0.25
    assert cfg.sampling_rules == [{"service": "web*", "sample_rate": 0.5}]
    assert cfg.rate_limit == 0.0
    assert cfg.propagation_style_extract == ("tracecontext", "datadog")
    assert cfg.propagation_style_inject == ()
    assert cfg.header_tags == {"x-request-id": "req.id", "user-agent": None}
    assert cfg.query_string_redact is None
    assert cfg.writer_interval == 0.5
    assert Config({"TRACER_TAGS": "a:1 b:2"}).tags == {"a": "1", "b": "2"}


def test_legacy_b3_single_header_spelling() -> None:
    assert Config({"TRACER_PROPAGATION_STYLE_EXTRACT": "b3 single header"}).propagation_style_extract == ("b3",)


@pytest.mark.parametrize(
    ("env", "raw", "attr"),
    [
        ("TRACER_ENABLED", "maybe", "enabled"),
        ("TRACER_SAMPLE_RATE", "1.5", "sample_rate"),
        ("TRACER_SAMPLE_RATE", "half", "sample_rate"),
        ("TRACER_SAMPLING_RULES", "[{service: web}]", "sampling_rules"),
        ("TRACER_SAMPLING_RULES", '{"sample_rate": 1}', "sampling_rules"),
        ("TRACER_SAMPLING_RULES", '[{"service": "web"}]', "sampling_rules"),
        ("TRACER_SAMPLING_RULES", '[{"service": 3, "sample_rate": 1}]', "sampling_rules"),
        ("TRACER_SAMPLING_RULES", '[{"sample_rate": 2}]', "sampling_rules"),
        ("TRACER_RATE_LIMIT", "-1", "rate_limit"),
        ("TRACER_RATE_LIMIT", "nan", "rate_limit"),
        ("TRACER_SAMPLE_RATE", "nan", "sample_rate"),
        ("TRACER_WRITER_INTERVAL", "nan", "writer_interval"),
        ("TRACER_AGENT_URL", "ftp://127.0.0.1:8126", "agent_url"),
        ("TRACER_AGENT_URL", "127.0.0.1:8126", "agent_url"),
        ("TRACER_API_VERSION", "v0.7", "api_version"),
        ("TRACER_PROPAGATION_STYLE_INJECT", "datadog,zipkin", "propagation_style_inject"),
        ("TRACER_PARTIAL_FLUSH_MIN_SPANS", "0", "partial_flush_min_spans"),
        ("TRACER_PARTIAL_FLUSH_MIN_SPANS", "1.5", "partial_flush_min_spans"),
        ("TRACER_WRITER_TIMEOUT", "0", "writer_timeout"),
        ("TRACER_WRITER_BUFFER_BYTES", "lots", "writer_buffer_bytes"),
        ("TRACER_TAGS", "novalue", "tags"),
        ("TRACER_HEADER_TAGS", ":tag", "header_tags"),
        ("TRACER_QUERY_STRING_REDACT", "(unclosed", "query_string_redact"),
        ("TRACER_DBM_PROPAGATION", "everything", "dbm_propagation"),
        ("TRACER_MYSQL_SERVICE", " ", "mysql_service"),
        ("TRACER_HEADER_TAGS", "X-Id, :tag", "header_tags"),
        ("TRACER_PROPAGATION_STYLE_EXTRACT", "datadog b3 zipkin", "propagation_style_extract"),
    ],
)
def test_bad_value_warns_once_naming_the_variable_and_falls_back(
    env: str, raw: str, attr: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "_warned", set())
    default = next(o.default for o in OPTIONS if o.env == env)
    with caplog.at_level(logging.WARNING, logger="tracer"):
        first = Config({env: raw})
        second = Config({env: raw})
    assert getattr(first, attr) == default and getattr(second, attr) == default
    assert first.rejected[attr][:2] == (env, raw)
    (message,) = warnings_of(caplog)
    assert env in message and repr(raw) in message and "default" in message


def test_dd_fallbacks_and_tracer_names_win() -> None:
    cfg = Config({"DD_SERVICE": "dd-svc", "DD_ENV": "prod", "DD_VERSION": "1.2", "DD_TRACE_AGENT_URL": "http://h:1",
                  "DD_TRACE_API_VERSION": "v0.5", "DD_TRACE_RATE_LIMIT": "7", "DD_LOGS_INJECTION": "true",
                  "DD_TRACE_ENABLED": "false", "DD_TAGS": "a:b", "DD_TRACE_DEBUG": "1",
                  "DD_TRACE_PROPAGATION_STYLE_EXTRACT": "b3multi", "DD_TRACE_PROPAGATION_STYLE_INJECT": "b3",
                  "DD_TRACE_HEADER_TAGS": "x-id", "DD_DBM_PROPAGATION_MODE": "full",
                  "DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP": "tok"})
    assert (cfg.service, cfg.env, cfg.version, cfg.agent_url, cfg.api_version) == (
        "dd-svc", "prod", "1.2", "http://h:1", "v0.5")
    assert (cfg.rate_limit, cfg.logs_injection, cfg.enabled, cfg.tags, cfg.debug) == (7.0, True, False, {"a": "b"}, True)
    assert (cfg.propagation_style_extract, cfg.propagation_style_inject) == (("b3multi",), ("b3",))
    assert (cfg.header_tags, cfg.dbm_propagation, cfg.query_string_redact.pattern) == (  # type: ignore[union-attr]
        {"x-id": None}, "full", "tok")
    both = Config({"DD_SERVICE": "dd-svc", "TRACER_SERVICE": "ours", "DD_ENV": "prod", "TRACER_ENV": "staging"})
    assert (both.service, both.env) == ("ours", "staging")


def test_options_without_fallback_ignore_dd_names() -> None:
    # TRACER_SAMPLE_RATE has no DD_ fallback (ddtrace's DD_TRACE_SAMPLE_RATE semantics differ)
    assert Config({"DD_TRACE_SAMPLE_RATE": "0.1"}).sample_rate is None


def test_patch_enabled(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "_warned", set())
    assert all(Config({}).patch_enabled(name, entry.default) is entry.default for name, entry in registry().items())
    assert Config({"TRACER_PATCH_FLASK": "false"}).patch_enabled("flask", True) is False
    assert Config({"DD_TRACE_SQLITE3_ENABLED": "0"}).patch_enabled("sqlite3", True) is False
    assert Config({"TRACER_PATCH_MYSQL": "1", "DD_TRACE_MYSQL_ENABLED": "0"}).patch_enabled("mysql", False) is True
    assert Config({}).patch_enabled("nosuchlib") is False
    assert Config({"TRACER_PATCH_NOSUCHLIB": "true"}).patch_enabled("nosuchlib") is True
    with caplog.at_level(logging.WARNING, logger="tracer"):
        bad = Config({"TRACER_PATCH_REQUESTS": "sometimes"})
        assert bad.patch_enabled("requests", True) is True
        assert bad.patch_enabled("requests", True) is True
    (message,) = warnings_of(caplog)
    assert "TRACER_PATCH_REQUESTS" in message


def test_reload_updates_the_same_object(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = dict(config._environ)
    try:
        config.reload({"TRACER_ENV": "reloaded", "TRACER_PATCH_FLASK": "off"})
        assert config.env == "reloaded" and config.patch_enabled("flask") is False
        from tracer import config as exported

        assert exported is config
        monkeypatch.setenv("TRACER_ENV", "from-os")
        config.reload()
        assert config.env == "from-os"
    finally:
        config.reload(saved)
    assert config.env == saved.get("TRACER_ENV", saved.get("DD_ENV"))


def test_as_dict_names_every_variable() -> None:
    out = Config({"TRACER_QUERY_STRING_REDACT": "abc"}).as_dict()
    assert list(out) == [o.env for o in OPTIONS]
    assert out["TRACER_QUERY_STRING_REDACT"] == "abc"
