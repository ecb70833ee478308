"""The ``flask.request`` root span: what happens once per WSGI call.

Called from the ``Flask.wsgi_app`` wrapper (see ``patch.py``) on the thread
that serves the request. The span starts before Flask builds its request
context and finishes when the server closes the response iterable, so its
duration covers a streamed body too. Per-request work is kept to dict
look-ups and slot writes: anything derivable per app is cached on the app
(``app.extensions``), the URL is only parsed for redaction when a query string
is present, and the propagation headers are only parsed when one is present.

The request path is counted in Python calls (``bench_flask.py --profile``):
the span starts in ``RequestState.__init__`` with its tags set in place,
``start_response`` is a bound method of the state (no closure per request),
the ``close()`` and drop fallbacks call nothing once the span has ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from itertools import chain as _chain
from types import CodeType, GeneratorType
from typing import Any
from urllib.parse import quote

import tracer as _pkg
from contrib._http import header_tag_name, redact_url
from contrib.flask._hooks import Phase, build_plan
from tracer import propagation
from tracer._errors import guarded_call, internal_error
from tracer._tracer import _RootTrace, _trace_root
from tracer.config import config
from tracer.context import Context, get_active, set_active
from tracer.span import MAX_KEY_LEN, MAX_VALUE_LEN, Span, _cspan

_tracer = _pkg.tracer

# Environ keys of the headers that can carry a trace (datadog, tracecontext,
# b3multi, b3): without one of them extract() is not called at all.
_PROPAGATION_KEYS = ("HTTP_X_DATADOG_TRACE_ID", "HTTP_TRACEPARENT", "HTTP_X_B3_TRACEID", "HTTP_B3")
_EXTENSION_KEY = "tracer.flask"
# Werkzeug's objects the request path reads, bound by bind_werkzeug() when
# Flask.wsgi_app is patched (Flask is being imported then).
_ClosingIterator: Any = None  # werkzeug.wsgi.ClosingIterator
_ITER_ENCODED: Any = None  # the code of werkzeug's Response._iter_encoded


def bind_werkzeug() -> None:
    global _ClosingIterator, _ITER_ENCODED
    from werkzeug import wsgi
    from werkzeug.wrappers import response

    _ClosingIterator = getattr(wsgi, "ClosingIterator", None)
    _ITER_ENCODED = getattr(getattr(response, "_iter_encoded", None), "__code__", None)
    # RequestState.respond for a plain body in C (tracer/_cspan_flask.c),
    # the Python method for the rest; it reads what was just bound.
    method: Any = _respond
    if _CClosingBody is not None and type(_ClosingIterator) is type and type(_ITER_ENCODED) is CodeType:
        method = _cspan.Respond(_respond, RequestState, _ClosingIterator, _ITER_ENCODED, _CClosingBody)
    setattr(RequestState, "respond", method)  # noqa: B010


def _environ_key(header: str) -> str:
    """The WSGI environ key of a request header."""
    key = header.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return key
    return "HTTP_" + key


class _HeaderPlan:
    """``TRACER_HEADER_TAGS`` resolved once per configured mapping: the
    environ key and tag of each request header, the tag of each response
    header by lowercased name."""

    __slots__ = ("source", "request", "response")

    def __init__(self, wanted: dict[str, str | None]) -> None:
        self.source = wanted
        self.request = [
            (_environ_key(header), tag or header_tag_name(header, "request")) for header, tag in wanted.items()
        ]
        self.response = {header: tag or header_tag_name(header, "response") for header, tag in wanted.items()}


_plan: _HeaderPlan | None = None


def _header_plan(wanted: dict[str, str | None]) -> _HeaderPlan:
    global _plan
    plan = _plan
    if plan is None or plan.source is not wanted:
        plan = _plan = _HeaderPlan(wanted)
    return plan


class _AppInfo:
    """Per-app data computed on the app's first traced request: its service
    and the hook plan of each endpoint seen (see ``_hooks``)."""

    __slots__ = ("service", "plans", "traced")

    def __init__(self, app: Any) -> None:
        self.service = _app_service(app)
        self.plans: dict[str | None, dict[Any, Phase]] = {}
        # Per endpoint, its sync functions already traced (function -> what
        # ensure_sync returns for it): one look-up per user function call.
        self.traced: dict[str | None, dict[Any, Callable[..., Any]]] = {}


def _app_service(app: Any) -> str:
    # The app's import name says what the app is; a launcher (gunicorn,
    # flask, uwsgi) never does. "__main__" means a script: the tracer's
    # process service knows the script or module name.
    name = (getattr(app, "import_name", None) or "").split(".")[0]
    if not name or name == "__main__":
        return _tracer.service
    return name


def app_info(app: Any) -> _AppInfo:
    extensions = app.extensions
    info = extensions.get(_EXTENSION_KEY)
    if info is None:
        info = extensions[_EXTENSION_KEY] = _AppInfo(app)
    return info


def request_url(environ: Mapping[str, Any]) -> str:
    """``http.url``: scheme, host, path and (redacted) query; never credentials."""
    host = environ.get("HTTP_HOST")
    scheme = environ.get("wsgi.url_scheme", "http")
    if not host:
        host = environ.get("SERVER_NAME", "")
        port = environ.get("SERVER_PORT", "")
        if port and not ((scheme == "http" and port == "80") or (scheme == "https" and port == "443")):
            host = f"{host}:{port}"
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if not path.isascii():
        # PEP 3333: the path is latin-1-decoded bytes; show it percent-encoded.
        path = quote(path.encode("latin-1", "replace"), safe="/%:@!$&'()*+,;=-._~")
    url = f"{scheme}://{host}{path}"
    query = environ.get("QUERY_STRING")
    if query:
        url = redact_url(f"{url}?{query}")
    if len(url) > MAX_VALUE_LEN:
        url = url[:MAX_VALUE_LEN]
    return url


# Tag name of each view argument seen (the names come from the app's URL
# rules: a bounded set); cut to the longest key set_tag keeps.
_VIEW_ARG_TAGS: dict[str, str] = {}


def _view_arg_tag(key: str) -> str:
    tag = f"flask.view_args.{key}"[:MAX_KEY_LEN]
    if len(_VIEW_ARG_TAGS) < 4096:
        _VIEW_ARG_TAGS[key] = tag
    return tag


_NO_PLAN: Mapping[Any, Phase] = {}
_NOT_TRACED: dict[Any, Callable[..., Any]] = {}
_new = object.__new__


class RequestState:
    """One traced request: its root span and what the wrappers learn.

    Built by ``start_request`` (from the ``Flask.wsgi_app`` wrapper), which
    passes ``start_response`` (a bound method, no per-request closure) to
    Flask in place of the server's. ``plan`` maps the user functions of the
    matched endpoint to their phase (filled by ``match_rule``), ``traced``
    those already traced (function -> its traced version, filled by
    ``ensure_sync``); ``exc`` is the exception that made
    the response a 5xx, if one was seen; ``entry`` is the active span the WSGI
    call started from (the server's context), given back when the app
    returns; ``headers`` the header-tag plan (None: no header tags)."""

    __slots__ = ("span", "environ", "app", "info", "plan", "traced", "exc", "matched", "entry", "headers", "_start_response")
    span: Span
    environ: dict[str, Any]
    app: Any
    info: _AppInfo
    plan: Mapping[Any, Phase]
    traced: dict[Any, Callable[..., Any]]
    exc: BaseException | None
    matched: bool
    entry: Any
    headers: _HeaderPlan | None
    _start_response: Callable[..., Any]

    def match_rule(self) -> None:
        """Once Flask has matched the URL (its request context is pushed, no
        user function has run yet): resource, route tags and the hook plan."""
        self.matched = True
        request: Any = self.environ.get("werkzeug.request")
        rule = getattr(request, "url_rule", None)
        endpoint = None
        if rule is not None:
            span = self.span
            route = rule.rule
            endpoint = rule.endpoint
            meta = span.meta
            span.resource = f"{meta['http.method']} {route}"
            meta["http.route"] = route
            meta["flask.endpoint"] = endpoint
            if config.flask_view_args:
                view_args = request.view_args
                if view_args:
                    for key, value in view_args.items():
                        tag = _VIEW_ARG_TAGS.get(key) or _view_arg_tag(key)
                        text = value if type(value) is str else str(value)
                        if len(text) <= MAX_VALUE_LEN:
                            meta[tag] = text  # what set_tag does with a short str
                        else:
                            span.set_tag(tag, text)
        info = self.info
        plan = info.plans.get(endpoint)
        if plan is None:
            plan = info.plans[endpoint] = build_plan(self.app, endpoint)
            info.traced[endpoint] = {}
        self.plan = plan
        self.traced = info.traced[endpoint]

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """The ``start_response`` Flask gets: records the status (and header
        tags) on the root span, then calls the server's."""
        try:
            span = self.span
            meta = span.meta
            code = status[:3]
            meta["http.status_code"] = code
            if not self.matched:
                self.match_rule()
            if "http.route" not in meta:
                # No rule matched: "GET 404" keeps the resource count bounded.
                # A wrong method (405) or Werkzeug's slash redirect (308) did
                # match a path, and says so.
                span.resource = f"{meta['http.method']} {code if code in ('405', '308') else '404'}"
            if code[0] == "5":
                exc = self.exc
                if exc is not None:
                    span.set_exc_info(type(exc), exc, exc.__traceback__)
                else:
                    span.error = 1
            plan = self.headers
            if plan is not None:
                tags = plan.response
                for key, value in headers:
                    tag = tags.get(key.lower())
                    if tag is not None:
                        meta[tag] = str(value)[:MAX_VALUE_LEN]
        except Exception:
            internal_error("flask.start_response")
        if exc_info is None:  # a call without the argument tuple *args would build
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)

    def respond(self, body: Iterable[bytes]) -> Iterable[bytes]:
        """Flask returned ``body``: the server's context is given back
        (whatever the app left active: a span it never finished), and the
        body is returned wrapped so that the request span ends exactly once,
        whatever the server does with it.

        Werkzeug's iterable for a list or tuple body (what a view returning
        str, bytes, a dict or a rendered template makes), or for no body
        (HEAD, 204, 304), runs no code of the app: it is read without the
        request span active (no ContextVar writes: two per chunk and one by
        the finish at the body's end). Anything else (a generator, a file,
        ``direct_passthrough``, an HTTPException's page, another Werkzeug)
        is read with the span active. Werkzeug's private attributes are
        read here, each checked; the wrapper is built without an
        ``__init__`` call (a C-to-Python entry per request).

        A ``wsgi.file_wrapper`` body is returned as a new file wrapper of the
        server's type around the same file, so servers that send files with
        ``sendfile()`` still recognize it."""
        span = self.span
        span._request = None  # the request has returned (and no cycle is left)
        set_active(self.entry)
        activate = plain = True
        if type(body) is _ClosingIterator:
            werkzeug_body: Any = body
            try:
                produce = werkzeug_body._next  # partial(next, iterator)
                if type(produce) is partial and produce.func is next:
                    iterator = produce.args[0]
                    if type(iterator) in _SEQUENCE_ITERATORS:
                        activate = False  # and plain: a list or tuple iterator never fails
                    elif type(iterator) is GeneratorType and iterator.gi_code is _ITER_ENCODED:
                        # Response.iter_encoded's generator over the response's
                        # own body; the response is the last callback's (its close()).
                        response = getattr(werkzeug_body._callbacks[-1], "__self__", None)
                        items = getattr(response, "response", None)
                        activate = type(items) not in (list, tuple)
                        # What set_data makes (str, a dict, a template): one
                        # bytes chunk, yielded as it is (a str item is
                        # encoded while read, and can fail then).
                        plain = not activate and (not items or (len(items) == 1 and type(items[0]) is bytes))
            except Exception:
                activate = plain = True
        else:
            file_wrapper = self.environ.get("wsgi.file_wrapper")
            if file_wrapper is not None and type(file_wrapper) is type and isinstance(body, file_wrapper):
                filelike = getattr(body, "filelike", None)
                if filelike is not None:
                    return file_wrapper(_ClosingFile(filelike, span), getattr(body, "blksize", 8192))
        if not activate and plain and _CClosingBody is not None and type(span) is Span:
            return _CClosingBody(body, span)  # the same work in C (tracer/_cspan_body.c)
        closing: _ClosingBody = _new(_ClosingBody)
        closing._body = body
        closing._span = span
        closing._it = None
        closing._activate = activate
        closing._plain = not activate and plain
        return closing

    def escaped(self, exc: BaseException) -> None:
        """An exception left the WSGI app: the server's context is given
        back, and the root span records the exception and ends."""
        span = self.span
        span._request = None
        set_active(self.entry)
        if not self.matched:
            self.match_rule()
        if "http.route" not in span.meta:
            span.resource = f"{span.meta['http.method']} 404"
        span.set_exc_info(type(exc), exc, exc.__traceback__)
        span.finish()


