"""Instructions per call of contrib/flask's per-call methods, C vs Python.

    python benchmarks/bench_flask_calls.py [--calls 10000]

With the C extension built, ``Flask.ensure_sync`` and
``RequestState.start_response`` are C method descriptors
(``_cspan.EnsureSync``, ``_cspan.StartResponse``, tracer/_cspan_flask.c)
made from the Python functions they fall back to. This calls each one in a
loop inside a request (``ensure_sync`` with the request's root span active
and the function already traced; ``start_response`` with a matched route,
a 200 and one header; the test server's own ``start_response`` is called by
it), under ``valgrind --tool=callgrind``: 1,000 calls, then 1,000 +
``--calls``, the difference divided by ``--calls``. "py" puts the Python
function back in place of the descriptor in the same process. The loop's
own cost is in both figures. Counts do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sink import Sink, callgrind_instructions  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(which: str, mode: str, calls: int, url: str) -> None:
    os.environ["TRACER_AGENT_URL"] = url
    import flask

    import tracer
    from contrib.flask import _request
    from tracer.context import get_active, set_active

    tracer.patch(flask=True)
    if mode == "py":
        if which == "start_response":
            setattr(_request.RequestState, "start_response", _request.RequestState.__dict__["start_response"].fallback)  # noqa: B010
        else:
            flask.Flask.ensure_sync = flask.Flask.__dict__["ensure_sync"].fallback  # type: ignore[method-assign]
    app = flask.Flask("calls_app")
    measure = [False]

    @app.before_request
    def before() -> None:
        pass

    @app.route("/")
    def index() -> str:
        if measure[0]:
            view_span = get_active()
            root = view_span._parent
            if which == "start_response":
                start_response = root._request.start_response
                for _ in range(calls):
                    start_response("200 OK", [("Content-Type", "text/plain")])
            else:
                set_active(root)  # as between user functions
                ensure_sync = app.ensure_sync
                for _ in range(calls):
                    ensure_sync(before)
                set_active(view_span)
        return "ok"

    client = app.test_client()
    for _ in range(20):
        client.get("/").close()
    measure[0] = True
    client.get("/").close()
    tracer.tracer.flush(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, mode, calls, url = args.child
        child(which, mode, int(calls), url)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("needs valgrind (apt-get install valgrind)")
        return 1
    sys.path.insert(0, REPO)
    from tracer.span import _cspan

    if _cspan is None:
        print("the C extension is not built (or TRACER_PURE_PYTHON is set): nothing to compare")
        return 1
    sink = Sink()
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONHASHSEED": "0"}
    try:
        for which in ("ensure_sync", "start_response"):
            per_call = {}
            for mode in ("c", "py"):
                try:
                    counts = [
                        callgrind_instructions(valgrind, [sys.executable, __file__, "--child", which, mode, str(calls),
                                                          sink.url], env, 1800)
                        for calls in (1000, 1000 + args.calls)
                    ]
                except RuntimeError as exc:
                    print(f"{which} {mode}: {exc}")
                    return 1
                per_call[mode] = (counts[1] - counts[0]) / args.calls
            print(f"{which:15s} C {per_call['c']:8,.0f}   Python {per_call['py']:8,.0f}   instructions per call",
                  flush=True)
    finally:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
