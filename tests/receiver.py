"""A real agent_sim receiver for tests: ``RunningReceiver`` starts
``agent_sim.server.ReceiverServer`` in a thread on a free 127.0.0.1 port with
an in-memory store, and wraps its JSON API.

CONTRACT (implemented by the agent_sim work; integration tests rely on it):
    with RunningReceiver(**server_kwargs) as r:
        r.url                               # "http://127.0.0.1:<port>"
        r.traces(**filters) -> list[dict]   # GET /api/traces (service=, resource=, error=, limit=)
        r.wait_traces(n, timeout=10, **filters) -> list[dict]   # blocks until >= n match, else AssertionError
        r.trace(trace_id) -> dict           # GET /api/traces/<id>: {"trace_id", "spans": [...]}
        r.spans(trace_id) -> list[dict]     # r.trace(trace_id)["spans"]
        r.stats(**filters) -> list[dict]    # GET /api/stats
        r.info() -> dict                    # GET /info
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class RunningReceiver:
    """Context manager; ``server_kwargs`` go to ``ReceiverServer`` (db, sample_rates, ...)."""

    def __init__(self, **server_kwargs: Any) -> None:
        from agent_sim.server import ReceiverServer

        server_kwargs.setdefault("host", "127.0.0.1")
        server_kwargs.setdefault("port", 0)
        server_kwargs.setdefault("db", ":memory:")
        self.server = ReceiverServer(**server_kwargs)
        self.url = self.server.url
        self.port = self.server.port

    def __enter__(self) -> RunningReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()

    @property
    def receiver(self) -> Any:
        return self.server.receiver

    def get(self, path: str, _http_timeout: float = 30, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (None dropped); parsed JSON. Raises on non-2xx."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = self.url + path + ("?" + query if query else "")
        with urllib.request.urlopen(url, timeout=_http_timeout) as resp:
            return json.loads(resp.read())

    def traces(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/api/traces", **filters)

    def wait_traces(self, n: int, timeout: float = 10, **filters: Any) -> list[dict[str, Any]]:
        rows = self.get("/api/traces", _http_timeout=timeout + 10, wait=n, timeout=timeout, **filters)
        if len(rows) < n:
            raise AssertionError(f"expected >= {n} traces matching {filters or 'anything'} within {timeout}s, "
                                 f"got {len(rows)}: {[(r['service'], r['resource']) for r in rows]}")
        return rows

    def trace(self, trace_id: str | int) -> dict[str, Any]:
        return self.get(f"/api/traces/{trace_id}")

    def spans(self, trace_id: str | int) -> list[dict[str, Any]]:
        return self.trace(trace_id)["spans"]

    def stats(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/api/stats", **filters)

    def services(self) -> list[dict[str, Any]]:
        return self.get("/api/services")

    def info(self) -> dict[str, Any]:
        return self.get("/info")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            return resp.read().decode()
