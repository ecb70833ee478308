"""DogStatsD intake of ``agent-sim serve`` (aggregation and SQLite storage on), in four runs:

1. capacity: one sender process blasts prebuilt datagrams (25 metric lines
   each: counters, histograms, gauges, distributions over 100 contexts) for
   ``--seconds``; the receiver's ``samples`` counter gives what it ingested
   per second (the excess is dropped by the kernel, as UDP does);
2. the ``datadog`` client's own send rate from one process (buffering on,
   ``increment`` + ``histogram`` with tags), and whether all of it arrived;
3. 10,000 distinct contexts sent for ``--seconds`` (buckets close and go to
   SQLite meanwhile): the receiver's peak RSS (VmHWM);
4. a paced 50,000 samples/s for ``--seconds``: kernel drops on the
   receiver's socket (``/proc/net/udp``, last column) and samples counted.

    python benchmarks/bench_statsd.py [--seconds 10]

Targets (issue 15): >= 200 k samples/s ingested, peak RSS < 300 MiB with
10,000 contexts, no drops at 50 k samples/s.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
LINES_PER_DATAGRAM = 25


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def datagrams(contexts: int, count: int, seed: int = 15) -> list[bytes]:
    rng = random.Random(seed)
    kinds = ["c"] * 5 + ["h"] * 3 + ["g", "d"]
    out = []
    for _ in range(count):
        lines = []
        for _ in range(LINES_PER_DATAGRAM):
            i = rng.randrange(contexts)
            kind = kinds[i % len(kinds)]
            value = 1 if kind == "c" else rng.randint(1, 500)  # counters are mostly increments
            lines.append(f"bench.{kind}.m{i % 50}:{value}|{kind}|#env:bench,route:/r{i},shard:{i % 7}")
        out.append("\n".join(lines).encode())
    return out


class Receiver:
    def __init__(self, db: str) -> None:
        self.port, self.udp = free_port(), free_port(socket.SOCK_DGRAM)
        self.proc = subprocess.Popen([sys.executable, "-m", "agent_sim", "serve", "--port", str(self.port), "--db", db,
                                      "--statsd-port", str(self.udp), "--no-host-metrics"], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": REPO})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("agent-sim serve did not start")

    def counter(self, name: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        return int(re.search(rf"^agent_sim_statsd_{name}_total (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]

    def drops(self) -> int:
        """Kernel drops on the receiver's UDP socket (the last column of /proc/net/udp)."""
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == self.udp:
                    return int(fields[-1])
        return 0

    def settle(self, timeout: float = 30) -> int:
        """The samples counter once it stops moving (the socket buffer drained)."""
        last, deadline = -1, time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.counter("samples")
            if now == last:
                return now
            last = now
            time.sleep(0.5)
        return last

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode:
            print(err.decode(), file=sys.stderr)


def blast(port: int, packets: list[bytes], seconds: float, rate: float | None = None) -> int:
    """Send ``packets`` round-robin for ``seconds`` (at ``rate`` datagrams/s, or flat out); returns datagrams sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    send = sock.send
    n, start = 0, time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate is not None:
            due = int((now - start) * rate)
            if n >= due:
                time.sleep(0.001)
                continue
            batch = due - n
        else:
            batch = 1000
        for _ in range(batch):
            try:
                send(packets[n % len(packets)])
            except OSError:
                pass  # ENOBUFS/ECONNREFUSED: the datagram is lost, as any UDP sender sees
            n += 1
    sock.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # 1. capacity: in this process (one core, no socket), then through UDP into agent-sim serve
        from agent_sim.dogstatsd import Aggregator
        from agent_sim.dogstatsd_store import MetricStore
        from agent_sim.store import Store

        store = Store(os.path.join(tmp, "inproc.db"))
        agg, packets = Aggregator(store=MetricStore(store)), datagrams(100, 2000)
        n, t0 = 0, time.process_time()
        while time.process_time() - t0 < args.seconds / 2:
            for p in packets:
                agg.ingest(p, time.time())
            n += len(packets) * LINES_PER_DATAGRAM
        agg.flush(time.time(), everything=True)
        print(f"capacity, in process: {n / (time.process_time() - t0) / 1e3:,.0f} k samples per CPU-second "
              "(parse + aggregate + SQLite flush) — target >= 200 k")
        store.close()
        with Receiver(os.path.join(tmp, "a.db")) as r:
            before, cpu0, t0 = r.counter("samples"), r.cpu_seconds(), time.monotonic()
            sent = blast(r.udp, packets, args.seconds) * LINES_PER_DATAGRAM
            ingested = r.settle() - before
            print(f"capacity, agent-sim serve: {ingested / (time.monotonic() - t0) / 1e3:,.0f} k samples/s wall, "
                  f"{ingested / (r.cpu_seconds() - cpu0) / 1e3:,.0f} k per receiver CPU-second "
                  f"(flat-out sender: {sent / args.seconds / 1e3:,.0f} k/s offered, kernel drops {r.drops():,})")
            client_rate(r, args.seconds)
        with Receiver(os.path.join(tmp, "b.db")) as r:
            seconds = max(args.seconds, 25)  # past two buckets: closed ones go to SQLite meanwhile
            packets = datagrams(10_000, 4000, seed=3)
            blast(r.udp, packets, seconds, rate=2000)
            r.settle()
            contexts = len({line.split(b":")[0] + line.split(b"|#")[1] for p in packets for line in p.split(b"\n")})
            print(f"{contexts:,} distinct contexts for {seconds:g} s: peak RSS {r.peak_rss_mib():.0f} MiB "
                  f"(target < 300 MiB), contexts_overflowed {r.counter('contexts_overflowed')}")
        with Receiver(os.path.join(tmp, "c.db")) as r:
            drops0, before = r.drops(), r.counter("samples")
            sent = blast(r.udp, datagrams(100, 2000, seed=4), args.seconds, rate=50_000 / LINES_PER_DATAGRAM)
            counted = r.settle() - before
            print(f"50 k samples/s for {args.seconds:g} s: {sent * LINES_PER_DATAGRAM:,} sent, {counted:,} counted, "
                  f"kernel drops {r.drops() - drops0} (target 0)")


def client_rate(r: Receiver, seconds: float) -> None:
    """The datadog client's send rate from this process (buffered), and what arrived."""
    from datadog.dogstatsd import DogStatsd

    before = r.settle()
    statsd = DogStatsd(host="127.0.0.1", port=r.udp, disable_telemetry=True, disable_buffering=False)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() < t0 + seconds:
        for i in range(500):
            statsd.increment("client.page_views", tags=["env:bench", f"route:/r{i % 20}"])
            statsd.histogram("client.latency", i % 97, tags=["env:bench", f"route:/r{i % 20}"])
        calls += 1000
    statsd.flush()
    elapsed = time.perf_counter() - t0
    statsd.close_socket()
    arrived = r.settle() - before
    print(f"datadog client (buffered, one process): {calls / elapsed / 1e3:,.0f} k samples/s sent; "
          f"{arrived:,} of {calls:,} arrived")

if __name__ == "__main__":
    main()
