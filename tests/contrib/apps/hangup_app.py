"""A Flask app for the request-lifecycle tests: served by real servers under
``tracer-run`` and called by clients that hang up (``test_flask_hangups.py``).

Run as a script (``python hangup_app.py PORT threaded|single``) it is
Werkzeug's development server, as in a user's ``app.run()``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

from flask import Flask, Response

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False  # unhandled errors become a 500, as in production


@app.route("/ok")
def ok() -> str:
    return "ok"


@app.route("/boom")
def boom() -> str:
    raise ValueError("boom 42")


@app.route("/stream")
def stream() -> Response:
    def body() -> Iterator[str]:
        for i in range(20):
            yield f"chunk{i}\n" + "x" * 65536
            time.sleep(0.01)

    return Response(body(), mimetype="text/plain")


@app.route("/badstream")
def badstream() -> Response:
    def body() -> Iterator[str]:
        yield "first\n"
        raise RuntimeError("stream broke")

    return Response(body(), mimetype="text/plain")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=sys.argv[2] == "threaded")
