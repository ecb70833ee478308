"""Configuration from the environment, declared once.

Every variable the tracer reads is declared in ``OPTIONS`` with its default,
its Datadog fallback and a one-line doc. ``load()`` parses them with one
helper per type (every numeric one built by the typed ``_number``); a bad
value logs one warning naming the variable, the value and the default used
instead, and never raises. The docs' configuration
reference is generated from (and tested against) ``OPTIONS``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

log = logging.getLogger("tracer")

DEFAULT_REDACT = r"(?i)pass|pwd|token|secret|key|auth|signature|session"


class ConfigError(ValueError):
    """A value that cannot be parsed; the message says what was expected."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError("expected true or false")


N = TypeVar("N", int, float)


def _number(kind: Callable[[str], N], ok: Callable[[N], bool], expected: str) -> Callable[[str], N]:
    """A parser of one number type whose value must satisfy ``ok``; anything
    else (NaN included) raises ``ConfigError(expected)``."""

    def parse(raw: str) -> N:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(expected) from None
        if not ok(value):
            raise ConfigError(expected)
        return value

    return parse


_rate = _number(float, lambda v: 0.0 <= v <= 1.0, "expected a number between 0 and 1")
_positive_float = _number(float, lambda v: v > 0, "expected a positive number")
_positive_int = _number(int, lambda v: v > 0, "expected a positive whole number")
_non_negative_float = _number(float, lambda v: v >= 0, "expected a number >= 0")


def _str(raw: str) -> str | None:
    return raw.strip() or None


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+$", value):
        raise ConfigError("expected a URL like http://127.0.0.1:8126")
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        parts = None  # type: ignore[assignment]
    if parts is None or not parts.hostname:
        raise ConfigError("expected a URL like http://127.0.0.1:8126 (host, then a numeric port 1-65535)")
    return value


