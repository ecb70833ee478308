"""Trace ``requests.Session.send`` (every requests call goes through it).

One ``requests.request`` span per send (redirects followed by requests
are nested sends, so each hop gets its own child span): type ``http``,
``span.kind=client``, resource ``"<METHOD> <path>"``, the caller's service
(else the process service), propagation headers injected in the configured
styles. A 5xx response marks the span as an error; an exception marks it and
propagates unchanged. Calls to the configured receiver and calls made inside
``contrib._http.untraced()`` are never traced.
"""

from __future__ import annotations

from typing import Any

from contrib._http import is_untraced, redact_url, set_header_tags
from tracer import propagation
from tracer import tracer as _tracer
from tracer._errors import finish_span, guarded_wrapper
from tracer._patching import Target, integration_functions
from tracer.config import config


def _split(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an absolute http(s) URL, cheaply."""
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    authority = authority.partition("?")[0].rpartition("@")[2]
    path = "/" + tail.partition("?")[0].partition("#")[0] if slash else "/"
    host, port = authority, None  # type: tuple[str, int | None]
    if authority.startswith("["):  # [::1]:8080
        close = authority.find("]")
        host = authority[1:close]
        if authority[close + 1 : close + 2] == ":":
            port = int(authority[close + 2 :])
    elif ":" in authority:
        host, _, p = authority.rpartition(":")
        port = int(p) if p.isdigit() else None
    if port is None:
        port = 443 if scheme.lower() == "https" else 80
    return host, port, path


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_id(segment: str) -> bool:
    if segment.isdigit():
        return True
    if len(segment) == 36 and segment.count("-") == 4:  # UUID
        return _HEX.issuperset(segment.replace("-", ""))
    return len(segment) >= 16 and _HEX.issuperset(segment) and any(c.isdigit() for c in segment)


def quantize_path(path: str) -> str:
    """Numbers, UUIDs and long hex ids in path segments become ``?``
    (``/stock/7`` -> ``/stock/?``) so resources, and the receiver's stats
    keys, stay bounded; ``http.url`` keeps the full URL. A path without a
    digit (most of them) returns at once."""
    if not any(c.isdigit() for c in path):
        return path
    return "/".join("?" if _is_id(seg) else seg for seg in path.split("/"))


def _to_receiver(url: str) -> bool:
    agent = config.agent_url
    return url.startswith(agent) and url[len(agent) : len(agent) + 1] in ("", "/", "?")


def _start_span(instance: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict] | None:
    request: Any = args[0] if args else kwargs.get("request")
    url = request.url or ""
    if not _tracer.enabled or is_untraced() or _to_receiver(url):
        return None
    method = (request.method or "GET").upper()
    host, port, path = _split(url)
    span = _tracer.trace("requests.request", resource=f"{method} {quantize_path(path)}", span_type="http")
    meta = span.meta
    meta["span.kind"] = "client"
    meta["component"] = "requests"
    meta["http.method"] = method
    meta["http.url"] = redact_url(url)
    meta["out.host"] = host
    span.metrics["network.destination.port"] = port
    span.metrics["_dd.measured"] = 1
    headers = request.headers
    if headers is not None:
        propagation.inject(span, headers)
        set_header_tags(span, headers, "request")
    return span, args, kwargs


def _finish_span(instance: Any, span: Any, response: Any, exc: BaseException | None) -> Any:
    if exc is None:
        status = getattr(response, "status_code", None)
        if status is not None:
            span.meta["http.status_code"] = str(status)
            if status >= 500:
                span.error = 1
        set_header_tags(span, getattr(response, "headers", None), "response")
    return finish_span(instance, span, response, exc)


TARGETS = (Target("requests.sessions", "Session.send", guarded_wrapper("requests.send", _start_span, _finish_span)),)


patch, unpatch = integration_functions("requests")
