"""``agent-sim monitors [list|eval] [--json]``: each monitor's state and its groups' states."""

from __future__ import annotations

import argparse
from typing import Any

from agent_sim.cli import _print_json, api_get, format_table, shorten


def format_monitors(rows: list[dict[str, Any]], width: int = 60) -> str:
    if not rows:
        return "no monitors (agent-sim serve --monitors FILE, or POST /api/monitors)"
    table = []
    for r in rows:
        groups = ", ".join(f"{g}={s}" for g, s in sorted(r["groups"].items()) if s != "OK") or "-"
        table.append((r["id"], r["overall_state"], shorten(r["name"], 30), shorten(r["query"], width),
                      shorten(("error: " + r["error"]) if r.get("error") else groups, width)))
    return format_table(("ID", "STATE", "NAME", "QUERY", "GROUPS NOT OK"), table, right=(0,))


def cmd_monitors(args: argparse.Namespace) -> int:
    if args.action == "eval":
        rows = api_get(args.url, "/api/monitors/evaluate", data=b"{}")
    else:
        rows = api_get(args.url, "/api/monitors")
    if args.json:
        _print_json(rows)
    else:
        print(format_monitors(rows))
    return 1 if any(r.get("error") for r in rows) else 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("monitors", parents=[common], help="monitor states (list), or evaluate them now (eval)")
    p.add_argument("action", nargs="?", choices=("list", "eval"), default="list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_monitors)
