"""A real local webhook receiver for the monitor tests: records each POSTed
JSON body; can answer errors first (``fail_first``) or stall (``delay``)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookSink:
    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.delay = delay
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with sink.cond:
                    sink.attempts += 1
                    failing = sink.attempts <= sink.fail_first
                time.sleep(sink.delay)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if not failing:
                    with sink.cond:
                        sink.bodies.append(json.loads(body))
                        sink.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first ``count`` bodies, waiting for them on a condition (never a bare sleep)."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.bodies) >= count, timeout):
                raise AssertionError(f"webhook got {len(self.bodies)} of {count} notifications: {self.bodies}")
            return self.bodies[:count]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
