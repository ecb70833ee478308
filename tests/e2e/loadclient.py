"""A load client for the end-to-end tests, run as its own process (never
under ``tracer-run``: the client is not the system under test).

    python tests/e2e/loadclient.py --url http://127.0.0.1:P --run NAME --count N
        [--concurrency C] [--paths /a,/b?x=1] [--out FILE] [--duration S]

Sends ``count`` requests (or keeps going for ``duration`` seconds), cycling
through ``paths``, ``concurrency`` at a time; each request carries a unique
``rid=<run>-<n>`` query parameter so the test can find its trace in the
receiver. One JSON line per request is appended to ``--out`` as it completes
(``rid``, ``path``, ``status`` (0: no answer), ``t`` (epoch seconds at send),
``ms``), so a test can watch progress while the load runs.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import sys
import threading
import time
import urllib.parse

DEFAULT_PATHS = "/products,/products/3,/orders,/,/checkout?product_id=5,/products/11,/products/999,/checkout?product_id=2"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--duration", type=float, default=0.0, help="run for S seconds instead of --count requests")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--paths", default=DEFAULT_PATHS)
    p.add_argument("--out", default="-")
    args = p.parse_args(argv)
    target = urllib.parse.urlsplit(args.url)
    paths = args.paths.split(",")
    counter = itertools.count()
    lock = threading.Lock()
    out = sys.stdout if args.out == "-" else open(args.out, "a", buffering=1)  # noqa: SIM115
    deadline = time.monotonic() + args.duration if args.duration else None

    def worker() -> None:
        while True:
            n = next(counter)
            if deadline is None and n >= args.count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            path = paths[n % len(paths)]
            rid = f"{args.run}-{n}"
            full = path + ("&" if "?" in path else "?") + "rid=" + rid
            started, t0 = time.time(), time.perf_counter()
            status = 0
            # One attempt, a fresh connection each time (gunicorn's sync
            # workers close it anyway): a retry could send a request twice.
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                conn.request("GET", full)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = 0
            finally:
                conn.close()
            ms = (time.perf_counter() - t0) * 1000
            line = json.dumps({"rid": rid, "path": path, "status": status, "t": started, "ms": round(ms, 3)})
            with lock:
                out.write(line + "\n")

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if out is not sys.stdout:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
