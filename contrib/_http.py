"""HTTP helpers shared by the web and HTTP-client integrations (flask, requests).

- :func:`redact_url`: the URL as it may appear in ``http.url`` (no
  credentials, secret query values replaced by ``<redacted>``).
- :func:`set_header_tags`: request/response headers chosen by
  ``TRACER_HEADER_TAGS`` as span tags.
- :func:`untraced` / :func:`is_untraced`: mark code whose outgoing HTTP
  calls must not be traced (the tracer's own traffic).

All run on the app's threads, once per request; they never raise on odd
input (a URL that does not parse is returned with only the userinfo cut).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote_plus

from tracer.config import config

REDACTED = "<redacted>"

_untraced: ContextVar[bool] = ContextVar("tracer_untraced_http", default=False)


@contextmanager
def untraced() -> Iterator[None]:
    """Outgoing HTTP calls made inside the block create no spans."""
    token = _untraced.set(True)
    try:
        yield
    finally:
        _untraced.reset(token)


def is_untraced() -> bool:
    return _untraced.get()


def redact_url(url: str) -> str:
    """Strip ``user:password@`` and the fragment; replace the value of every
    query parameter whose (decoded) key matches ``config.query_string_redact``
    with ``<redacted>``. The rest of the URL is kept byte for byte."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.partition("#")[0]
    # The authority ends at the first '/', '?' (or the end).
    end = len(rest)
    for ch in "/?":
        i = rest.find(ch)
        if i != -1 and i < end:
            end = i
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    path, q, query = tail.partition("?")
    pattern = config.query_string_redact
    if q and query and pattern is not None:
        query = _redact_query(query, pattern)
    out = authority + path + (("?" + query) if q else "")
    return f"{scheme}://{out}" if sep else out


def _redact_query(query: str, pattern: re.Pattern[str]) -> str:
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        key, eq, _value = part.partition("=")
        if eq and pattern.search(unquote_plus(key)):
            parts[i] = key + "=" + REDACTED
            changed = True
    return "&".join(parts) if changed else query


_NORMALIZE = re.compile(r"[^a-z0-9_-]")


def header_tag_name(header: str, kind: str) -> str:
    """Default tag of a header: ``http.<kind>.headers.<normalized name>``,
    ``kind`` being ``request`` or ``response`` (as ddtrace names them)."""
    return f"http.{kind}.headers.{_NORMALIZE.sub('_', header.strip().lower())}"


def set_header_tags(span: Any, headers: Mapping[str, str] | Any, kind: str) -> None:
    """Tag ``span`` with the headers ``TRACER_HEADER_TAGS`` names.

    ``headers`` must look headers up case-insensitively by ``get`` (requests'
    ``CaseInsensitiveDict``, werkzeug's ``Headers``); ``kind`` is ``request``
    or ``response``. Costs one attribute read when no header tags are set."""
    wanted = config.header_tags
    if not wanted or headers is None:
        return
    for header, tag in wanted.items():
        value = headers.get(header)
        if value is None:
            continue
        span.set_tag(tag or header_tag_name(header, kind), str(value))
