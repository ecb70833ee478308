"""``agent-sim``: run the receiver, or inspect a running one from a terminal.

Subcommands: ``serve`` (the default; handed to ``agent_sim.serve.serve_main``),
``stats``, ``traces``, ``show <trace-id>``, ``wait --count N`` and ``demo``
(handed to ``agent_sim.demo.demo_main`` when that module exists).

The inspection commands talk to the receiver's JSON API (DESIGN.md,
"Receiver") with ``urllib`` from the standard library: a CLI that imported
``requests`` would itself be traced when a user runs it under ``tracer-run``,
and light imports keep ``agent-sim stats`` instant. Everything that turns API
rows into text is a pure function (``format_*``, ``render_waterfall``) so it
is testable without a server.

Exit codes: 0 success, 1 a failed check (``wait`` timed out, unknown trace),
2 receiver unreachable or bad usage (one line on stderr naming the URL and
the fix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8126"
COMMANDS = ("serve", "stats", "traces", "show", "wait", "demo", "insights", "metrics", "monitors")


class Unreachable(Exception):
    """The receiver did not answer (refused, timed out, not HTTP)."""


class HTTPFailure(Exception):
    """A non-2xx reply; the message carries the API's ``{"error": reason}``."""

    def __init__(self, status: int, body: str) -> None:
        try:
            reason = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            reason = body[:200]
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.body = body


# -- pure formatting ----------------------------------------------------------


def fmt_ms(ns: Any) -> str:
    """Nanoseconds as milliseconds with 2 decimals (``-`` when absent)."""
    if ns is None:
        return "-"
    return f"{ns / 1e6:.2f}"


def _sig3(x: float) -> str:
    return f"{x:.0f}" if x >= 99.95 else f"{x:#.3g}".rstrip(".")


def fmt_duration(ns: Any) -> str:
    """A human duration with 3 significant digits, as the web page shows it:
    ``850 ns``, ``1.50 µs``, ``12.3 ms``, ``2.00 s``."""
    if ns is None:
        return "-"
    ns = float(ns)
    if abs(ns) < 999.5:
        return f"{ns:.0f} ns"
    for unit, scale in (("µs", 1e3), ("ms", 1e6)):
        text = _sig3(ns / scale)
        if float(text) < 1000:
            return f"{text} {unit}"
    return f"{_sig3(ns / 1e9)} s"


def shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())  # SQL resources may span lines
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Columns aligned to their widest cell; columns in ``right`` right-aligned."""
    right_cols = set(right)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right_cols else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_stats(rows: list[dict[str, Any]], width: int = 70) -> str:
    """``/api/stats`` rows as a table, busiest first within each service."""
    if not rows:
        return "no stats yet"
    ordered = sorted(rows, key=lambda r: (r.get("service", ""), -int(r.get("hits") or 0), r.get("resource", "")))
    return format_table(
        ["SERVICE", "NAME", "RESOURCE", "HITS", "ERRORS", "P50 ms", "P95 ms", "P99 ms"],
        (
            [
                r.get("service", ""),
                r.get("name", ""),
                shorten(r.get("resource", ""), width),
                r.get("hits", 0),
                r.get("errors", 0),
                fmt_ms(r.get("p50_ns")),
                fmt_ms(r.get("p95_ns")),
                fmt_ms(r.get("p99_ns")),
            ]
            for r in ordered
        ),
        right=(3, 4, 5, 6, 7),
    )


def _clock(ns: int) -> str:
    seconds = ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(ns // 1_000_000 % 1000):03d}"


def format_traces(rows: list[dict[str, Any]], width: int = 60) -> str:
    """``/api/traces`` rows (newest first) as a table."""
    if not rows:
        return "no traces"
    return format_table(
        ["TRACE ID", "START", "SERVICE", "RESOURCE", "DURATION", "SPANS", "ERROR"],
        (
            [
                r.get("trace_id", ""),
                _clock(int(r.get("start_ns") or 0)),
                r.get("service", ""),
                shorten(r.get("resource", ""), width),
                fmt_duration(r.get("duration_ns")),
                r.get("span_count", ""),
                "error" if r.get("error") else "",
            ]
            for r in rows
        ),
        right=(4, 5),
    )


def span_tree(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first ``(depth, span)`` pairs, children by start time.

    Spans whose parent is missing (a chunk not received yet) are shown as
    extra roots rather than dropped. Iterative, so a 10,000-deep chain does
    not hit the recursion limit."""
    ids = {s.get("span_id") for s in spans}
    children: dict[Any, list[dict[str, Any]]] = {}
    roots = []
    for s in spans:
        parent = s.get("parent_id")
        if parent is None or parent not in ids or parent == s.get("span_id"):
            roots.append(s)
        else:
            children.setdefault(parent, []).append(s)

    def key(s: dict[str, Any]) -> tuple:
        return (s.get("start_ns") or 0, s.get("span_id") or "")

    out: list[tuple[int, dict[str, Any]]] = []
    seen: set[Any] = set()
    stack = [(0, s) for s in sorted(roots, key=key, reverse=True)]
    while stack:
        depth, s = stack.pop()
        sid = s.get("span_id")
        if sid in seen:  # duplicate span ids are possible on the wire
            continue
        seen.add(sid)
        out.append((depth, s))
        for child in sorted(children.get(sid, ()), key=key, reverse=True):
            stack.append((depth + 1, child))
    return out


