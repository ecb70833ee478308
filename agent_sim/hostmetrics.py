"""Host metrics from /proc, as the Agent's system checks name them (Linux only).

A built-in check (``HostMetrics``) run by ``checks.CheckRunner`` every
``--check-interval`` seconds (default 15), unless ``--no-host-metrics``:

    system.cpu.user/system/iowait/idle   percent of CPU time since the previous run (since boot on the first)
    system.load.1/5/15                   /proc/loadavg
    system.mem.total/used/free/usable    MB; used = total - free, usable = MemAvailable (the Agent's meanings)
    system.disk.in_use                   fraction used per mount, tagged device: and mount: (as df counts it)
    system.net.bytes_rcvd/sent           bytes per second per interface (not lo), tagged device:

No dependency (psutil was not worth one for six files of /proc). Each read
is a few syscalls; a file missing (not Linux) makes the run fail, which the
runner reports like any failing check.
"""

from __future__ import annotations

import os
from typing import Any

from agent_sim.checks import AgentCheck

# pseudo and memory file systems: not disks
_NOT_DISKS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "tmpfs", "devtmpfs", "securityfs", "pstore",
              "debugfs", "tracefs", "bpf", "autofs", "hugetlbfs", "fusectl", "configfs", "binfmt_misc", "nsfs",
              "ramfs", "rpc_pipefs", "squashfs", "efivarfs", "selinuxfs", "fuse.lxcfs"}
MAX_MOUNTS = 50


class HostMetrics(AgentCheck):
    def __init__(self, proc: str = "/proc") -> None:
        super().__init__("host_metrics")
        self.proc = proc
        self._cpu: list[int] = []

    def _read(self, name: str) -> str:
        with open(os.path.join(self.proc, name)) as f:
            return f.read()

    def check(self, instance: dict[str, Any]) -> None:
        self._cpu_times()
        for label, value in zip(("1", "5", "15"), self._read("loadavg").split()[:3], strict=True):
            self.gauge(f"system.load.{label}", float(value))
        mem = {line.split(":")[0]: int(line.split()[1]) for line in self._read("meminfo").splitlines()
               if len(line.split()) >= 2}
        total, free = mem["MemTotal"] / 1024, mem["MemFree"] / 1024
        self.gauge("system.mem.total", total)
        self.gauge("system.mem.used", total - free)
        self.gauge("system.mem.free", free)
        self.gauge("system.mem.usable", mem.get("MemAvailable", mem["MemFree"]) / 1024)
        self._disks()
        for line in self._read("net/dev").splitlines()[2:]:
            device, _, counters = line.partition(":")
            device = device.strip()
            fields = counters.split()
            if device == "lo" or len(fields) < 9:
                continue
            self.rate("system.net.bytes_rcvd", int(fields[0]), tags=[f"device:{device}"])
            self.rate("system.net.bytes_sent", int(fields[8]), tags=[f"device:{device}"])

    def _cpu_times(self) -> None:
        # user nice system idle iowait irq softirq steal
        now = [int(v) for v in self._read("stat").splitlines()[0].split()[1:9]]
        delta = [n - p for n, p in zip(now, self._cpu or [0] * len(now), strict=True)]
        self._cpu = now
        total = sum(delta)
        if total <= 0:
            return
        user, nice, system, idle, iowait, irq, softirq, steal = delta + [0] * (8 - len(delta))
        self.gauge("system.cpu.user", 100 * (user + nice) / total)
        self.gauge("system.cpu.system", 100 * (system + irq + softirq) / total)
        self.gauge("system.cpu.iowait", 100 * iowait / total)
        self.gauge("system.cpu.idle", 100 * idle / total)
        self.gauge("system.cpu.stolen", 100 * steal / total)

    def _disks(self) -> None:
        seen: set[str] = set()
        for line in self._read("mounts").splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[2] in _NOT_DISKS or parts[1] in seen or len(seen) >= MAX_MOUNTS:
                continue
            device, mount = parts[0], parts[1].replace("\\040", " ")
            try:
                if not os.path.isdir(mount):
                    continue  # a bind-mounted file (containers' /etc/hosts ...)
                st = os.statvfs(mount)
            except OSError:
                continue
            used = st.f_blocks - st.f_bfree
            if st.f_blocks <= 0 or used + st.f_bavail <= 0:
                continue
            seen.add(parts[1])
            self.gauge("system.disk.in_use", used / (used + st.f_bavail), tags=[f"device:{device}", f"mount:{mount}"])
