"""A Flask app whose ``/checkout`` turns slow on demand (``/delay/<ms>``), for
the monitors end-to-end test; run under ``tracer-run``:
``python monitor_app.py PORT DELAY_MS``."""

from __future__ import annotations

import sys
import time

from flask import Flask

app = Flask(__name__)
DELAY = {"s": 0.0}


@app.route("/checkout")
def checkout() -> str:
    time.sleep(DELAY["s"])
    return "ok"


@app.route("/delay/<int:ms>")
def set_delay(ms: int) -> str:
    DELAY["s"] = ms / 1000
    return "ok"


if __name__ == "__main__":
    DELAY["s"] = float(sys.argv[2]) / 1000
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