def _bar(start: int, duration: int, t0: int, total: int, width: int, full: str, empty: str) -> str:
    if total <= 0:
        return full * width
    left = int((start - t0) * width / total)
    left = min(max(left, 0), width - 1)
    length = max(1, round(duration * width / total))
    length = min(length, width - left)
    return empty * left + full * length + empty * (width - left - length)


def render_waterfall(spans: list[dict[str, Any]], width: int = 30, unicode: bool = True, resource_width: int = 60) -> str:
    """The trace as an indented tree beside a time bar scaled to the trace.

    One line per span: duration, ``|bar|`` (offset and length proportional
    to the span's start and duration within the whole trace), then the span
    indented under its parent with service, resource and an error mark."""
    if not spans:
        return "(no spans)"
    t0 = min(int(s.get("start_ns") or 0) for s in spans)
    t1 = max(int(s.get("start_ns") or 0) + int(s.get("duration_ns") or 0) for s in spans)
    total = t1 - t0
    full, empty = ("█", "·") if unicode else ("#", ".")
    rows = span_tree(spans)
    durations = [fmt_duration(s.get("duration_ns")) for _, s in rows]
    dw = max(len(d) for d in durations)
    lines = []
    for (depth, s), dur in zip(rows, durations, strict=True):
        bar = _bar(int(s.get("start_ns") or 0), int(s.get("duration_ns") or 0), t0, total, width, full, empty)
        label = f"{s.get('name', '')} {s.get('service') or '-'} {shorten(s.get('resource', ''), resource_width)!r}"
        if s.get("error"):
            label += " [error]"
        lines.append(f"{dur.rjust(dw)} |{bar}| {'  ' * depth}{label}")
    return "\n".join(lines)


def format_trace_header(trace: dict[str, Any]) -> str:
    spans = trace.get("spans") or []
    rows = span_tree(spans)
    root = rows[0][1] if rows else {}
    errors = sum(1 for s in spans if s.get("error"))
    t0 = min((int(s.get("start_ns") or 0) for s in spans), default=0)
    t1 = max((int(s.get("start_ns") or 0) + int(s.get("duration_ns") or 0) for s in spans), default=0)
    return (
        f"trace {trace.get('trace_id', '')}  {root.get('service', '')} {root.get('resource', '')!r}  "
        f"{fmt_duration(t1 - t0)}  {len(spans)} spans  {errors} errors"
    )


# -- HTTP ----------------------------------------------------------------------


