"""``/api/monitors``, ``/api/downtimes`` and ``/api/webhooks``: the HTTP side,
registered in ``agent_sim.server``'s route table (``ROUTES``, ``PREFIX_ROUTES``).

Handlers run on the server's handler threads; ``h.server.monitors`` is the
``MonitorService``. Bad input answers 400 ``{"error": "<field>: <problem>"}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent_sim.monitors.engine import Engine
from agent_sim.monitors.query import MonitorError


def _engine(h: Any) -> Engine:
    return h.server.monitors.engine


def _body(h: Any, required: bool = True) -> Any:
    """The JSON body; None after answering 4xx itself."""
    raw = h.read_body()
    if raw is None:
        return None
    if not raw.strip() and not required:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        h.send_json(400, {"error": f"body: not JSON: {exc}"})
        return None


def _id(h: Any, arg: str, what: str) -> int | None:
    try:
        return int(arg)
    except ValueError:
        h.send_json(404, {"error": f"no {what} {arg!r}"})
        return None


def list_monitors(h: Any, _arg: str) -> None:
    h.send_json(200, _engine(h).list_monitors())


def _create(h: Any, make: Callable[[Engine, Any], dict[str, Any]]) -> None:
    """POST: the body made into a monitor or downtime; 400 naming the bad field."""
    data = _body(h)
    if data is None:
        return
    try:
        created = make(_engine(h), data)
    except MonitorError as exc:
        h.send_json(400, {"error": str(exc)})
        return
    h.send_json(200, created)


def create_monitor(h: Any, _arg: str) -> None:
    _create(h, lambda engine, data: engine.put_monitor(data).to_json())


def _monitor(h: Any, arg: str) -> None:
    mid = _id(h, arg, "monitor")
    if mid is None:
        return
    engine = _engine(h)
    if h.command == "DELETE":
        h.send_json(200 if engine.delete_monitor(mid) else 404, {"deleted_monitor_id": mid})
        return
    if h.command == "PUT":
        data = _body(h)
        if data is None:
            return
        if mid not in engine.monitors:
            h.send_json(404, {"error": f"no monitor {mid}"})
            return
        try:
            engine.put_monitor(data, mid, origin=engine.origin.get(mid, "api"))  # a file's monitor stays the file's
        except MonitorError as exc:
            h.send_json(400, {"error": str(exc)})
            return
    detail = engine.monitor_detail(mid)
    h.send_json(200 if detail else 404, detail or {"error": f"no monitor {mid}"})


def evaluate(h: Any, _arg: str) -> None:
    """Evaluate every monitor now; ``{"now": unix_s}`` or ``{"offset": s}`` (body or query) moves the clock."""
    data = _body(h, required=False)
    if data is None:
        return
    engine = _engine(h)
    try:
        params = {**h.query, **(data if isinstance(data, dict) else {})}
        now = float(params["now"]) if "now" in params else engine.clock() + float(params.get("offset", 0))
    except (TypeError, ValueError):
        h.send_json(400, {"error": "now/offset: expected a number of seconds"})
        return
    h.send_json(200, engine.evaluate(now))


def list_events(h: Any, _arg: str) -> None:
    mid = h.query.get("monitor_id")
    h.send_json(200, _engine(h).list_events(int(mid) if mid and mid.isdigit() else None))


def list_downtimes(h: Any, _arg: str) -> None:
    h.send_json(200, _engine(h).list_downtimes())


def create_downtime(h: Any, _arg: str) -> None:
    _create(h, lambda engine, data: engine.put_downtime(data).to_json(engine.clock()))


def cancel_downtime(h: Any, arg: str) -> None:
    did = _id(h, arg, "downtime")
    if did is None:
        return
    if _engine(h).cancel_downtime(did):
        h.send_json(200, {"canceled_downtime_id": did})
    else:
        h.send_json(404, {"error": f"no active downtime {did}"})


def webhooks(h: Any, _arg: str) -> None:
    engine = _engine(h)
    if h.command == "POST":
        data = _body(h)
        if data is None:
            return
        name, url = (data.get("name"), data.get("url")) if isinstance(data, dict) else (None, None)
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url.startswith(("http://", "https://")):
            h.send_json(400, {"error": "expected {\"name\": \"ops\", \"url\": \"http://…\"} (url: http or https)"})
            return
        engine.set_webhook(name, url)
    with engine.lock:
        h.send_json(200, dict(engine.webhooks))


ROUTES = {
    ("GET", "/api/monitors"): list_monitors,
    ("POST", "/api/monitors"): create_monitor,
    ("POST", "/api/monitors/evaluate"): evaluate,
    ("GET", "/api/monitors/events"): list_events,
    ("GET", "/api/downtimes"): list_downtimes,
    ("POST", "/api/downtimes"): create_downtime,
    ("GET", "/api/webhooks"): webhooks,
    ("POST", "/api/webhooks"): webhooks,
}
PREFIX_ROUTES = [
    (("GET", "/api/monitors/"), _monitor),
    (("PUT", "/api/monitors/"), _monitor),
    (("DELETE", "/api/monitors/"), _monitor),
    (("DELETE", "/api/downtimes/"), cancel_downtime),
]
