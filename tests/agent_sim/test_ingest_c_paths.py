"""A receiver without the optional C extension (``agent_sim._cdecode``, every
Python fallback) stores exactly what one with it stores: the same chunk bytes,
index rows, stats rows, time breakdown, findings and counters for the same payloads, each run in its own
process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent_sim import store
from tests.utils import REPO

pytestmark = pytest.mark.skipif(store._fast_packb is None, reason="agent_sim._cdecode not built")

_SCRIPT = r"""
import hashlib, os, random, sys, tempfile, types
if sys.argv[1] == "pure":
    sys.modules["agent_sim._cdecode"] = None  # its import fails: every Python fallback runs
sys.path.insert(0, os.path.join(sys.argv[2], "benchmarks"))
import bench_ingest
from agent_sim import ingest, insights, normalize, stats, store
from agent_sim.decode import unpack_v04
from agent_sim.ingest import Receiver

bench_ingest.time = types.SimpleNamespace(time_ns=lambda: 1_764_900_000_000_000_000)  # same payloads in both runs
bodies = [bench_ingest.make_payload(random.Random(i)) for i in range(3)]
# a chunk the C paths leave to Python: an SQL span with sql.query in meta, a long resource, a bad status
odd = unpack_v04(bodies[0])[0]
odd = [dict(s, meta=dict(s["meta"])) for s in odd]
odd[0]["meta"]["sql.query"] = "SELECT 1 FROM t WHERE a = 'x'"
odd[1]["resource"] = "SELECT '" + "s" * 1300 + "'"
odd[-1]["meta"]["http.status_code"] = " 200"
with tempfile.TemporaryDirectory() as d:
    rx = Receiver(os.path.join(d, "x.db"))
    for b in bodies:
        rx.ingest(unpack_v04(b), False, True)
        rx.ingest(unpack_v04(b), False, False)  # again: top-level computed, duplicate span ids
    rx.ingest([odd], False, False)
    rx.flush()
    h = hashlib.sha256()
    for (blob,) in rx.store.execute("SELECT data FROM chunks ORDER BY id"):
        h.update(blob)
    for sql in ("SELECT tid, high, service, resource, name, start, duration, error, span_count, has_root,"
                " chunk_ids FROM traces ORDER BY seq", "SELECT * FROM stats ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
                "SELECT * FROM breakdown ORDER BY 1, 2, 3, 4, 5, 6", "SELECT * FROM findings ORDER BY 1"):
        h.update(repr(rx.store.execute(sql)).encode())
    h.update(repr(sorted(rx.counters().items())).encode())
    c_paths = (store._fast_packb, store._fast_rows, normalize._fast_normalize, stats._fast_groups, insights._fast_breakdown,
               insights._fast_detect_clear, ingest._fast_duplicates)
    print(sum(f is not None for f in c_paths), rx.store.execute("SELECT count(*) FROM traces")[0][0], h.hexdigest())
    rx.close()
"""


def _run(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode, REPO], capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=True)
    return out.stdout.split()


def test_pure_python_receiver_stores_the_same() -> None:
    c_run, pure_run = _run("c"), _run("pure")
    assert c_run[0] == "7" and pure_run[0] == "0"  # the C paths did run in one, not in the other
    assert c_run[1] == pure_run[1] == "300"  # the odd chunk joins a stored trace
    assert c_run[2] == pure_run[2]
