"""Instructions and last-level cache misses per event on flow's event path, counted by
valgrind (cachegrind): a count does not change with what else runs on a shared machine,
so two trees compare within a fraction of a percent where timed runs differ by tens.

    python -m bench.instructions --tree /work/oldmain --tree /work/cand [--events 20000]

Each tree is a checkout (a git worktree) run with this interpreter (``PYTHONPATH`` set to
it, the script's own folder kept off ``sys.path``). The same records (simulated days of
the same clinics, made once by the tree this script comes from) go through each tree's
path, in batches of flow's ``flow_batch_max`` (the ``boards`` path: ``BOARDS_BATCH``); a
run with no records (imports, set-up, loading the records) is subtracted and the rest
divided by the records fed. Three paths:

``processor``
    the reader and the floor processor: a batch of aiokafka records read (decoded,
    checked: key, partition, event type), off-course partitions dropped, applied.
``service``
    the whole of flow's batch handler as the service runs it while catching up on a
    backlog (no boards drawn, no checkpoint due), with Kafka and Redis in memory.
``boards``
    the batch handler as it runs live at 500 events/s (issue 19, screens at scale): small
    batches (``BOARDS_BATCH`` records, about ten clinics each; use ``--clinics 100``), no
    lag, the clock at the batch's last event, so each touched clinic's board is drawn,
    its changed estimates (and the TV's told ranges) encoded and published, and its
    board rendered once for each role its screens watch (the waiting-room ``screen`` and
    the ``nurse`` frame, on the clinic's clock), as the board hub does; Kafka and Redis
    in memory, no checkpoint due.

Works on trees before the shared projection runner (commit d185d2d: flow's own
``FloorConsumer``, the processor decoding) and after it. Cachegrind is given this
machine's L1 caches and, as its last level (LL), a core's L2 (``--last-level 3``: the L3);
``--records`` keeps the records in a file, so that runs apart feed the same ones.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FLOOR = "clinicflow.floor.v1"
PARTITIONS = 12
BATCH = 2000  # flow_batch_max
# records per batch on the ``boards`` path: what a 20 ms batch holds at 500 events/s
BOARDS_BATCH = 10
BOARDS_ZONE = "America/New_York"
Raw = tuple[str, int, int, bytes | None, bytes | None]  # topic, partition, offset, key, value


# ------------------------------------------------------------------ the records


def make_records(clinics: int, events: int, path: Path) -> None:
    """Simulated days of ``clinics`` clinics, cut at ``events``, on their partitions."""
    from bench.flow_bench import clinic_days
    from shared.projection import partition_for

    offsets = [0] * PARTITIONS
    records: list[Raw] = []
    for key, value in clinic_days(clinics, events):
        partition = partition_for(key, PARTITIONS)
        records.append((FLOOR, partition, offsets[partition], key, value))
        offsets[partition] += 1
    path.write_bytes(pickle.dumps(records))


# ------------------------------------------------------------------ inside a tree


class _Kafka:
    """An aiokafka consumer far behind its high-water marks (catching up on a backlog)."""

    def __init__(self) -> None:
        from aiokafka import TopicPartition
        self.assigned = {TopicPartition(FLOOR, p) for p in range(PARTITIONS)}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def assignment(self) -> set[Any]:
        return self.assigned

    def highwater(self, tp: Any) -> int:
        return 10**9

    async def commit(self, offsets: Any) -> None:
        return None

    async def beginning_offsets(self, partitions: Any) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)

    def seek(self, tp: Any, offset: int) -> None:
        return None


class _LiveKafka(_Kafka):
    """An aiokafka consumer at the ends of its partitions (live: no lag)."""

    def highwater(self, tp: Any) -> int:
        return 0


class _Store:
    """Flow's store in memory (both trees' write signatures)."""

    outbox = None

    async def write(self, boards: Any, checkpoint: Any = None) -> None:
        return None


class _ScreensStore(_Store):
    """Flow's store in memory, each board written rendered as the board hub renders it
    for the screens watching its clinic: once per role (waiting-room TV, nurse station),
    as an SSE frame on the clinic's clock."""

    def __init__(self) -> None:
        from zoneinfo import ZoneInfo

        from services.flow.api import BoardViews

        zone = ZoneInfo(BOARDS_ZONE)
        self.views = BoardViews(zone_of=lambda _clinic_id: zone)

    async def write(self, boards: Any, checkpoint: Any = None) -> None:
        render = self.views.render
        for clinic_id, board in boards.items():
            render(clinic_id, "screen", board, frame=True)
            render(clinic_id, "nurse", board, frame=True)


