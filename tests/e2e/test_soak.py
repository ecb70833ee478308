"""Sustained load at the highest rate this machine allows (four client
threads against ``tracer-run gunicorn -w 2 --preload``): the RSS of the app's
processes and of the receiver, least-squares slope over 1-second samples
after a warm-up, must stay under a limit.

- short (runs by default, CI included; ≈ 30 s): 20 s of load, 5 s warm-up,
  limit 8 MiB/min: catches a per-request leak (the receiver leaked 7.5 to
  12 MiB/min before its span-id memory was bounded), not slow cache filling;
- long (``RUN_SOAK=1``; ≈ 80 s): 60 s of load, 15 s warm-up, limit 1 MiB/min
  (the figure docs/performance.md quotes).

Prints the slopes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Load, Receiver, Shop, running_stack

# (load seconds, warm-up seconds, limit in MiB/min)
SHORT = (20.0, 5.0, 8.0)
LONG = (60.0, 15.0, 1.0)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


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


@pytest.mark.parametrize(
    "soak",
    [
        pytest.param(SHORT, id="short"),
        pytest.param(LONG, id="long", marks=pytest.mark.skipif(
            os.environ.get("RUN_SOAK") != "1", reason="60-second soak: set RUN_SOAK=1")),
    ],
)
def test_rss_is_flat_under_sustained_load(soak_stack: tuple[Receiver, Shop, str], soak: tuple[float, ...]) -> None:
    DURATION_S, WARMUP_S, LIMIT_MIB_PER_MIN = soak  # noqa: N806
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
