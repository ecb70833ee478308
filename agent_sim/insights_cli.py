"""``agent-sim insights`` and the findings table the demo prints."""

from __future__ import annotations

import argparse
from typing import Any

from agent_sim.cli import api_get, fmt_duration, format_table, shorten


def format_insights(rows: list[dict[str, Any]], width: int = 60) -> str:
    """An aligned table, worst first (the API's order)."""
    if not rows:
        return "no findings"
    table = [(r["kind"], r["service"], shorten(r["resource"], 30), r["count"], fmt_duration(r["total_duration_ns"]),
              shorten(r["title"], width), r["example_trace_ids"][0] if r["example_trace_ids"] else "")
             for r in rows]
    return format_table(("KIND", "SERVICE", "ENDPOINT", "COUNT", "TOTAL", "FINDING", "EXAMPLE TRACE"), table,
                        right=(3, 4))


def cmd_insights(args: argparse.Namespace) -> int:
    rows = api_get(args.url, "/api/insights", {"service": args.service, "kind": args.kind})
    if args.json:
        from agent_sim.cli import _print_json

        _print_json(rows)
    else:
        print(format_insights(rows))
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("insights", parents=[common], help="N+1 queries/calls, slow queries, error groups")
    p.add_argument("--service")
    p.add_argument("--kind", help="n_plus_one_db, n_plus_one_http, slow_query or error_group")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_insights)
