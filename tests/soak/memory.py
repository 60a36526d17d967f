"""Memory of the soak's service processes: RSS read from /proc/<pid>/status every few
seconds into a CSV, and what the samples say (peak, final, growth per hour fitted after
a warm-up, growth during idle stretches apart from busy ones)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

HEADER = "elapsed_s,phase,service,pid,rss_mib\n"


def rss_mib(pid: int) -> float:
    """VmRSS of a live process, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"process {pid} has no VmRSS (a zombie?)")


@dataclass(frozen=True)
class Sample:
    elapsed: float
    phase: str  # busy, idle, warm-up, checks
    service: str
    rss: float


class MemorySampler:
    """Samples every service's RSS every ``every`` seconds while running; the phase is
    whatever the soak says it is at the time of the sample."""

    def __init__(self, pids: dict[str, int], csv_path: Path, every: float) -> None:
        self.pids, self.csv_path, self.every = pids, csv_path, every
        self.phase = "starting"
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        elapsed = time.monotonic() - self.started
        with self.csv_path.open("a") as out:
            for service, pid in self.pids.items():
                sample = Sample(elapsed, self.phase, service, rss_mib(pid))
                self.samples.append(sample)
                out.write(f"{elapsed:.1f},{self.phase},{service},{pid},{sample.rss:.2f}\n")

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self.csv_path.write_text(HEADER)
        self.started = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="soak-memory-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour (0 with < 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (m - mean_m) for t, m in points) / spread * 3600


@dataclass(frozen=True)
class Growth:
    service: str
    start: float  # MiB at the end of the warm-up
    peak: float
    final: float
    slope: float  # MiB/h over every sample after the warm-up
    window_hours: float
    busy_growth: float  # MiB summed over the busy stretches after the warm-up
    idle_growth: float  # MiB summed over the idle stretches after the warm-up
    busy_hours: float
    idle_hours: float

    @property
    def busy_per_hour(self) -> float:
        return self.busy_growth / self.busy_hours if self.busy_hours else 0.0

    @property
    def idle_per_hour(self) -> float:
        return self.idle_growth / self.idle_hours if self.idle_hours else 0.0


def growth(samples: list[Sample], service: str, warm_up_until: float) -> Growth:
    """What one service's RSS did after ``warm_up_until`` seconds: its fitted slope, and
    its growth split by phase (each stretch: last sample minus the sample before it
    began, so growth at a phase change is counted once)."""
    mine = [s for s in samples if s.service == service]
    after = [s for s in mine if s.elapsed >= warm_up_until]
    assert len(after) >= 2, f"{service}: fewer than two samples after the warm-up"
    summed = {"busy": 0.0, "idle": 0.0}
    hours = {"busy": 0.0, "idle": 0.0}
    for before, sample in itertools.pairwise(after):
        if sample.phase in summed:
            summed[sample.phase] += sample.rss - before.rss
            hours[sample.phase] += (sample.elapsed - before.elapsed) / 3600
    return Growth(
        service=service, start=after[0].rss, peak=max(s.rss for s in mine),
        final=mine[-1].rss, slope=slope_per_hour([(s.elapsed, s.rss) for s in after]),
        window_hours=(after[-1].elapsed - after[0].elapsed) / 3600,
        busy_growth=summed["busy"], idle_growth=summed["idle"],
        busy_hours=hours["busy"], idle_hours=hours["idle"])
