"""Configuration from the environment, declared once.

Every variable the tracer reads is declared once, as a typed attribute of
``Config`` (``name: type = _option(VARIABLE, parser, default, doc, DD_fallback)``);
``OPTIONS`` is that table, in declaration order. Parsers are built by typed
factories (``_number``, ``_one_of``, ``_listed``, ``_pair``) or are single-purpose
(URL, regex, JSON rules); a bad value raises ``ConfigError`` inside the parser,
and ``Config.reload()`` logs one warning naming the variable, the value and the
default used instead, and never raises. The docs' configuration reference is
generated from (and tested against) ``OPTIONS``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar, cast

log = logging.getLogger("tracer")

DEFAULT_REDACT = r"(?i)pass|pwd|token|secret|key|auth|signature|session"
_DEFAULT_REDACT: re.Pattern[str] | None = re.compile(DEFAULT_REDACT)


class ConfigError(ValueError):
    """A value that cannot be parsed; the message says what was expected."""


T = TypeVar("T")
N = TypeVar("N", int, float)


def _one_of(choices: Mapping[str, T], expected: str) -> Callable[[str], T]:
    """A parser of a case-insensitive word from ``choices`` (word -> value)."""

    def parse(raw: str) -> T:
        try:
            return choices[raw.strip().lower()]
        except KeyError:
            raise ConfigError(expected) from None

    return parse


def _listed(item: Callable[[str], T], separators: str = ",") -> Callable[[str], list[T]]:
    """A parser of a list split on any of ``separators``: each non-empty,
    stripped item parsed by ``item`` (which raises ``ConfigError``)."""
    split = re.compile("[" + re.escape(separators) + "]")

    def parse(raw: str) -> list[T]:
        return [item(part) for part in (p.strip() for p in split.split(raw)) if part]

    return parse


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


def _name(raw: str) -> str:
    """A name that has a default of its own: empty is a mistake, not "unset"."""
    if not raw.strip():
        raise ConfigError("expected a name")
    return raw.strip()


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


def _words(*words: str) -> Callable[[str], str]:
    return _one_of({word: word for word in words}, "expected " + ", ".join(words[:-1]) + " or " + words[-1])


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_bool = _one_of({**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}, "expected true or false")
_api_version = _words("v0.4", "v0.5")
_dbm = _words("disabled", "service", "full")

_STYLES = ("datadog", "tracecontext", "b3multi", "b3", "none")
_style_list = _listed(_one_of({s: s for s in _STYLES}, "expected a list of " + ", ".join(_STYLES)), ", ")


def _styles(raw: str) -> tuple[str, ...]:
    styles = _style_list(re.sub(r"(?i)b3 single header", "b3", raw))  # ddtrace's legacy spelling
    return tuple(dict.fromkeys(s for s in styles if s != "none"))  # in order, once each


def _pair(expected: str, value_optional: bool = False) -> Callable[[str], tuple[str, str]]:
    """``key:value`` → (stripped key, stripped value); the key is required,
    the ``:value`` part too unless ``value_optional``."""

    def parse(item: str) -> tuple[str, str]:
        key, colon, value = item.partition(":")
        if not key.strip() or not (colon or value_optional):
            raise ConfigError(expected)
        return key.strip(), value.strip()

    return parse


_tag_list = {sep: _listed(_pair("expected key:value pairs separated by commas"), sep) for sep in (",", " ")}


def _tags(raw: str) -> dict[str, str]:
    """``k:v,k2:v2`` (Datadog also accepts spaces as separators)."""
    return dict(_tag_list["," if "," in raw else " "](raw))


_header_list = _listed(_pair("expected Header-Name[:tag.name] items separated by commas", value_optional=True))


def _header_tags(raw: str) -> dict[str, str | None]:
    """``Header-Name[:tag.name],...`` → {lowercased header: tag name or None}."""
    return {header.lower(): tag or None for header, tag in _header_list(raw)}


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


@dataclass(frozen=True)
class Option:
    """One variable: ``env`` (and its Datadog ``fallback``) parsed by ``parse``
    into the ``Config`` attribute ``attr``, ``default`` when unset or bad."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    fallback: str | None = None
    default_doc: str | None = None  # how the default reads in docs, when not repr-able

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "attr", name)  # declared in Config's body: the attribute's name


