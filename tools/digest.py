"""``clinicflow digest``: one hash of everything flow computes for a simulated stretch of
days: every board drawn after every batch, and every clinic's checkpoint at the end.

A change that must not change behaviour (a refactoring, a speed-up) is checked by running
this before and after it: the same digest means the same boards and checkpoints for the
same events. A few unreadable records (a tombstone, a record keyed by another clinic,
bytes that are not JSON) are mixed in, so what is dead-lettered counts too (by offset).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

from services.flow.processor import FloorProcessor, build_board, floor_reader
from shared import events as ev
from shared.floor.snapshot import dump_flow_json
from shared.projection import partition_for
from tools.replay import to_fact
from tools.simulate import simulate_clinics

TOPIC = "clinicflow.floor.v1"
PARTITIONS = 12


@contextlib.contextmanager
def _seeded_event_ids(seed: int) -> Iterator[None]:
    """Event ids drawn from a seeded generator: the same events every run."""
    rng = random.Random(seed)
    real = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)  # type: ignore[assignment]
    try:
        yield
    finally:
        uuid.uuid4 = real  # type: ignore[assignment]


def simulated_days(clinics: int, events: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) floor records of successive simulated days of ``clinics`` clinics (a
    clinic a day, ``<clinic>d<day>``), cut at ``events``."""
    records: list[tuple[bytes, bytes]] = []
    day = 0
    with _seeded_event_ids(seed):
        while len(records) < events:
            simulated = simulate_clinics("all", seed + day, clinics)
            tickets: dict[str, int] = {}

            def ticket_for(clinic: str, _visit: str, tickets: dict[str, int] = tickets) -> str:
                tickets[clinic] = tickets.get(clinic, 0) + 1
                return f"A-{tickets[clinic] % 10000}"

            for record in simulated.events:
                clinic_id = f"{record['clinic_id']}d{day}"
                event = ev.make_event(to_fact(record, ticket_for), clinic_id=clinic_id,
                                      source="digest",
                                      occurred_at=datetime.fromisoformat(record["ts"]))
                records.append((clinic_id.encode(), ev.encode(event)))
            day += 1
    return records[:events]


def digest(clinics: int = 50, events: int = 200_000, batch: int = 500, seed: int = 1
           ) -> dict[str, Any]:
    """The digest and what it covered."""
    offsets = [0] * PARTITIONS
    records: list[tuple[int, int, bytes, bytes | None]] = []  # partition, offset, key, value
    for index, (key, value) in enumerate(simulated_days(clinics, events, seed)):
        partition = partition_for(key, PARTITIONS)
        if index % 20_011 == 7:  # a few records no consumer can apply
            records.append((partition, offsets[partition], key, None))
            offsets[partition] += 1
            records.append((partition, offsets[partition], key, b"not json"))
            offsets[partition] += 1
        records.append((partition, offsets[partition], key, value))
        offsets[partition] += 1
    read = floor_reader(TOPIC).read  # as the service reads them: decoded, checked
    processor = FloorProcessor()
    hasher = hashlib.sha256()
    dead = 0
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        result = processor.process([read(TOPIC, partition, offset, key, value, PARTITIONS)
                                    for partition, offset, key, value
                                    in records[start:start + batch]])
        for letter in result.dead_letters:
            hasher.update(f"dead {letter.record.partition}:{letter.record.offset}\n".encode())
            dead += 1
        for clinic_id, at in sorted(result.touched.items()):
            flow = processor.flows[clinic_id]
            board = build_board(flow, flow.estimates(at), at)
            hasher.update(orjson.dumps(board, option=orjson.OPT_SORT_KEYS))
    for clinic_id in sorted(processor.flows):
        hasher.update(dump_flow_json(processor.flows[clinic_id]))
    return {"digest": hasher.hexdigest(), "records": len(records), "dead_letters": dead,
            "clinics": len(processor.flows), "seconds": round(time.perf_counter() - started, 1)}


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "digest", help="hash every board and checkpoint flow makes of simulated days")
    parser.add_argument("--clinics", type=int, default=50)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print(orjson.dumps(digest(args.clinics, args.events, seed=args.seed)).decode())
    return 0
