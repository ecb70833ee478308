"""``agent-sim demo``: the whole pipeline in one command.

    agent-sim demo [--port 8126] [--db agent_sim_demo.db] [--requests 500] [--no-serve]

Starts the receiver in this process (on ``--port``, or on a free port when
that one is taken, saying so), then the demo shop and its inventory service
(``agent_sim/demo_shop``, the same files as ``examples/shop``) as two
subprocesses under ``tracer-run``, each on a free port and sending to the
receiver. Drives a short mixed load at the shop with a progress bar, waits
until the receiver has counted every request, prints the stats table and the
web page's URL, then keeps everything serving in the foreground until Ctrl-C
(SIGINT) or SIGTERM, which stops every process it started. ``--no-serve``
stops right after printing (tests, scripts).

The shop ships inside the package (not only in a checkout's ``examples/``)
so the demo works from a regular ``pip install``. The child processes run in
their own session: a Ctrl-C in the terminal reaches only this process, which
then stops them in order (SIGINT, so their tracers flush at exit; SIGKILL
after a grace period).

Exit status: 0 when every request's trace arrived, 1 when the receiver did
not count them all in time or an app failed to start, 2 on missing extras
or a receiver that cannot listen at all.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

# (path, weight): every route of the shop, with the detail route spread over
# ids (one unknown: a 404 that is not an error).
LOAD_MIX: list[tuple[str, int]] = [
    ("/", 8),
    ("/products", 20),
    ("/products/{id}", 24),
    ("/products/999", 2),
    ("/checkout?product_id={id}", 12),
    ("/orders", 10),
    ("/slow", 4),
    ("/flaky", 20),
]
CONCURRENCY = 4
CHECKOUT_RESOURCE = "GET /checkout"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_plan(count: int, seed: int | None = None) -> list[str]:
    """``count`` request paths drawn from ``LOAD_MIX`` (pure; shuffled)."""
    rng = random.Random(seed)
    paths, weights = zip(*LOAD_MIX, strict=True)
    plan = rng.choices(paths, weights=weights, k=count)
    return [p.format(id=rng.randint(1, 12)) for p in plan]


def progress_bar(done: int, total: int, errors: int, elapsed: float, width: int = 30) -> str:
    """One line: ``[#####.....]  120/300 requests  3 server errors  2.1 s``."""
    filled = width if total <= 0 else int(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:>{len(str(total))}}/{total} requests  {errors} server errors  {elapsed:.1f} s"


class Demo:
    """The processes and servers one ``agent-sim demo`` run owns; ``stop()``
    ends all of them and is safe to call twice."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.server: Any = None
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.workdir = tempfile.mkdtemp(prefix="agent-sim-demo-")
        self.logs: dict[str, str] = {}

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- receiver ------------------------------------------------------------------
    def start_receiver(self, host: str, port: int, db: str) -> None:
        from agent_sim.server import ReceiverServer

        try:
            self.server = ReceiverServer(host, port, db, statsd_port=0, host_metrics=True)
        except OSError as exc:
            if port == 0:
                raise
            self.server = ReceiverServer(host, 0, db, statsd_port=0, host_metrics=True)
            self.say(f"port {port} is taken ({exc.strerror or exc}; another agent-sim?): "
                     f"using free port {self.server.port} instead")
        self.server.start()
        self.say(f"receiver:  {self.server.url}  (traces, stats and metrics kept in {db}; "
                 f"DogStatsD on udp://{host}:{self.server.statsd_port})")

    # -- apps ------------------------------------------------------------------------
    def child_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        # A source checkout run as `python -m agent_sim demo`: the children
        # must import the same packages (an install finds them anyway).
        if os.path.basename(PACKAGE_PARENT) not in ("site-packages", "dist-packages"):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        env.update(
            TRACER_AGENT_URL=self.server.url,
            TRACER_ENV="demo",
            TRACER_WRITER_INTERVAL="0.5",
            PYTHONUNBUFFERED="1",
            DD_AGENT_HOST="127.0.0.1",  # the shop's datadog client sends its metrics here
            DD_DOGSTATSD_PORT=str(self.server.statsd_port),
        )
        for name in ("DD_DOGSTATSD_URL", "DD_DOGSTATSD_SOCKET"):
            env.pop(name, None)
        for name in ("TRACER_SERVICE", "DD_SERVICE", "TRACER_ENABLED", "DD_TRACE_ENABLED", "TRACER_SAMPLE_RATE"):
            env.pop(name, None)  # each app names its own service; the demo traces everything
        env.update(extra)
        return env

    def start_app(self, name: str, module: str, port: int, extra_env: dict[str, str]) -> str:
        log_path = os.path.join(self.workdir, f"{name}.log")
        self.logs[name] = log_path
        command = [sys.executable, "-m", "tracer.run", sys.executable, "-m", module, "--port", str(port)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.child_env(extra_env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, name: str, url: str, timeout: float = 30.0) -> None:
        proc = dict(self.procs)[name]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer at {url} within {timeout:g} s:\n{self.log_tail(name)}")
            time.sleep(0.1)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            with open(self.logs[name], errors="replace") as f:
                return f.read()[-chars:]
        except (OSError, KeyError):
            return "(no output)"

    # -- receiver queries ----------------------------------------------------------
    def api(self, path: str, params: dict[str, Any] | None = None) -> Any:
        from agent_sim.cli import api_get

        return api_get(self.server.url, path, params)

    def request_hits(self, service: str, resource: str | None = None) -> int:
        """``flask.request`` hits of ``service`` (of one ``resource`` if given)
        over the whole history, less the readiness probes (``/healthz``),
        whose traces may still be in flight when the baseline is taken."""
        rows = self.api("/api/stats", {"service": service})
        return sum(
            int(r.get("hits") or 0)
            for r in rows
            if r.get("name") == "flask.request"
            and not str(r.get("resource", "")).endswith("/healthz")
            and (resource is None or r.get("resource") == resource)
        )

    def page_views(self) -> float:
        """``web.page_views`` the shop sent (with the datadog client) in the last hour."""
        series = self.api("/api/metrics/query", {"name": "web.page_views", "agg": "sum", "since": time.time() - 3600})
        return round(sum(p[1] for s in series["series"] for p in s["points"]) * 10, 3)

    def wait_counted(self, service: str, target: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            hits = self.request_hits(service)
            if hits >= target or time.monotonic() > deadline:
                return hits
            time.sleep(0.2)

    # -- load ------------------------------------------------------------------------
    def drive(self, shop_url: str, count: int, tty: bool) -> tuple[int, int]:
        """Send ``count`` requests (``CONCURRENCY`` at a time); returns
        (answered, 5xx answers). Progress on one rewritten line on a
        terminal, else a line per 25 %."""
        plan = load_plan(count)
        lock = threading.Lock()
        state = {"done": 0, "answered": 0, "errors": 0, "shown": -1}
        started = time.monotonic()

        def show(final: bool = False) -> None:
            done, total = state["done"], count
            line = progress_bar(done, total, state["errors"], time.monotonic() - started)
            if tty:
                self.out.write("\r" + line + ("\n" if final else ""))
                self.out.flush()
            else:
                quarter = done * 4 // max(total, 1)
                if quarter != state["shown"] or final:
                    state["shown"] = quarter
                    if not final or quarter != 4 or done == total:
                        self.say(line)

        def one(path: str) -> None:
            status = 0
            try:
                with urllib.request.urlopen(shop_url + path, timeout=10) as resp:
                    resp.read()
                    status = resp.status
            except urllib.error.HTTPError as exc:
                exc.read()
                exc.close()
                status = exc.code
            except OSError:
                status = 0
            with lock:
                state["done"] += 1
                if status:
                    state["answered"] += 1
                if status >= 500:
                    state["errors"] += 1
                show()

        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="demo-load") as pool:
            list(pool.map(one, plan))
        if tty:
            show(final=True)
        return state["answered"], state["errors"]

    def stop(self) -> None:
        for _name, proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGINT)  # like Ctrl-C: the tracer flushes at exit
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for _name, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = []
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-sim demo", description=__doc__.split("\n\n")[2])
    p.add_argument("--host", default="127.0.0.1", help="receiver bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8126, help="receiver port; a free one if taken (default 8126)")
    p.add_argument("--db", default="agent_sim_demo.db", help="receiver database file (default agent_sim_demo.db)")
    p.add_argument("--requests", type=int, default=500, help="requests sent to the shop (default 500)")
    p.add_argument("--no-serve", action="store_true", help="stop after printing the stats instead of serving")
    p.add_argument("--shop-database-url", default=os.environ.get("SHOP_DATABASE_URL"),
                   help="mysql://user:pass@host:port/db for the shop (default: sqlite3 in a temporary file)")
    return p


def _missing_extras() -> str | None:
    missing = []
    for module, extra in (("ddsketch", "agent"), ("flask", "demo")):
        try:
            __import__(module)
        except ImportError:
            missing.append(extra)
    if not missing:
        return None
    return f"pip install 'tracer-apm[{','.join(missing)}]'  (from a checkout: pip install '.[agent,demo]')"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``agent-sim demo`` (called by ``agent_sim.cli``). Blocks
    until Ctrl-C/SIGTERM unless ``--no-serve``; installs signal handlers, so
    call it from the main thread."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out = out or sys.stdout
    fix = _missing_extras()
    if fix:
        print(f"agent-sim demo needs more packages: {fix}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop_requested.set()

    demo = Demo(out)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            demo.start_receiver(args.host, args.port, args.db)
        except OSError as exc:
            print(f"agent-sim demo: cannot start the receiver: {exc}", file=sys.stderr)
            return 2
        inventory_url = demo.start_app("inventory", "agent_sim.demo_shop.inventory", _free_port(), {})
        shop_env = {"INVENTORY_URL": inventory_url, "SHOP_DB_PATH": os.path.join(demo.workdir, "shop.db")}
        if args.shop_database_url:
            shop_env["SHOP_DATABASE_URL"] = args.shop_database_url
        shop_url = demo.start_app("shop", "agent_sim.demo_shop.app", _free_port(), shop_env)
        try:
            demo.wait_ready("inventory", inventory_url)
            demo.wait_ready("shop", shop_url)
        except RuntimeError as exc:
            print(f"agent-sim demo: {exc}", file=sys.stderr)
            return 1
        demo.say(f"shop:      {shop_url}/  (Flask + {'MySQL' if args.shop_database_url else 'sqlite3'}, under tracer-run)")
        demo.say(f"inventory: {inventory_url}/stock/1  (called by the shop's /checkout)")
        baseline = demo.request_hits("shop")
        baseline_checkouts = demo.request_hits("shop", CHECKOUT_RESOURCE)
        baseline_inventory = demo.request_hits("inventory")
        demo.say(f"sending {args.requests} requests to the shop ...")
        answered, errors = demo.drive(shop_url, args.requests, tty=out.isatty())
        counted = demo.wait_counted("shop", baseline + answered, timeout=20)
        status = 0
        if counted < baseline + answered:
            demo.say(f"warning: the receiver counted {counted - baseline} of {answered} shop requests after 20 s")
            status = 1
        # Every checkout calls the inventory once; its traces come from another
        # process, whose writer may flush after the shop's.
        checkouts = demo.request_hits("shop", CHECKOUT_RESOURCE) - baseline_checkouts
        stocked = demo.wait_counted("inventory", baseline_inventory + checkouts, timeout=10) - baseline_inventory
        if stocked < checkouts:
            demo.say(f"warning: the receiver counted {stocked} of {checkouts} inventory requests after 10 s")
            status = 1
        demo.say("")
        from agent_sim.cli import format_stats

        demo.say(format_stats(demo.api("/api/stats")))
        demo.say("")
        from agent_sim.insights_cli import format_insights

        deadline = time.monotonic() + 5
        while demo.page_views() < answered and time.monotonic() < deadline:
            time.sleep(0.1)  # UDP: the last datagrams may still be in the socket buffer
        from agent_sim.metrics_cli import format_series

        demo.say(f"metrics (the shop's DogStatsD: {demo.page_views():g} web.page_views; "
                 "agent-sim metrics web.latency.95percentile --by route):")
        demo.say(format_series("web.latency.95percentile", demo.api(
            "/api/metrics/query", {"name": "web.latency.95percentile", "by": "route",
                                   "since": time.time() - 3600})["series"], unicode=False))
        demo.say("")
        demo.say("findings (agent-sim insights):")
        demo.say(format_insights(demo.api("/api/insights")[:5]))
        demo.say("")
        url = demo.server.url
        demo.say(f"web page:  {url}/   (services → resources → traces → waterfall)")
        demo.say(f"terminal:  agent-sim stats --url {url}   |   agent-sim traces --url {url} --errors")
        if args.no_serve or stop_requested.is_set():
            return status
        demo.say(f"serving the receiver, the shop ({shop_url}/) and the inventory; Ctrl-C stops them all")
        while not stop_requested.wait(0.5):
            for name, proc in demo.procs:
                if proc.poll() is not None:
                    demo.say(f"{name} exited with status {proc.returncode}; the receiver keeps serving")
                    demo.procs.remove((name, proc))
                    break
        demo.say("stopping ...")
        return status
    finally:
        demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    sys.exit(demo_main())


if __name__ == "__main__":
    main()