def _option(
    env: str,
    parse: Callable[[str], T],
    default: T,
    doc: str,
    fallback: str | None = None,
    default_doc: str | None = None,
) -> T:
    """Declare a ``Config`` attribute, typed as what ``parse`` returns (the way
    ``dataclasses.field`` is typed as its value): the class body is the table."""
    return cast(T, Option(env, "", parse, default, doc, fallback, default_doc))

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
    """The parsed configuration: one typed attribute per option, declared
    here once with its variable, parser, default and doc (``OPTIONS`` is
    collected from this body).

    Read on the app's hot paths as plain (instance) attributes; rebuilt by
    ``reload()``. Tests and the launcher may assign attributes directly.
    """

    enabled: bool = _option("TRACER_ENABLED", _bool, True, "off: no spans, no threads, patching is a no-op", "DD_TRACE_ENABLED")
    service: str | None = _option("TRACER_SERVICE", _str, None, "process service name", "DD_SERVICE", "derived")
    env: str | None = _option("TRACER_ENV", _str, None, "unified service tag env", "DD_ENV", "unset")
    version: str | None = _option("TRACER_VERSION", _str, None, "unified service tag version", "DD_VERSION", "unset")
    tags: dict[str, str] = _option("TRACER_TAGS", _tags, {}, "k:v,k2:v2 tags on every root span", "DD_TAGS", "unset")
    agent_url: str = _option("TRACER_AGENT_URL", _url, "http://127.0.0.1:8126", "receiver address", "DD_TRACE_AGENT_URL")
    api_version: str = _option("TRACER_API_VERSION", _api_version, "v0.4", "wire format: v0.4 or v0.5", "DD_TRACE_API_VERSION")
    sample_rate: float | None = _option("TRACER_SAMPLE_RATE", _rate, None, "explicit keep rate 0..1", None, "unset (1.0)")
    sampling_rules: list[dict[str, Any]] = _option("TRACER_SAMPLING_RULES", _rules, [], "JSON list of {service, name, resource, sample_rate} with * and ? globs", None, "unset")
    rate_limit: float = _option("TRACER_RATE_LIMIT", _non_negative_float, 100.0, "traces per second kept by sampling rules", "DD_TRACE_RATE_LIMIT")
    propagation_style_extract: tuple[str, ...] = _option("TRACER_PROPAGATION_STYLE_EXTRACT", _styles, ("datadog", "tracecontext", "b3multi", "b3"), "header styles read, first match wins", "DD_TRACE_PROPAGATION_STYLE_EXTRACT", "datadog,tracecontext,b3multi,b3")
    propagation_style_inject: tuple[str, ...] = _option("TRACER_PROPAGATION_STYLE_INJECT", _styles, ("datadog", "tracecontext"), "header styles written", "DD_TRACE_PROPAGATION_STYLE_INJECT", "datadog,tracecontext")
    distributed_tracing: bool = _option("TRACER_DISTRIBUTED_TRACING", _bool, True, "continue traces from incoming headers")
    partial_flush_min_spans: int = _option("TRACER_PARTIAL_FLUSH_MIN_SPANS", _positive_int, 300, "finished spans of an open trace that trigger a partial flush")
    writer_interval: float = _option("TRACER_WRITER_INTERVAL", _positive_float, 1.0, "seconds between flushes to the receiver")
    writer_timeout: float = _option("TRACER_WRITER_TIMEOUT", _positive_float, 2.0, "seconds per HTTP request to the receiver")
    writer_buffer_bytes: int = _option("TRACER_WRITER_BUFFER_BYTES", _positive_int, 8 * 1024 * 1024, "encoded bytes held while the receiver is slow or down")
    send_dropped: bool = _option("TRACER_WRITER_SEND_DROPPED", _bool, True, "send traces dropped by sampling (priority 0) so the receiver counts them in stats")
    flask_service: str | None = _option("TRACER_FLASK_SERVICE", _str, None, "service of Flask request spans", None, "derived")
    mysql_service: str = _option("TRACER_MYSQL_SERVICE", _name, "mysql", "service of MySQL query spans")
    sqlite_service: str = _option("TRACER_SQLITE_SERVICE", _name, "sqlite", "service of sqlite3 query spans")
    flask_view_args: bool = _option("TRACER_FLASK_VIEW_ARGS", _bool, False, "add flask.view_args.* tags")
    header_tags: dict[str, str | None] = _option("TRACER_HEADER_TAGS", _header_tags, {}, "Header-Name[:tag.name],... request/response headers recorded as tags", "DD_TRACE_HEADER_TAGS", "unset")
    query_string_redact: re.Pattern[str] | None = _option("TRACER_QUERY_STRING_REDACT", _regex, _DEFAULT_REDACT, "regex of query-string keys whose values become <redacted>; empty turns it off", "DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP", "pass|pwd|token|secret|key|auth|signature|session")
    dbm_propagation: str = _option("TRACER_DBM_PROPAGATION", _dbm, "disabled", "SQL comment propagation: disabled, service or full", "DD_DBM_PROPAGATION_MODE")
    db_trace_fetch: bool = _option("TRACER_DB_TRACE_FETCH", _bool, False, "spans for cursor fetch* calls")
    db_obfuscate: bool = _option("TRACER_DB_OBFUSCATE", _bool, False, "obfuscate SQL literals in the tracer (for receivers that do not)")
    logs_injection: bool = _option("TRACER_LOGS_INJECTION", _bool, False, "add trace_id/span_id/service/env/version to logging records", "DD_LOGS_INJECTION")
    debug: bool = _option("TRACER_DEBUG", _bool, False, "verbose tracer logs", "DD_TRACE_DEBUG")
    pure_python: bool = _option("TRACER_PURE_PYTHON", _bool, False, "use the pure-Python span code even where its C version (tracer._cspan) is built")

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


#: Every option, in declaration order (the docs' table order).
OPTIONS: tuple[Option, ...] = tuple(value for value in vars(Config).values() if isinstance(value, Option))
# Only the instance holds the values. A class attribute of the same name (an
# Option, a mutable type) would stop CPython >= 3.11 from specializing the
# hot paths' `config.x` reads: 2-4x slower each.
for _declared in OPTIONS:
    delattr(Config, _declared.attr)
del _declared


def load(environ: Mapping[str, str] | None = None) -> Config:
    return Config(environ)


config = load()
