"""``agent-sim serve``: its flags, start-up order (signal handlers, then every
socket, DogStatsD before HTTP) and shutdown. The receiver itself is
``agent_sim.server.ReceiverServer``."""

from __future__ import annotations

import argparse
import errno
import gc
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from agent_sim.checks import DEFAULT_INTERVAL_S
from agent_sim.insights import add_insight_flags, insight_limits
from agent_sim.server import ReceiverServer, StatsdAddressError

__all__ = ["build_parser", "serve_main"]

# A 1,000-span payload decodes to ~1,100 GC-tracked containers, all freed by
# reference counting once stored; see serve_main.
GC_THRESHOLD = 20_000


def _parse_rates(values: list[str]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for value in values:
        service, _, rate = value.rpartition("=")
        try:
            r = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--sample-rate {value!r}: expected RATE or service=RATE")
        if not 0.0 <= r <= 1.0:
            raise argparse.ArgumentTypeError(f"--sample-rate {value!r}: rate must be within 0..1")
        rates[service] = r
    return rates


def _udp_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0..65535; 0 disables DogStatsD)")
    return port


def _positive(what: str, cast: Callable[[str], float] = float) -> Callable[[str], float]:
    """An argparse type: a finite number > 0 (``what`` names it in the error)."""
    def parse(value: str) -> float:
        try:
            number = cast(value)
        except ValueError:
            number = -1
        if not 0 < number < math.inf:
            raise argparse.ArgumentTypeError(f"{value!r} is not a positive {what}")
        return number
    return parse


_seconds = _positive("number of seconds")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``serve``'s flags to ``parser`` (the CLI reuses this)."""
    p = parser or argparse.ArgumentParser(prog="agent-sim serve", description="Run the local trace receiver.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8126)
    p.add_argument("--statsd-port", type=_udp_port, default=os.environ.get("AGENT_SIM_STATSD_PORT", "8125"),
                   help="DogStatsD UDP port (default 8125, env AGENT_SIM_STATSD_PORT; 0 disables)")
    p.add_argument("--statsd-socket", metavar="PATH", help="also receive DogStatsD on this Unix datagram socket")
    p.add_argument("--checks", metavar="DIR", help="run the custom checks DIR/*.py (AgentCheck subclasses)")
    p.add_argument("--check-interval", type=_seconds, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                   help=f"how often checks and host metrics run (default {DEFAULT_INTERVAL_S:g})")
    p.add_argument("--no-host-metrics", dest="host_metrics", action="store_false",
                   help="do not report system.cpu/load/mem/disk/net metrics from /proc")
    p.add_argument("--db", default="./agent_sim.db", help="SQLite file, or :memory:")
    p.add_argument("--monitors", metavar="FILE", help="monitors, downtimes and webhooks (Datadog JSON; YAML with "
                   "PyYAML), reloaded on change; see docs/monitors.md")
    p.add_argument("--retention-traces", type=_positive("whole number of traces", int), default=100_000)
    p.add_argument("--retention-hours", type=_positive("number of hours"), default=24)
    p.add_argument("--sample-rate", action="append", default=[], metavar="RATE|SERVICE=RATE",
                   help="rate_by_service answered to tracers (repeatable; default 1.0)")
    add_insight_flags(p)
    return p


def serve_main(argv: list[str]) -> int:
    """``agent-sim serve``: block until SIGINT/SIGTERM, then shut down cleanly. Returns the exit code."""
    try:
        import ddsketch  # noqa: F401
    except ImportError:
        print("agent-sim needs its extra: pip install 'tracer-apm[agent]'", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    explicit = build_parser()
    explicit.set_defaults(statsd_port=None)  # tells "--statsd-port given" from its default
    args.statsd_port_given = explicit.parse_args(argv).statsd_port is not None
    if args.checks and not os.path.isdir(args.checks):
        print(f"agent-sim: --checks {args.checks}: not a directory", file=sys.stderr)
        return 2
    try:
        rates = _parse_rates(args.sample_rate)
    except argparse.ArgumentTypeError as exc:
        print(f"agent-sim: {exc}", file=sys.stderr)
        return 2
    # A 1,000-span payload decodes to ~1,100 GC-tracked containers, all freed
    # by reference counting once it is stored. At the default threshold (700
    # allocations) the cyclic collector ran after nearly every payload and
    # walked the live one: ~5 % of ingest. This process is ours, so collect
    # less often, and leave the startup objects (modules, ...) out of it.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)

    def make(statsd_port: int | None, statsd_socket: str | None) -> ReceiverServer:
        return ReceiverServer(args.host, args.port, args.db, args.retention_traces, args.retention_hours, rates,
                              insight_limits(args), statsd_port, statsd_socket, args.checks, args.check_interval,
                              args.host_metrics, args.monitors)

    # Handlers before any port opens: a SIGTERM sent as soon as the HTTP port answers
    # (a test harness, a supervisor) must shut down cleanly, not kill mid-start-up.
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(make, args, done)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(make: Callable[[int | None, str | None], ReceiverServer], args: argparse.Namespace,
           done: threading.Event) -> int:
    """``serve_main`` once its signal handlers are in: bind every socket (DogStatsD first,
    HTTP last), serve until ``done``. A DogStatsD address given on the command line
    that cannot be bound is an error (exit 2, the HTTP port never opened); the default
    UDP port (8125 or AGENT_SIM_STATSD_PORT) taken, say by a real Agent, only turns the
    UDP intake off, loudly: traces are the receiver's main job."""
    try:
        try:
            server = make(args.statsd_port or None, args.statsd_socket)
        except StatsdAddressError as statsd_exc:
            where, why = statsd_exc.filename, statsd_exc.strerror or statsd_exc
            if where == args.statsd_socket or args.statsd_port_given:
                print(f"agent-sim: cannot listen for DogStatsD on {where}: {why} (pick another with "
                      "--statsd-port N / --statsd-socket PATH, or --statsd-port 0 for none)", file=sys.stderr)
                return 2
            server = make(None, args.statsd_socket)
            print(f"agent-sim: DogStatsD {'UDP ' if args.statsd_socket else ''}intake off, cannot listen on {where}: "
                  f"{why} (pick another with --statsd-port N; --statsd-port 0 silences this)",
                  file=sys.stderr, flush=True)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (is another agent-sim already running there? pick a free port with --port N)"
        print(f"agent-sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    try:
        if not done.is_set():  # a signal during start-up: stop without serving
            server.start()
            statsd = f", DogStatsD udp://{args.host}:{server.statsd_port}" if server.statsd_port else ""
            statsd += f", DogStatsD unix://{args.statsd_socket}" if args.statsd_socket else ""
            print(f"agent-sim listening on {server.url}{statsd} (db {args.db})", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    print("agent-sim stopped", flush=True)
    return 0