class _BatchClock:
    """The wall clock of a live service: the time of the batch's last event."""

    def __init__(self) -> None:
        from datetime import UTC, datetime
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> Any:
        return self.at


async def _nothing(*_args: Any, **_kwargs: Any) -> Any:
    """Kafka in memory: a record handed over and confirmed at once (a tree whose flow
    awaits each publish ignores what it returns)."""
    confirmed = asyncio.get_running_loop().create_future()
    confirmed.set_result(None)
    return confirmed


def _feeder(path: str, clock: Any = None) -> Any:
    """An async function applying one batch of aiokafka records on this tree's path
    (``clock``: the ``boards`` path's clock)."""
    try:
        from shared.projection import Applied, ProjectionRunner
    except ImportError:
        return _old_feeder(path)
    from services.flow.consumer import FlowProjection
    from services.flow.processor import FloorProcessor, floor_reader
    from shared.clock import SystemClock

    if path == "service":
        projection: Any = FlowProjection(_Store(), _nothing, SystemClock(),  # type: ignore[arg-type]
                                         estimates_topic="estimates", publish_estimates=False,
                                         checkpoint_seconds=1e9)
    elif path == "boards":
        projection = FlowProjection(_ScreensStore(), _nothing, clock,  # type: ignore[arg-type]
                                    estimates_topic="estimates", publish_estimates=True,
                                    told_topic="told", checkpoint_seconds=1e9)
    else:
        processor = FloorProcessor()

        class Processing:
            """The processor alone (as ``FlowProjection`` applies: streaming where the
            runner can)."""

            async def positions(self, partitions: Any) -> dict[Any, int | None]:
                return {}

            async def release(self, partitions: Any) -> None:
                return None

            async def apply(self, records: Any) -> Any:
                return applied(processor.process(records))

            async def apply_stream(self, records: Any) -> Any:
                return applied(getattr(processor, "process_stream", processor.process)(records))

        def applied(outcome: Any) -> Any:
            return Applied(outcome.applied, outcome.already_applied, outcome.dead_letters)

        projection = Processing()
    runner = ProjectionRunner(None, projection, floor_reader(FLOOR), service="flow",
                              consumer="flow", topics=[FLOOR], group_id="flow")
    runner.subscriber = SimpleNamespace(consumer=_LiveKafka() if path == "boards" else _Kafka())
    if path in ("service", "boards"):
        projection.kafka = runner
    return runner.handle


def _old_feeder(path: str) -> Any:
    from shared.consumer import RedisPositioned  # type: ignore[import-not-found]

    from services.flow.consumer import FloorConsumer  # type: ignore[attr-defined]
    from services.flow.processor import FloorProcessor

    if path == "service":
        runtime = SimpleNamespace(broker=SimpleNamespace(publish=_nothing))
        consumer = FloorConsumer(runtime, _Store(), floor_topic=FLOOR,  # type: ignore[arg-type]
                                 estimates_topic="estimates", dead_letter_topic="dead",
                                 publish_estimates=False, checkpoint_seconds=1e9)
        consumer.subscriber = SimpleNamespace(consumer=_Kafka())
        return consumer.handle
    processor = FloorProcessor()
    positioned = RedisPositioned()
    positioned.subscriber = SimpleNamespace(consumer=_Kafka())

    async def handle(raw_records: Any) -> Any:  # FloorConsumer._without_gaps, then process
        records = list(raw_records)
        skip = await positioned.off_course_partitions(records)
        if skip:
            records = [r for r in records if (r.topic, r.partition) not in skip]
        return processor.process(records)

    return handle


def feed(records_file: str, count: int, path: str) -> None:
    """Apply the first ``count`` records of the file (all are loaded whatever the count)."""
    from aiokafka.structs import ConsumerRecord

    from shared.runner import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)  # as the service runs
    stored: list[Raw] = pickle.loads(Path(records_file).read_bytes())
    raw = [ConsumerRecord(topic, partition, offset, 0, 0, key, value, None,
                          len(key or b""), len(value or b""), ())
           for topic, partition, offset, key, value in stored]
    if count > len(raw):
        raise SystemExit(f"{records_file} holds {len(raw)} records, not {count}")
    if path == "boards":
        feed_live(raw, count)
        return
    handle = _feeder(path)

    async def run() -> None:
        for start in range(0, count, BATCH):
            await handle(raw[start:min(start + BATCH, count)])

    asyncio.run(run())


