"""Two check-in trees on the EHR feed, runs interleaved on one stack:

    python -m bench.feed_ab --tree before=/tmp/before --tree after=. [--rounds 3]

The EHR feed's saturation run (``bench/feed_bench.py``: SIU^S12 bookings and ADT^A04
arrivals of 8 clinics over 8 MLLP connections, each message after the previous one's
ACK) against a check-in process started from each tree in turn (a git worktree, e.g.
``git worktree add /tmp/before <commit>``; run with this interpreter, the tree as its
working directory), rounds alternating the trees, each process warmed up and then
timed twice. On this machine one run of each is worth little: two runs an hour apart,
nothing else running, differed by a quarter (docs/performance.md), which is more than
most changes; interleaving spreads
whatever else the machine does over both trees. Every ACK must be AA. Prints each run
and, per tree, the medians of msg/s, check-in's CPU per message and the ACK p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.feed_bench import drive, facility, midday_zone, workload
from shared.admin import ensure_topics
from tests.helpers import ServiceProcess
from tools.stack import LocalStack, free_port

CLINICS = 8
CONNECTIONS = 8
WARM_UP = 300  # patients (600 messages) before each process is timed


async def compare(trees: dict[str, Path], rounds: int, patients: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="clinicflow-feed-ab-"))
    stack = LocalStack(workdir / "stack", kafka_port=free_port(), redis_port=free_port())
    await asyncio.to_thread(stack.start, None)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        prefix = f"a{uuid.uuid4().hex[:6]}."
        await ensure_topics(stack.kafka_bootstrap, prefix)
        now = datetime.now(UTC)
        zone = midday_zone(now)
        names = [f"{tree}{r}{part}" for r in range(rounds) for tree in trees
                 for part in ("w", "x", "y")]
        feeds = {facility(n, c): {"clinic": f"{n}c{c}", "source_of_truth": "hl7"}
                 for n in names for c in range(CLINICS)}
        base = {"CLINICFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
                "CLINICFLOW_REDIS_URL": stack.redis_url, "CLINICFLOW_TOPIC_PREFIX": prefix,
                "CLINICFLOW_REDIS_PREFIX": prefix.rstrip("."),
                "CLINICFLOW_LOG_LEVEL": "WARNING", "CLINICFLOW_LOG_FORMAT": "json",
                "CLINICFLOW_CHECKIN_TIMEZONE": zone.key,
                "CLINICFLOW_CHECKIN_NO_SHOW_CHECK_SECONDS": "0",
                "CLINICFLOW_CHECKIN_FEEDS": json.dumps(feeds)}
        for r in range(rounds):
            for name, tree in trees.items():
                port = free_port()
                service = ServiceProcess(
                    "checkin", {**base, "CLINICFLOW_CHECKIN_HL7_PORT": str(port)},
                    workdir / f"checkin-{name}-{r}.log", tree=tree)
                service.start()
                try:
                    await service.wait_ready(60)
                    assert service.process is not None
                    pid = service.process.pid
                    await drive(port, workload(f"{name}{r}w", patients=WARM_UP,
                                               clinics=CLINICS, connections=CONNECTIONS,
                                               zone=zone, now=now),
                                pid=pid, redis_url=stack.redis_url)
                    for part in ("x", "y"):
                        run = await drive(port, workload(
                            f"{name}{r}{part}", patients=patients, clinics=CLINICS,
                            connections=CONNECTIONS, zone=zone, now=now),
                            pid=pid, redis_url=stack.redis_url)
                        if run["not_aa"]:
                            raise SystemExit(f"{name}: {run['not_aa']} ACKs were not AA")
                        run["load_average"] = round(os.getloadavg()[0], 2)
                        runs[name].append(run)
                        print(f"  {name} round {r}: {run['messages_per_second']} msg/s, "
                              f"{run['cpu_ms_per_message']} ms CPU/msg, ACK p50 "
                              f"{run['p50_ms']} / p99 {run['p99_ms']} ms, load "
                              f"{run['load_average']}", flush=True)
                finally:
                    service.stop()
    finally:
        await asyncio.to_thread(stack.stop)
    return {name: {
        "runs": len(found),
        "messages_per_second": statistics.median(r["messages_per_second"] for r in found),
        "messages_per_second_range": [min(r["messages_per_second"] for r in found),
                                      max(r["messages_per_second"] for r in found)],
        "cpu_ms_per_message": statistics.median(r["cpu_ms_per_message"] for r in found),
        "p99_ms": statistics.median(r["p99_ms"] for r in found),
        "redis_commands_per_message": statistics.median(
            r["redis_commands_per_message"] for r in found),
    } for name, found in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH",
                        help="a check-in tree to run (twice or more)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patients", type=int, default=2500,
                        help="patients per timed run (two messages each)")
    args = parser.parse_args(argv)
    trees = {}
    for given in args.tree:
        name, _, path = given.partition("=")
        tree = Path(path).resolve()
        if not name or not (tree / "services" / "checkin").is_dir():
            parser.error(f"--tree {given!r}: NAME=PATH of a clinicflow checkout")
        trees[name] = tree
    if len(trees) < 2:
        parser.error("give two trees or more")
    summary = asyncio.run(compare(trees, args.rounds, args.patients))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
