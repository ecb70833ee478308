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
