"""The inventory service the shop's ``/checkout`` calls over HTTP.

    python inventory.py [--port 5001]          (or: tracer-run python inventory.py)

``GET /stock/<int:product_id>`` answers ``{"product_id": N, "in_stock": bool,
"quantity": N}``; every seventh product is out of stock. No database: the
point is the distributed trace (shop → requests → inventory) in the receiver.
No tracer imports: run it under ``tracer-run``.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from flask import Flask, jsonify

# An explicit import name makes the service name "inventory" however the file
# is loaded (script, ``-m``, gunicorn).
app = Flask("inventory", root_path=os.path.dirname(os.path.abspath(__file__)))


@app.get("/stock/<int:product_id>")
def stock(product_id: int):  # type: ignore[no-untyped-def]
    time.sleep(random.uniform(0.002, 0.01))  # a warehouse lookup
    quantity = 0 if product_id % 7 == 0 else 3 + product_id % 11
    return jsonify(product_id=product_id, in_stock=quantity > 0, quantity=quantity)


@app.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return "ok"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the demo shop's inventory service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5001")))
    args = parser.parse_args(argv)
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
