"""A sustained 60-second load at the highest rate this machine allows (four
client threads against ``tracer-run gunicorn -w 2 --preload``): the RSS of the
app's processes and of the receiver must grow by less than 1 MiB per minute
after a 15-second warm-up (least-squares slope over 1-second samples).

Slow (≈ 80 s): runs only with ``RUN_SOAK=1``. Prints the slopes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Load, Receiver, Shop, running_stack

DURATION_S = 60.0
WARMUP_S = 15.0
LIMIT_MIB_PER_MIN = 1.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.environ.get("RUN_SOAK") != "1", reason="60-second soak: set RUN_SOAK=1"),
]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    num = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    den = sum((t - mean_t) ** 2 for t, _ in samples)
    return num / den * 60


@pytest.fixture
def soak_stack(tmp_path: os.PathLike, request: pytest.FixtureRequest) -> Iterator[tuple[Receiver, Shop, str]]:
    info = request.getfixturevalue("mariadb")
    db_env = {"SHOP_DATABASE_URL": f"mysql://{info.user}:{info.password}@{info.host}:{info.port}/{info.db}"}
    with running_stack(str(tmp_path), db_env) as running:
        yield running


def test_rss_is_flat_under_sustained_load(soak_stack: tuple[Receiver, Shop, str]) -> None:
    receiver, shop, logdir = soak_stack
    pids = {"receiver": receiver.pid, "gunicorn master": shop.gunicorn.pid}
    pids.update({f"worker {pid}": pid for pid in shop.workers()})
    load = Load(logdir, shop.url, "soak", duration=DURATION_S, concurrency=4)
    started = time.monotonic()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
    while load.proc.poll() is None:
        now = time.monotonic() - started
        if now >= WARMUP_S:
            for name, pid in pids.items():
                samples[name].append((now, rss_mib(pid)))
        time.sleep(1.0)
    records = load.finish()
    rate = len(records) / DURATION_S
    slopes = {name: slope_per_minute(s) for name, s in samples.items()}
    report = ", ".join(f"{name} {slope:+.3f} MiB/min (RSS {samples[name][-1][1]:.1f} MiB)" for name, slope in slopes.items())
    print(f"\nsoak: {len(records)} requests in {DURATION_S:.0f} s ({rate:.0f}/s); {report}")
    assert sum(1 for r in records if r["status"] == 0) == 0
    assert all(slope < LIMIT_MIB_PER_MIN for slope in slopes.values()), report