# RequestState.respond in Python; bind_werkzeug() puts it, or the C one
# made from it, on the class.
_respond = RequestState.respond
if _cspan is not None:
    # Its common case in C (tracer/_cspan_flask.c), the method above for the
    # rest: a bound method as before, no Python frame per request.
    setattr(RequestState, "start_response", _cspan.StartResponse(RequestState.start_response, RequestState))  # noqa: B010


def request_state(span: Any) -> RequestState | None:
    """The state of the Flask request running in this context, found from
    ``span`` (the active one): the root span of a request holds its state
    (``_request``) from ``start_request`` until the WSGI call returns
    (``respond``, ``escaped``), so a request span left behind by an earlier
    request has none. The walk goes up the parents, and from a root without
    one to the span active before it was activated (``_prev``): a span of
    another trace the app made active inside a request (``start_span(...,
    activate=True)``) still leads back to the request. The ``_prev`` steps
    are bounded (their links can form a loop when an app re-activates spans
    by hand); a chain of parents always ends at a root."""
    jumps = 0
    while span is not None:
        state = getattr(span, "_request", None)  # None too for _prev's "never activated" marker
        if state is not None:
            return state  # type: ignore[no-any-return]
        up = getattr(span, "_parent", None)
        if up is None:
            jumps += 1
            if jumps > _MAX_JUMPS:
                return None
            up = getattr(span, "_prev", None)
        span = up
    return None