def _opener(url: str) -> urllib.request.OpenerDirector:
    # A developer's HTTP(S)_PROXY must not capture requests to the local
    # receiver (urllib only bypasses hosts listed in NO_PROXY).
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def api_get(base_url: str, path: str, params: dict[str, Any] | None = None, timeout: float = 10.0,
            data: bytes | None = None) -> Any:
    """GET (POST with ``data``) ``base_url + path`` and decode JSON. Raises ``Unreachable`` when
    no receiver answers, ``HTTPFailure`` on a non-2xx reply."""
    query = {k: v for k, v in (params or {}).items() if v is not None}
    url = base_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        with _opener(url).open(url, data, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise HTTPFailure(e.code, e.read().decode("utf-8", "replace")) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        # ValueError: a malformed --url, or a non-JSON answer (not a receiver)
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror.lower()  # "connection refused", not "[Errno 111] Connection refused"
        raise Unreachable(str(reason)) from None


# -- commands ------------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_stats(args: argparse.Namespace) -> int:
    rows = api_get(args.url, "/api/stats", {"service": args.service})
    if args.json:
        _print_json(rows)
    else:
        print(format_stats(rows))
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    params = {
        "service": args.service,
        "resource": args.resource,
        "error": 1 if args.errors else None,
        "min_duration_ns": int(args.min_ms * 1e6) if args.min_ms is not None else None,
        "limit": args.limit,
    }
    rows = api_get(args.url, "/api/traces", params)
    if args.json:
        _print_json(rows)
    else:
        print(format_traces(rows))
    return 0


def _can_encode(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def cmd_show(args: argparse.Namespace) -> int:
    try:
        trace = api_get(args.url, "/api/traces/" + urllib.parse.quote(args.trace_id, safe=""))
    except HTTPFailure as e:
        if e.status == 404:
            print(f"agent-sim: no trace {args.trace_id} at {args.url}", file=sys.stderr)
            return 1
        raise
    if args.json:
        _print_json(trace)
        return 0
    print(format_trace_header(trace))
    print(render_waterfall(trace.get("spans") or [], width=args.width, unicode=_can_encode("█·µ…")))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Poll with the API's server-side wait in slices, so a receiver that caps
    ``timeout`` (or restarts) does not cut the wait short."""
    deadline = time.monotonic() + args.timeout
    found = 0
    while True:
        remaining = deadline - time.monotonic()
        slice_s = max(0.0, min(remaining, 5.0))
        params = {"service": args.service, "limit": args.count, "wait": args.count, "timeout": f"{slice_s:.3f}"}
        rows = api_get(args.url, "/api/traces", params, timeout=slice_s + 10)
        found = len(rows)
        if found >= args.count:
            print(f"{found} traces")
            return 0
        if time.monotonic() >= deadline:
            print(f"agent-sim: timed out after {args.timeout:g}s with {found} of {args.count} traces", file=sys.stderr)
            return 1
        if slice_s == 0:
            time.sleep(0.05)


def cmd_serve(argv: list[str]) -> int:
    from agent_sim.serve import serve_main

    return int(serve_main(argv) or 0)


def cmd_demo(argv: list[str]) -> int:
    try:
        from agent_sim.demo import demo_main  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("agent-sim demo: not yet available", file=sys.stderr)
        return 2
    return int(demo_main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    env_url = os.environ.get("AGENT_SIM_URL") or DEFAULT_URL
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=env_url, help=f"receiver address (default {env_url}; env AGENT_SIM_URL)")

    parser = argparse.ArgumentParser(
        prog="agent-sim",
        description="Local Datadog-compatible trace receiver. Without a subcommand: serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the receiver (see agent-sim serve --help)", add_help=False)
    sub.add_parser("demo", help="run a demo app sending traces", add_help=False)

    p = sub.add_parser("stats", parents=[common], help="hits, errors and latency per service/resource")
    p.add_argument("--service")
    p.add_argument("--json", action="store_true", help="print the raw API rows")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("traces", parents=[common], help="recent traces, newest first")
    p.add_argument("--service")
    p.add_argument("--resource")
    p.add_argument("--errors", action="store_true", help="only traces with an error span")
    p.add_argument("--min-ms", type=float, help="only traces at least this long")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_traces)

    p = sub.add_parser("show", parents=[common], help="one trace as a span tree waterfall")
    p.add_argument("trace_id", help="32 hex chars, the 16-hex low half, or decimal")
    p.add_argument("--width", type=int, default=30, help="bar column width")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("wait", parents=[common], help="block until N traces arrived (exit 1 on timeout)")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--service")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_wait)

    from agent_sim.insights_cli import add_parser
    from agent_sim.metrics_cli import add_parser as add_metrics_parser
    from agent_sim.monitors.cli import add_parser as add_monitors_parser

    add_parser(sub, common)
    add_metrics_parser(sub, common)
    add_monitors_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent-sim`` console script and ``python -m agent_sim``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Bare `agent-sim` or `agent-sim --port 9000` means serve, as DESIGN says.
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        return cmd_serve(args_list)
    if args_list[0] == "serve":
        return cmd_serve(args_list[1:])
    if args_list[0] == "demo":
        return cmd_demo(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        return int(args.func(args))
    except Unreachable as e:
        print(f"agent-sim: no receiver at {args.url} ({e}); start one with `agent-sim serve` or pass --url", file=sys.stderr)
        return 2
    except HTTPFailure as e:
        print(f"agent-sim: {args.url} answered {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