def feed_live(raw: list[Any], count: int) -> None:
    """The ``boards`` path: batches of ``BOARDS_BATCH`` records, the clock at each batch's
    last event (read for every record, fed or not, so a run with none subtracts it)."""
    from datetime import datetime

    import orjson

    times = [datetime.fromisoformat(orjson.loads(record.value)["occurred_at"])
             for record in raw]
    clock = _BatchClock()
    handle = _feeder("boards", clock)

    async def run() -> None:
        for start in range(0, count, BOARDS_BATCH):
            end = min(start + BOARDS_BATCH, count)
            clock.at = times[end - 1]
            await handle(raw[start:end])

    asyncio.run(run())


# ------------------------------------------------------------------ valgrind


def caches(last_level: int = 2) -> list[str]:
    """Cachegrind's cache options from this machine's caches (sysfs): L1 data and
    instruction, and ``last_level`` (2 or 3) as its LL. Left to itself, cachegrind takes
    a VM's L3 as it is reported, which here is 256 MiB and direct-mapped."""
    found = {"D1": "32768,8,64", "I1": "32768,8,64", "LL": "524288,8,64"}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, kind, size, ways, line = (
                (index / name).read_text().strip()
                for name in ("level", "type", "size", "ways_of_associativity",
                             "coherency_line_size"))
        except OSError:
            continue
        name = {("1", "Data"): "D1", ("1", "Instruction"): "I1",
                (str(last_level), "Unified"): "LL"}.get((level, kind))
        if name is not None and size.endswith("K"):
            found[name] = f"{int(size[:-1]) * 1024},{ways},{line}"
    return [f"--{name}={spec}" for name, spec in found.items()]


def count(tree: str, records_file: str, events: int, path: str,
          cache_options: list[str]) -> dict[str, int]:
    """Cachegrind's totals for one run of ``feed`` in ``tree``."""
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
    # addresses fixed too (no ASLR): objects hashed by address land in the same slots every
    # run, and two runs of one tree then agree within a few hundred instructions in 4
    # billion (with ASLR, within 0.5%)
    fixed = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [*fixed, "valgrind", "--tool=cachegrind", "--cache-sim=yes", *cache_options,
             f"--cachegrind-out-file={scratch}/out", sys.executable, "-P", __file__, "feed",
             records_file, str(events), path],
            env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr[-3000:]}")
    totals: dict[str, int] = {}
    for name, label in (("instructions", r"I\s+refs"), ("d1_misses", r"D1\s+misses"),
                        ("ll_misses", r"LL\s+misses")):
        found = re.search(label + r":\s+([\d,]+)", done.stderr)
        if found is None:
            raise RuntimeError(f"no {label} in valgrind's summary: {done.stderr[-2000:]}")
        totals[name] = int(found.group(1).replace(",", ""))
    return totals


def per_event(tree: str, records_file: str, events: int, path: str,
              cache_options: list[str]) -> dict[str, float]:
    """Per event fed: a run with ``events`` records less one with none."""
    base = count(tree, records_file, 0, path, cache_options)
    fed = count(tree, records_file, events, path, cache_options)
    return {name: (fed[name] - base[name]) / events for name in fed}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "feed":
        feed(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True,
                        help="a checkout to measure (repeat: the first is the baseline)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clinics", type=int, default=50)
    parser.add_argument("--path", choices=("processor", "service", "boards"), action="append",
                        help="the paths to count (repeat; default: processor and service)")
    parser.add_argument("--records", type=Path,
                        help="the records file to use (made when missing), so that runs "
                             "apart feed the same records (event ids are random)")
    parser.add_argument("--last-level", type=int, choices=(2, 3), default=2,
                        help="the cache cachegrind simulates as LL: 2 (a core's L2, which "
                             "a batch of decoded events outgrows) or 3")
    args = parser.parse_args()
    cache_options = caches(args.last_level)
    with tempfile.TemporaryDirectory() as scratch:
        records_file = args.records or Path(scratch) / "records.pickle"
        if not records_file.exists():
            make_records(args.clinics, args.events, records_file)
        print("cachegrind " + " ".join(cache_options), flush=True)
        for path in args.path or ["processor", "service"]:
            batch = BOARDS_BATCH if path == "boards" else BATCH
            print(f"{path} path, {args.events:,} events of {args.clinics} clinics, "
                  f"batches of {batch}:", flush=True)
            base: dict[str, float] | None = None
            for tree in args.tree:
                figures = per_event(tree, str(records_file), args.events, path, cache_options)
                ratios = ("" if base is None else "  ratio " + " / ".join(
                    f"{figures[n] / base[n]:.3f}" for n in figures))
                base = base or figures
                print(f"  {tree}: {figures['instructions']:,.0f} instructions, "
                      f"{figures['d1_misses']:,.1f} D1 misses, {figures['ll_misses']:,.1f} "
                      f"LL misses per event{ratios}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