_MAX_JUMPS = 64


def start_request(app: Any, environ: dict[str, Any], start_response: Callable[..., Any]) -> RequestState:
    """Start and activate the root span of a request; record its request
    tags; the state goes on the span (``request_state``) last, so that a
    failure here leaves none on it. A function, not ``RequestState.__init__``: called from
    ``wsgi_app`` without the type call's C-to-Python entry (≈ 1 k
    instructions)."""
    state: RequestState = _new(RequestState)
    state.app = app
    state.environ = environ
    state._start_response = start_response
    state.plan = _NO_PLAN  # read only: match_rule puts the endpoint's in
    state.traced = _NOT_TRACED  # read only: as plan
    state.exc = None
    state.matched = False
    # Outside another Flask request (an app calling another app's
    # wsgi_app), a finished span or a flask.request span still active here
    # was left behind by an earlier request on this thread (a server that
    # skipped close(), an app that never finished a span): it is dropped,
    # never the parent of this request.
    parent: Any = get_active()
    if (
        parent is not None
        and (parent.duration_ns is not None or parent.name == "flask.request")
        and request_state(parent) is None
    ):
        set_active(None)
        parent = None
    state.entry = entry = parent
    if config.distributed_tracing and not environ.keys().isdisjoint(_PROPAGATION_KEYS):
        context = propagation.extract(environ)  # reads HTTP_* keys itself
        if context is not None:
            parent = context
    info = app.extensions.get(_EXTENSION_KEY)
    if info is None:
        info = app_info(app)
    state.info = info
    method = environ.get("REQUEST_METHOD", "GET")
    service = config.flask_service or config.service or info.service
    span = None
    if _trace_root is not None and (parent is None or type(parent) is Context):
        # What start_span does for a new trace or one continued from
        # headers, without its frame: the root and its trace built in C
        # (None: a context with a sampling decision only).
        span = _trace_root(_RootTrace, _tracer._buffer, "flask.request", service, None, "web", False, parent)
    if span is None:
        span = _tracer.start_span("flask.request", parent, service, None, "web")
    state.span = span
    span._prev = entry  # activated, as start_span(activate=True) does
    set_active(span)
    meta = span.meta
    meta["component"] = "flask"
    meta["span.kind"] = "server"
    meta["http.method"] = method
    meta["http.url"] = request_url(environ)
    useragent = environ.get("HTTP_USER_AGENT")
    if useragent:
        meta["http.useragent"] = useragent[:MAX_VALUE_LEN]
    span.metrics["_dd.measured"] = 1
    wanted = config.header_tags
    headers = None
    if wanted:
        headers = _plan if _plan is not None and _plan.source is wanted else _header_plan(wanted)
        for key, tag in headers.request:
            value = environ.get(key)
            if value is not None:
                meta[tag] = value[:MAX_VALUE_LEN]
    state.headers = headers
    span._request = state  # found by request_state until the WSGI call returns
    return state


