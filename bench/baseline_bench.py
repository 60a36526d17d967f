"""Flow's event path beside another checkout's, in the same run and on the same records.

    BENCH_BASELINE=/path/to/old/checkout BENCH_ONLY=flow_vs_baseline make bench

``make bench``'s own figures move by tens of percent with what else the machine runs;
a change's cost is only seen beside the code it replaces, measured in the same minutes.
This runs the flow service of this tree and of ``BENCH_BASELINE`` (a git worktree of an
older main, e.g. ``git worktree add /tmp/old d185d2d``) alternately on one preloaded
topic, each run from process start to every record applied and checkpointed (a fresh
consumer group and Redis space each run: a rebuild from the beginning), and reports each
tree's median and range and the ratio. The baseline is started the way its own tree
starts a service (``tools.cli`` there, or ``shared.cli`` in trees before the tools were
moved out), with this interpreter and ``PYTHONPATH`` set to it. Numbers, never asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import preload
from bench.flow_bench import FLOOR, _checkpointed, _env, clinic_days
from shared.admin import ensure_topics
from tests.helpers import ServiceProcess


class TreeService(ServiceProcess):
    """A service of another checkout, run as that checkout runs it."""

    def __init__(self, tree: Path, service: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__(service, env, log_path)
        self.tree = tree

    def start(self) -> None:
        module = "tools.cli" if (self.tree / "tools" / "cli.py").exists() else "shared.cli"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "run", self.service],
            cwd=self.tree, env={**self.env, "PYTHONPATH": str(self.tree)},
            stdout=log, stderr=subprocess.STDOUT,
        )


async def _one_run(tree: Path | None, bootstrap: str, redis_url: str, prefix: str,
                   space: str, expected: int, log: Path) -> float:
    """Seconds from the service's start to every record checkpointed."""
    env = _env(bootstrap, redis_url, prefix, flow_publish_estimates="false",
               redis_prefix=space.rstrip("."), flow_group_id=f"{space}flow")
    service = (ServiceProcess("flow", env, log) if tree is None
               else TreeService(tree, "flow", env, log))
    redis = Redis.from_url(redis_url)
    started = time.perf_counter()
    service.start()
    try:
        await service.wait_ready(120)
        while await _checkpointed(redis, space) < expected:
            await asyncio.sleep(0.1)
        return time.perf_counter() - started
    finally:
        service.stop()
        await redis.aclose()


async def flow_vs_baseline(bootstrap: str, redis_url: str, workdir: Path, baseline: Path,
                           clinics: int = 500, events: int = 300_000,
                           runs: int = 3) -> dict[str, Any]:
    """``runs`` rebuilds by each tree, alternating (which goes first alternates too)."""
    if not (baseline / "services" / "flow").is_dir():
        raise SystemExit(f"BENCH_BASELINE={baseline} is not a clinicflow checkout")
    prefix = f"v{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    records = clinic_days(clinics, events)
    await preload(bootstrap, prefix + FLOOR, records)
    seconds: dict[str, list[float]] = {"this": [], "baseline": []}
    for run in range(runs):
        order = [("this", None), ("baseline", baseline)]
        if run % 2:
            order.reverse()
        for name, tree in order:
            space = f"{prefix}{name}{run}."
            seconds[name].append(await _one_run(
                tree, bootstrap, redis_url, prefix, space, len(records),
                workdir / f"flow-{name}-{run}.log"))
    rate = {name: [len(records) / s for s in taken] for name, taken in seconds.items()}
    median = {name: statistics.median(r) for name, r in rate.items()}
    return {
        "events": len(records),
        "clinics": clinics,
        "runs": runs,
        "baseline": str(baseline),
        "baseline_commit": _commit(baseline),
        "this_events_per_second": round(median["this"]),
        "this_range": [round(min(rate["this"])), round(max(rate["this"]))],
        "baseline_events_per_second": round(median["baseline"]),
        "baseline_range": [round(min(rate["baseline"])), round(max(rate["baseline"]))],
        "this_over_baseline": round(median["this"] / median["baseline"], 3),
        # each run's pair, side by side: a pair shares the machine's mood of its minutes
        "pair_ratios": [round(b / t, 3) for t, b in zip(seconds["this"],
                                                       seconds["baseline"], strict=True)],
    }


def _commit(tree: Path) -> str:
    found = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, check=False)
    return found.stdout.strip() or "unknown"
