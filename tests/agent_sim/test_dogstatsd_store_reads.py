"""``MetricStore.rows`` reads a window's rows only: its SQLite work does not grow with the
history kept (a monitors cycle reads the last seconds of every metric, with a day stored)."""

from __future__ import annotations

from typing import Any

from agent_sim.dogstatsd_store import MetricStore
from agent_sim.store import Store

T0 = 1_700_000_000 // 3600 * 3600


def vm_steps(store: Store, ms: MetricStore, since: float, until: float) -> int:
    """SQLite virtual machine steps (in thousands) that ``ms.rows("web.temp", since, until)`` costs."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.db.set_progress_handler(count, 1000)
    try:
        ms.rows("web.temp", since, until)
    finally:
        store.db.set_progress_handler(None, 0)
    return steps[0]


def test_a_window_costs_its_own_rows_not_the_history(tmp_path: Any) -> None:
    costs = {}
    for hours in (1, 8):
        store = Store(str(tmp_path / f"{hours}.db"))
        try:
            ms = MetricStore(store)
            end = T0 + hours * 3600
            ms.write([("web.temp", (f"host:h{h}",), "g", 10, start, [1.0, 1.0, 1])
                      for h in range(20) for start in range(T0, end, 10)])
            ms.write([("web.temp", ("host:h0",), "g", 3600, T0 - 3600, [2.0, 2.0, 1])])  # an hour rolled up before
            got = ms.rows("web.temp", end - 60, end)
            assert sorted((tags, width, bucket) for tags, _kind, width, bucket, _state in got) == sorted(
                ((f"host:h{h}",), 10, start) for h in range(20) for start in range(end - 60, end, 10))
            edge = ms.rows("web.temp", T0 - 1, T0 + 5)  # the 1 h row ends at T0 - 1: in
            assert sorted((width, bucket) for tags, _k, width, bucket, _s in edge if tags == ("host:h0",)) == [
                (10, T0), (3600, T0 - 3600)]
            assert [(w, b) for _t, _k, w, b, _s in ms.rows("web.temp", T0, T0 + 5) if w == 3600] == []
            costs[hours] = vm_steps(store, ms, end - 60, end)
        finally:
            store.close()
    assert costs[8] < 2 * costs[1], costs  # 8x the history, about the same cost