# Meta tag set when the server stopped sending the body before its end (the
# client hung up, or the server gave up on it): the span keeps the status
# that was sent.
CLIENT_DISCONNECTED = "http.client_disconnected"


def _end(span: Span, started: bool) -> None:
    """The end of a request span whose body was neither exhausted nor
    failed: closed, or dropped by a server that never closed it."""
    if span.duration_ns is None:
        if started:
            span.meta[CLIENT_DISCONNECTED] = "true"
        span.finish()


_SEQUENCE_ITERATORS: tuple[type, ...] = (type(iter(())), type(iter([])))


class _ClosingBody:
    """The response iterable, as the server sees it.

    The request span ends at the first of: the body's end (``StopIteration``),
    an exception from the body (recorded on the span), ``close()``, or the
    wrapper being dropped without either (some servers skip ``close()``:
    Werkzeug's development server does when discarding the unread request
    body raises after the client reset the connection). ``finish()`` is
    idempotent, so a later ``close()`` only closes the app's body.

    The span is active only while the app's body produces a chunk (work done
    by a streamed body joins the request's trace; ``activate`` False: the
    body runs no code of the app, see ``RequestState.respond``); between
    chunks, and after the request, the server's thread has its own context
    back, so a body the server abandons can never leave its span active for
    the next request."""

    # Built by RequestState.respond (no __init__: a C-to-Python entry less).
    __slots__ = ("_body", "_span", "_it", "_activate", "_plain")
    _body: Iterable[bytes]
    _span: Span
    _it: Iterator[bytes] | None
    _activate: bool
    _plain: bool  # runs no code of the app and cannot fail (see respond)

    def __iter__(self) -> Iterator[bytes]:
        """The server's iterator. A plain body (``_plain``) is read through
        ``itertools.chain`` (C), whose last iterable, asked for only once
        the app's is exhausted, ends the span (``_BodyEnd``): no generator
        to resume per chunk, and none to finalize with a ``GeneratorExit``
        when the server closes the body before its end. Any other body is
        read by ``_chunks``."""
        if self._plain:
            it = self._it
            if it is None:
                end: _BodyEnd = _new(_BodyEnd)
                end._span = self._span
                it = self._it = _chain(self._body, end)
            return it
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        """The app's chunks; the span ends at the body's end or with its
        exception. A generator: the server's next() resumes it (a
        Python-level __next__ would be a call from C per chunk), and a
        server's second iter() is on the generator (C). ``_it`` is the app's
        iterator (one, however many times the server calls ``iter`` on this
        object); set, it tells ``close()`` that the server started on the
        body."""
        span = self._span
        activate = self._activate
        prev = None
        while True:
            if activate:
                prev = get_active()
                set_active(span)
            try:
                it = self._it
                if it is None:
                    it = self._it = iter(self._body)
                chunk = next(it)
            except StopIteration:
                span.finish()
                return
            except BaseException as exc:
                if span.duration_ns is None:
                    if not isinstance(exc, GeneratorExit):
                        span.set_exc_info(type(exc), exc, exc.__traceback__)
                    span.finish()
                raise
            finally:
                if activate:
                    set_active(prev)
            yield chunk

    def close(self) -> None:
        """Close the app's body (its exceptions propagate, as the server
        expects), then end the request span whatever happened (most often
        it ended with the body: nothing left to do)."""
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                close()
        finally:
            span = self._span
            if span.duration_ns is None:  # _end's work, guarded, two frames fewer
                try:
                    if self._it is not None:
                        span.meta[CLIENT_DISCONNECTED] = "true"
                    span.finish()
                except Exception:
                    internal_error("flask.response.close")

    def __del__(self) -> None:
        span = self._span
        if span.duration_ns is None:
            guarded_call("flask.response.dropped", _end, span, self._it is not None)


# A plain body's wrapper in C, for a span in C: _ClosingBody's iteration,
# close() and drop for a plain body, without their Python frames.
_CClosingBody: Any = None if _cspan is None else _cspan.ClosingBody


class _BodyEnd:
    """The last iterable of a plain body's chain: asked for its iterator
    when the app's body is exhausted, it ends the request span there."""

    __slots__ = ("_span",)
    _span: Span

    def __iter__(self) -> Iterator[bytes]:
        span = self._span
        if span.duration_ns is None:
            try:
                span.finish()
            except Exception:
                internal_error("flask.response.end")
        return iter(())


class _ClosingFile:
    """A file object for ``wsgi.file_wrapper`` whose ``close()`` ends the span
    (``_ClosingBody``'s; the server never iterates it)."""

    def __init__(self, filelike: Any, span: Span) -> None:
        self._body = filelike
        self._span = span
        self._it = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)

    def read(self, *args: Any) -> Any:
        return self._body.read(*args)

    close = _ClosingBody.close
    __del__ = _ClosingBody.__del__
