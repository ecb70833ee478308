"""``agent-sim metrics``: the metric list, or one metric's series as a table with sparklines.

    agent-sim metrics                              every metric: NAME TYPE TAG KEYS
    agent-sim metrics NAME [--tags k:v,...] [--by KEY] [--agg avg] [--since 3600] [--rollup 10] [--json]

Reads ``/api/metrics`` and ``/api/metrics/query`` (``dogstatsd_query``'s
contract); the formatting is pure (``format_metric_list``, ``format_series``,
``sparkline``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from agent_sim.cli import _can_encode, _print_json, api_get, format_table, shorten

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII = "_.-=+*#@"


def sparkline(values: list[float], width: int = 40, unicode: bool = True) -> str:
    """``values`` (resampled to at most ``width`` columns by averaging) as block characters."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [sum(chunk) / len(chunk) for chunk in
                  (values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)] for i in range(width))]
    chars = BLOCKS if unicode else ASCII
    lo, hi = min(values), max(values)
    if hi == lo:
        return chars[len(chars) // 2] * len(values)
    return "".join(chars[min(len(chars) - 1, int((v - lo) / (hi - lo) * len(chars)))] for v in values)


def _num(value: float) -> str:
    return f"{value:.4g}"


def format_metric_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no metrics yet (send DogStatsD to the receiver's UDP port, default 8125)"
    return format_table(("NAME", "TYPE", "TAG KEYS"), [(r["name"], r["type"], ",".join(r["tag_keys"])) for r in rows])


def format_series(name: str, series: list[dict[str, Any]], unicode: bool = True, width: int = 40) -> str:
    if not series:
        return f"no points for {name} in this window"
    rows = []
    for s in series:
        values = [p[1] for p in s["points"]]
        tags = ",".join(f"{k}:{v}" for k, v in s["tags"].items()) or "*"
        rows.append((shorten(tags, 40), _num(values[-1]), _num(min(values)), _num(sum(values) / len(values)),
                     _num(max(values)), sparkline(values, width, unicode)))
    return format_table(("SERIES", "LAST", "MIN", "AVG", "MAX", "TREND"), rows, right=(1, 2, 3, 4))


def cmd_metrics(args: argparse.Namespace) -> int:
    if not args.name:
        rows = api_get(args.url, "/api/metrics")
        if args.json:
            _print_json(rows)
        else:
            print(format_metric_list(rows))
        return 0
    now = time.time()
    result = api_get(args.url, "/api/metrics/query", {"name": args.name, "tags": args.tags, "by": args.by,
                                                      "agg": args.agg, "rollup": args.rollup,
                                                      "since": int(now - args.since), "until": int(now)})
    if args.json:
        _print_json(result)
    else:
        print(format_series(args.name, result["series"], unicode=_can_encode(BLOCKS)))
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("metrics", parents=[common], help="metrics (DogStatsD, checks, host, trace.*): list or chart")
    p.add_argument("name", nargs="?", help="a metric; without it, list them all")
    p.add_argument("--tags", help="only contexts with all these tags: k:v,k2:v2")
    p.add_argument("--by", help="one series per value of this tag key")
    p.add_argument("--agg", default="avg", help="avg, sum, min, max, p50, p75, p90, p95, p99 (default avg)")
    p.add_argument("--since", type=float, default=3600, metavar="SECONDS", help="how far back (default 3600)")
    p.add_argument("--rollup", type=int, default=10, metavar="SECONDS", help="point width, a multiple of 10")
    p.add_argument("--json", action="store_true", help="print the API answer")
    p.set_defaults(func=cmd_metrics)
