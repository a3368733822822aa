"""GPU telemetry during timed blocks (the cuda target): utilisation, memory and power sampled by a
background thread, and the energy a block used, from NVML (`nvidia-ml-py`, imported as pynvml).

The energy comes from the GPU's energy counter read before and after the block
(nvmlDeviceGetTotalEnergyConsumption, millijoules), which beats integrating sampled power; where
the counter is missing, from the trapezoid of the power samples, and the summary says which.
`Sampler` takes its reader and clock as arguments, so its logic is tested here without a GPU; on a
machine without NVML or a GPU `nvml_reader()` is None and records carry no telemetry (absent, not
zero). The NVML calls themselves have not run on this project's machines.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass


@dataclass
class Reading:
    utilization_pct: float
    memory_used_bytes: int
    power_w: float


@dataclass
class Telemetry:
    """One timed block's telemetry; `images` is set by the caller for joules per image."""
    seconds: float
    samples: int
    utilization_mean_pct: float | None
    utilization_max_pct: float | None
    memory_used_max_bytes: int | None
    power_mean_w: float | None
    power_max_w: float | None
    energy_j: float | None
    energy_source: str  # "energy counter" | "integrated power samples" | "none"
    images: int | None = None

    @property
    def joules_per_image(self) -> float | None:
        return None if self.energy_j is None or not self.images else self.energy_j / self.images

    def to_dict(self) -> dict:
        return {**asdict(self), "joules_per_image": self.joules_per_image}


class Sampler:
    """`read()` -> Reading every `interval_s` on a background thread between start() and stop();
    `energy_mj()` (or None) read at both ends. `clock` is time.monotonic unless a test passes one."""

    def __init__(self, read, energy_mj=None, clock=time.monotonic, interval_s: float = 0.02):
        self.read, self.energy_mj, self.clock, self.interval_s = read, energy_mj, clock, interval_s
        self.samples: list[tuple[float, Reading]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._e0 = None

    def sample(self) -> None:
        self.samples.append((self.clock(), self.read()))

    def start(self) -> "Sampler":
        self.samples, self._stop = [], threading.Event()
        self._t0 = self.clock()
        self._e0 = self.energy_mj() if self.energy_mj else None
        self.sample()
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self, images: int | None = None) -> Telemetry:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        e1 = self.energy_mj() if self.energy_mj else None
        return summarize(self.samples, self._t0, self.clock(), self._e0, e1, images)


def summarize(samples: list[tuple[float, Reading]], t0: float, t1: float, e0_mj: float | None,
              e1_mj: float | None, images: int | None = None) -> Telemetry:
    """A block's telemetry from its samples; energy from the counter when both ends were read,
    else the trapezoid of power over the sample times."""
    util = [r.utilization_pct for _, r in samples]
    power = [r.power_w for _, r in samples]
    if e0_mj is not None and e1_mj is not None:
        energy, source = (e1_mj - e0_mj) / 1e3, "energy counter"
    elif len(samples) >= 2:
        energy = sum((b[0] - a[0]) * (a[1].power_w + b[1].power_w) / 2 for a, b in zip(samples, samples[1:]))
        source = "integrated power samples"
    else:
        energy, source = None, "none"
    return Telemetry(seconds=t1 - t0, samples=len(samples),
                     utilization_mean_pct=sum(util) / len(util) if util else None,
                     utilization_max_pct=max(util) if util else None,
                     memory_used_max_bytes=max(r.memory_used_bytes for _, r in samples) if samples else None,
                     power_mean_w=sum(power) / len(power) if power else None, power_max_w=max(power) if power else None,
                     energy_j=energy, energy_source=source, images=images)


def combine(blocks: list[Telemetry]) -> Telemetry | None:
    """Several blocks of one configuration as one: energies and images summed, means weighted by
    time, maxima of maxima."""
    if not blocks:
        return None
    seconds = sum(b.seconds for b in blocks)

    def weighted(key):
        vals = [(getattr(b, key), b.seconds) for b in blocks if getattr(b, key) is not None]
        return sum(v * s for v, s in vals) / sum(s for _, s in vals) if vals and sum(s for _, s in vals) else None

    def most(key):
        vals = [getattr(b, key) for b in blocks if getattr(b, key) is not None]
        return max(vals) if vals else None

    energies = [b.energy_j for b in blocks]
    sources = {b.energy_source for b in blocks}
    return Telemetry(seconds=seconds, samples=sum(b.samples for b in blocks),
                     utilization_mean_pct=weighted("utilization_mean_pct"), utilization_max_pct=most("utilization_max_pct"),
                     memory_used_max_bytes=most("memory_used_max_bytes"), power_mean_w=weighted("power_mean_w"),
                     power_max_w=most("power_max_w"),
                     energy_j=None if any(e is None for e in energies) else sum(energies),
                     energy_source=sources.pop() if len(sources) == 1 else "mixed",
                     images=sum(b.images or 0 for b in blocks) or None)


def nvml_sampler_factory(device_index: int = 0, interval_s: float = 0.02):
    """A function returning a fresh Sampler over NVML for GPU `device_index`, or None where NVML or
    the GPU is not there (the reason is not an error: CPU machines have neither)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:  # noqa: BLE001  (ImportError, or NVMLError without a driver / GPU)
        return None

    def read() -> Reading:
        return Reading(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                       int(pynvml.nvmlDeviceGetMemoryInfo(handle).used),
                       pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3)  # mW

    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        energy = lambda: float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))  # noqa: E731  (mJ)
    except Exception:  # noqa: BLE001  (older GPUs have no counter)
        energy = None
    return lambda: Sampler(read, energy, interval_s=interval_s)
