"""How busy the machine was while a configuration was timed: the CPU time other processes took.

On a shared machine another job can take the cores in the middle of a measurement (eager PyTorch
on 2 threads went from 6.4 ms to trial medians of 26-634 ms with one competing process). Around
each timed block the monitor reads the machine's busy CPU time (/proc/stat) and this process's own
(all its threads, os.times), so other processes' share is busy - own, in cores (CPU seconds per
second of the block). A configuration whose blocks saw more than `threshold` cores taken by others
on average is flagged `contended` in its record (extra["load"]) and in the report.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal), or
    None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def other_cores(busy0: float | None, own0: float, wall0: float) -> float | None:
    """Cores other processes used on average since (busy0, own0, wall0)."""
    busy1, own1, wall1 = system_busy_s(), own_cpu_s(), time.perf_counter()
    if busy0 is None or busy1 is None or wall1 <= wall0:
        return None
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))


def wait_for_quiet(threshold: float, max_wait_s: float, window_s: float = 1.0) -> dict:
    """Wait, one `window_s` look at a time, until other processes use less than `threshold` cores,
    for at most `max_wait_s`. Returns what was seen: waited seconds, quiet or not, the last look."""
    t0 = time.perf_counter()
    seen = None
    while True:
        start = (system_busy_s(), own_cpu_s(), time.perf_counter())
        time.sleep(window_s)
        seen = other_cores(*start)
        if seen is None or seen < threshold or time.perf_counter() - t0 >= max_wait_s:
            break
    return {"waited_s": time.perf_counter() - t0, "quiet": seen is None or seen < threshold,
            "other_cpu_cores_before": seen}


@dataclass
class LoadMonitor:
    """Accumulates other processes' CPU time over each runner's timed blocks."""
    threshold: float
    _per: dict = field(default_factory=dict)  # name -> [other cpu s, wall s, max block cores, blocks]
    _loadavg: list = field(default_factory=list)

    @contextlib.contextmanager
    def block(self, name: str):
        busy0, own0, wall0 = system_busy_s(), own_cpu_s(), time.perf_counter()
        try:
            yield
        finally:
            cores = other_cores(busy0, own0, wall0)
            if cores is not None:
                wall = time.perf_counter() - wall0
                acc = self._per.setdefault(name, [0.0, 0.0, 0.0, 0])
                acc[0] += cores * wall
                acc[1] += wall
                acc[2] = max(acc[2], cores)
                acc[3] += 1
            if hasattr(os, "getloadavg"):
                self._loadavg.append(os.getloadavg()[0])

    def summary(self, name: str) -> dict:
        """What other processes took while `name` was timed; `contended` above the threshold."""
        acc = self._per.get(name)
        if not acc or acc[1] <= 0:
            return {"measured": False, "why": "no /proc/stat here, or no timed block", "contended": False}
        mean = acc[0] / acc[1]
        return {"measured": True, "other_cpu_cores": mean, "max_block_other_cpu_cores": acc[2], "blocks": acc[3],
                "threshold_cores": self.threshold, "contended": mean > self.threshold,
                "loadavg_1m": [min(self._loadavg), max(self._loadavg)] if self._loadavg else None,
                "cores": os.cpu_count()}