def _api_version(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("v0.4", "v0.5"):
        raise ConfigError("expected v0.4 or v0.5")
    return value


_STYLES = ("datadog", "tracecontext", "b3multi", "b3", "none")


def _styles(raw: str) -> tuple[str, ...]:
    styles = []
    raw = re.sub(r"(?i)b3 single header", "b3", raw)  # ddtrace's legacy spelling
    for part in raw.replace(" ", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in _STYLES:
            raise ConfigError("expected a list of " + ", ".join(_STYLES))
        if part != "none" and part not in styles:
            styles.append(part)
    return tuple(styles)


def _tags(raw: str) -> dict[str, str]:
    """``k:v,k2:v2`` (Datadog also accepts spaces as separators)."""
    tags: dict[str, str] = {}
    sep = "," if "," in raw else " "
    for item in raw.split(sep):
        item = item.strip()
        if not item:
            continue
        key, colon, value = item.partition(":")
        if not key or not colon:
            raise ConfigError("expected key:value pairs separated by commas")
        tags[key.strip()] = value.strip()
    return tags


def _header_tags(raw: str) -> dict[str, str | None]:
    """``Header-Name[:tag.name],...`` → {lowercased header: tag name or None}."""
    out: dict[str, str | None] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        header, _, tag = item.partition(":")
        header = header.strip().lower()
        if not header:
            raise ConfigError("expected Header-Name[:tag.name] items separated by commas")
        out[header] = tag.strip() or None
    return out


def _regex(raw: str) -> re.Pattern[str] | None:
    if not raw.strip():
        return None
    try:
        return re.compile(raw)
    except re.error as exc:
        raise ConfigError(f"not a valid regular expression ({exc})") from None


def _rules(raw: str) -> list[dict[str, Any]]:
    try:
        rules = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON ({exc})") from None
    if not isinstance(rules, list):
        raise ConfigError("expected a JSON list of {service, name, resource, sample_rate}")
    for rule in rules:
        if not isinstance(rule, dict) or "sample_rate" not in rule:
            raise ConfigError("each rule needs a sample_rate")
        _rate(str(rule["sample_rate"]))
        for field in ("service", "name", "resource"):
            if field in rule and not isinstance(rule[field], str):
                raise ConfigError(f"rule field {field!r} must be a string glob")
    return rules


def _dbm(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("disabled", "service", "full"):
        raise ConfigError("expected disabled, service or full")
    return value


@dataclass(frozen=True)
class Option:
    env: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    fallback: str | None = None
    default_doc: str | None = None  # how the default reads in docs, when not repr-able


OPTIONS: tuple[Option, ...] = (
    Option("TRACER_ENABLED", "enabled", _bool, True, "off: no spans, no threads, patching is a no-op", "DD_TRACE_ENABLED"),
    Option("TRACER_SERVICE", "service", _str, None, "process service name", "DD_SERVICE", "derived"),
    Option("TRACER_ENV", "env", _str, None, "unified service tag env", "DD_ENV", "unset"),
    Option("TRACER_VERSION", "version", _str, None, "unified service tag version", "DD_VERSION", "unset"),
    Option("TRACER_TAGS", "tags", _tags, {}, "k:v,k2:v2 tags on every root span", "DD_TAGS", "unset"),
    Option("TRACER_AGENT_URL", "agent_url", _url, "http://127.0.0.1:8126", "receiver address", "DD_TRACE_AGENT_URL"),
    Option("TRACER_API_VERSION", "api_version", _api_version, "v0.4", "wire format: v0.4 or v0.5", "DD_TRACE_API_VERSION"),
    Option("TRACER_SAMPLE_RATE", "sample_rate", _rate, None, "explicit keep rate 0..1", None, "unset (1.0)"),
    Option("TRACER_SAMPLING_RULES", "sampling_rules", _rules, [], "JSON list of {service, name, resource, sample_rate} with * and ? globs", None, "unset"),
    Option("TRACER_RATE_LIMIT", "rate_limit", _non_negative_float, 100.0, "traces per second kept by sampling rules", "DD_TRACE_RATE_LIMIT"),
    Option("TRACER_PROPAGATION_STYLE_EXTRACT", "propagation_style_extract", _styles, ("datadog", "tracecontext", "b3multi", "b3"), "header styles read, first match wins", "DD_TRACE_PROPAGATION_STYLE_EXTRACT", "datadog,tracecontext,b3multi,b3"),
    Option("TRACER_PROPAGATION_STYLE_INJECT", "propagation_style_inject", _styles, ("datadog", "tracecontext"), "header styles written", "DD_TRACE_PROPAGATION_STYLE_INJECT", "datadog,tracecontext"),
    Option("TRACER_DISTRIBUTED_TRACING", "distributed_tracing", _bool, True, "continue traces from incoming headers"),
    Option("TRACER_PARTIAL_FLUSH_MIN_SPANS", "partial_flush_min_spans", _positive_int, 300, "finished spans of an open trace that trigger a partial flush"),
    Option("TRACER_WRITER_INTERVAL", "writer_interval", _positive_float, 1.0, "seconds between flushes to the receiver"),
    Option("TRACER_WRITER_TIMEOUT", "writer_timeout", _positive_float, 2.0, "seconds per HTTP request to the receiver"),
    Option("TRACER_WRITER_BUFFER_BYTES", "writer_buffer_bytes", _positive_int, 8 * 1024 * 1024, "encoded bytes held while the receiver is slow or down"),
    Option("TRACER_WRITER_SEND_DROPPED", "send_dropped", _bool, True, "send traces dropped by sampling (priority 0) so the receiver counts them in stats"),
    Option("TRACER_FLASK_SERVICE", "flask_service", _str, None, "service of Flask request spans", None, "derived"),
    Option("TRACER_MYSQL_SERVICE", "mysql_service", _str, "mysql", "service of MySQL query spans"),
    Option("TRACER_SQLITE_SERVICE", "sqlite_service", _str, "sqlite", "service of sqlite3 query spans"),
    Option("TRACER_FLASK_VIEW_ARGS", "flask_view_args", _bool, False, "add flask.view_args.* tags"),
    Option("TRACER_HEADER_TAGS", "header_tags", _header_tags, {}, "Header-Name[:tag.name],... request/response headers recorded as tags", "DD_TRACE_HEADER_TAGS", "unset"),
    Option("TRACER_QUERY_STRING_REDACT", "query_string_redact", _regex, re.compile(DEFAULT_REDACT), "regex of query-string keys whose values become <redacted>; empty turns it off", "DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP", "pass|pwd|token|secret|key|auth|signature|session"),
    Option("TRACER_DBM_PROPAGATION", "dbm_propagation", _dbm, "disabled", "SQL comment propagation: disabled, service or full", "DD_DBM_PROPAGATION_MODE"),
    Option("TRACER_DB_TRACE_FETCH", "db_trace_fetch", _bool, False, "spans for cursor fetch* calls"),
    Option("TRACER_DB_OBFUSCATE", "db_obfuscate", _bool, False, "obfuscate SQL literals in the tracer (for receivers that do not)"),
    Option("TRACER_LOGS_INJECTION", "logs_injection", _bool, False, "add trace_id/span_id/service/env/version to logging records", "DD_LOGS_INJECTION"),
    Option("TRACER_DEBUG", "debug", _bool, False, "verbose tracer logs", "DD_TRACE_DEBUG"),
    Option("TRACER_PURE_PYTHON", "pure_python", _bool, False, "use the pure-Python span code even where its C version (tracer._cspan) is built"),
)

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _lookup(environ: Mapping[str, str], option: Option) -> tuple[str, str] | None:
    for name in (option.env, option.fallback):
        if name and name in environ:
            return name, environ[name]
    return None


class Config:
    """The parsed configuration: one attribute per ``Option.attr``.

    Read on the app's hot paths as plain attributes; rebuilt by ``load()``.
    Tests and the launcher may assign attributes directly.
    """

    enabled: bool
    pure_python: bool
    service: str | None
    env: str | None
    version: str | None
    tags: dict[str, str]
    agent_url: str
    api_version: str
    sample_rate: float | None
    sampling_rules: list[dict[str, Any]]
    rate_limit: float
    propagation_style_extract: tuple[str, ...]
    propagation_style_inject: tuple[str, ...]
    distributed_tracing: bool
    partial_flush_min_spans: int
    writer_interval: float
    writer_timeout: float
    writer_buffer_bytes: int
    send_dropped: bool
    flask_service: str | None
    mysql_service: str
    sqlite_service: str
    flask_view_args: bool
    header_tags: dict[str, str | None]
    query_string_redact: re.Pattern[str] | None
    dbm_propagation: str
    db_trace_fetch: bool
    db_obfuscate: bool
    logs_injection: bool
    debug: bool

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.reload(environ)

    def reload(self, environ: Mapping[str, str] | None = None) -> None:
        """Re-read the environment (or ``environ``) in place: modules hold a
        reference to the one ``config`` object, so it is never replaced."""
        self._environ = dict(os.environ if environ is None else environ)
        # attr -> (variable, raw value, reason) of each value ignored for its default
        self.rejected: dict[str, tuple[str, str, str]] = {}
        for option in OPTIONS:
            setattr(self, option.attr, option.default)
            found = _lookup(self._environ, option)
            if found is None:
                continue
            name, raw = found
            try:
                setattr(self, option.attr, option.parse(raw))
            except ConfigError as exc:
                self.rejected[option.attr] = (name, raw, str(exc))
                shown = option.default_doc or repr(option.default)
                _warn_once(
                    f"{name}={raw}",
                    f"tracer: ignoring {name}={raw!r}: {exc}; using the default ({shown})",
                )

    def patch_enabled(self, integration: str, default: bool = False) -> bool:
        """``TRACER_PATCH_<X>`` (or ``DD_TRACE_<X>_ENABLED``), else ``default``
        (the integration's declaration, ``contrib/<x>/__init__.py``)."""
        upper = integration.upper()
        for name in (f"TRACER_PATCH_{upper}", f"DD_TRACE_{upper}_ENABLED"):
            raw = self._environ.get(name)
            if raw is None:
                continue
            try:
                return _bool(raw)
            except ConfigError as exc:
                _warn_once(f"{name}={raw}", f"tracer: ignoring {name}={raw!r}: {exc}; using the default")
                break
        return default

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for option in OPTIONS:
            value = getattr(self, option.attr)
            if isinstance(value, re.Pattern):
                value = value.pattern
            out[option.env] = value
        return out


def load(environ: Mapping[str, str] | None = None) -> Config:
    return Config(environ)


config = load()
