"""Two instances of a service in one consumer group, the first killed with -9 in the middle
of a stream: its partitions move to the second, and what the service keeps stays right.
Check-in's projection, billing's floor consumer (with its ledger projection) and the
notifier (flow's own such test is in test_flow_live.py).

Each test runs both instances as real processes (``clinicflow run``) on the session's
Kafka and Redis, with twelve clinics, one on each floor partition, so each instance holds
some of them whatever the split. The first instance starts alone (its member id in each
group is noted), then the second, until each group is Stable with both. The stream goes
out in two halves, the clinics' events interleaved: once the first half is published and
the first instance has applied some of it, the second half starts, and a quarter of the
way through it the first instance is killed. The test then waits until the survivor has
applied every record (its stored offsets at each partition's end), checks that each
floor partition the dead instance held was applied further after the kill (so it moved),
and asserts what the service must show.

Each service's session timeout is 2 s here (``CLINICFLOW_<SERVICE>_SESSION_TIMEOUT_MS``,
10 s by default): the group notices the dead member as it would in production, by its
session expiring, only sooner."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from redis.asyncio import Redis

from services.checkin.domain import VisitView
from services.checkin.projection import ProjectionState, checkin_reader, plan_visits
from services.checkin.store import CheckinStore
from shared import events as ev
from shared.admin import ensure_topics
from shared.projection import Offsets, Partition, partition_for
from shared.settings import CheckinSettings
from shared.topics import ESTIMATES, FLOOR, LEDGER, TopicSpec, topic_name
from tests.helpers import ServiceProcess, eventually, producer, read_topic
from tests.integration.flow_support import service_env
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    estimate,
    has_read_everything,
    record_contact,
)
from tests.integration.test_billing_support import MANAGER, billing_env, ledger, of_type
from tests.integration.test_checkin_support import midday_zone

__all__ = ["billing_env"]  # the billing tests' settings fixture, used here

# what the example fee schedule charges every clinic but north (none of ours is north)
FEES = {"99212": 7500, "99213": 12500, "99214": 18500, "36415": 1200, "87880": 2775}

ToPublish = tuple[TopicSpec, ev.Event]  # an event and the topic it goes to


def clinics_on_every_partition() -> tuple[str, ...]:
    """One clinic id per floor partition (Kafka's murmur2 of the key): both instances hold
    clinics, whichever partitions each gets."""
    found: dict[int, str] = {}
    number = 0
    while len(found) < FLOOR.partitions:
        found.setdefault(partition_for(f"clinic-{number}".encode(), FLOOR.partitions),
                         f"clinic-{number}")
        number += 1
    return tuple(found[p] for p in sorted(found))


CLINICS = clinics_on_every_partition()


# ------------------------------------------------------------------ the group


@contextlib.asynccontextmanager
async def kafka_admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def stable_members(admin: AIOKafkaAdminClient, group: str,
                         count: int) -> dict[str, list[Partition]]:
    """Once ``group`` is Stable with ``count`` members: each member's id and the
    partitions it holds."""
    async def stable() -> dict[str, list[Partition]] | None:
        for response in await admin.describe_consumer_groups([group]):
            # each: (error, id, state, protocol type, protocol, members)
            for found in response.groups:
                if found[2] == "Stable" and len(found[5]) == count:
                    # each member: (id, client id, host, metadata, assignment)
                    return {member[0]: [
                        (tp.topic, tp.partition) for tp in
                        ConsumerProtocolMemberAssignment.decode(member[4]).partitions()]
                        for member in found[5]}
        return None

    members: dict[str, list[Partition]] = await eventually(stable, timeout=60)
    return members


@dataclass
class Instances:
    """Two instances of a service in one consumer group (the first group named is the
    consumer's under test); the first is the one killed."""

    first: ServiceProcess
    second: ServiceProcess
    groups: tuple[str, ...]
    bootstrap: str
    first_members: dict[str, str]  # group -> the first instance's member id
    first_partitions: list[Partition] = field(default_factory=list)

    async def joined(self) -> None:
        """Until the second instance is ready and each group is Stable with both; notes
        the partitions the first holds of the consumer's topics."""
        await self.second.wait_ready()
        async with kafka_admin(self.bootstrap) as admin:
            for group in self.groups:
                both = await stable_members(admin, group, 2)
                member = self.first_members[group]
                assert member in both, f"{group}: the first instance joined again"
                if group == self.groups[0]:
                    self.first_partitions = both[member]
        assert self.first_partitions, "the first instance holds nothing of the consumer's"


@contextlib.asynccontextmanager
async def two_instances(service: str, env: dict[str, str], groups: tuple[str, ...],
                        bootstrap: str, logs: Path) -> AsyncIterator[Instances]:
    """The first instance started and alone in each of ``groups`` (its member id in each
    noted), then the second started (``Instances.joined`` waits for it); both stopped
    after."""
    first = ServiceProcess(service, env, logs / f"{service}-1.log")
    second = ServiceProcess(service, env, logs / f"{service}-2.log")
    try:
        first.start()
        await first.wait_ready()
        async with kafka_admin(bootstrap) as admin:
            alone = {group: next(iter(await stable_members(admin, group, 1)))
                     for group in groups}
        second.start()
        yield Instances(first, second, groups, bootstrap, alone)
    finally:
        first.stop()
        second.stop()


# ------------------------------------------------------------------ the stream


async def publish(bootstrap: str, prefix: str, stream: list[ToPublish],
                  reached: asyncio.Event | None = None, after: int = 1) -> None:
    """Each event on its topic keyed by its clinic, in order, each acknowledged;
    ``reached`` is set once ``after`` of them are."""
    async with producer(bootstrap) as client:
        for number, (spec, event) in enumerate(stream, 1):
            await client.send_and_wait(topic_name(spec, prefix), ev.encode(event),
                                       key=event.clinic_id.encode())
            if reached is not None and number >= after:
                reached.set()


def last(offset: int | None) -> int:
    """A stored offset, -1 for none."""
    return -1 if offset is None else offset


async def kill_the_first_mid_stream(instances: Instances, env: dict[str, Any],
                                    stream: list[ToPublish], offsets: Offsets
                                    ) -> dict[Partition, int | None]:
    """Once both instances are in the group, publish the first half of ``stream``; once
    the first instance has applied some of it, publish the second half and kill the first
    instance with -9 a quarter of the way through. Returns what it had stored of its
    floor partitions when it died."""
    await instances.joined()
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    floor = topic_name(FLOOR, prefix)
    held = [tp for tp in instances.first_partitions if tp[0] == floor]
    before = await offsets.read(held)
    half = len(stream) // 2
    await publish(bootstrap, prefix, stream[:half])

    async def first_applying() -> bool:
        now = await offsets.read(held)
        return any(last(now[tp]) > last(before[tp]) for tp in held)

    await eventually(first_applying, timeout=30)
    quarter = asyncio.Event()
    rest = asyncio.create_task(publish(bootstrap, prefix, stream[half:], quarter,
                                       after=(len(stream) - half) // 4))
    waiting = asyncio.create_task(quarter.wait())
    await asyncio.wait([rest, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    assert not rest.done(), "the second half was all published before the kill"
    instances.first.kill()
    at_kill = await offsets.read(held)
    await rest
    return at_kill


async def read_to_the_end(offsets: Offsets, env: dict[str, Any],
                          topics: tuple[TopicSpec, ...]) -> None:
    """Until the consumer whose ``offsets`` these are has applied every record of
    ``topics`` published so far."""
    # the helper asks a projection for its ``positions``: the stored offsets are those
    await has_read_everything(SimpleNamespace(positions=offsets.read), env["kafka_bootstrap"],
                              env["topic_prefix"], topics, timeout=60)


async def moved_on(offsets: Offsets, at_kill: dict[Partition, int | None]) -> None:
    """Every floor partition the dead instance held was applied further by the survivor
    (the second half had records for each of them)."""
    now = await offsets.read(list(at_kill))
    behind = {tp: (at_kill[tp], now[tp]) for tp in at_kill
              if last(now[tp]) <= last(at_kill[tp])}
    assert not behind, f"partitions not applied past the kill (at kill, now): {behind}"


def interleaved(per_clinic: dict[str, list[ToPublish]]) -> list[ToPublish]:
    """The clinics' streams merged round-robin (each clinic's own order kept), so both
    halves of the merged stream have records for every clinic."""
    merged: list[ToPublish] = []
    longest = max(len(events) for events in per_clinic.values())
    for n in range(longest):
        merged += [events[n] for events in per_clinic.values() if n < len(events)]
    return merged


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(url)
    try:
        yield redis
    finally:
        await redis.aclose()


# ------------------------------------------------------------------ check-in


def checkin_day(clinic: str, at: datetime) -> list[ToPublish]:
    """Nine visits of a clinic: three waiting with flow's estimates (the first made at
    the arrival's instant, then two more), three roomed, three that left (cancelled,
    checked out). A visit's floor facts and its estimates never depend on which topic
    is read first: what checkin keeps equals a rebuild whatever the interleaving."""
    events: list[ToPublish] = []
    for n in range(9):
        visit, ticket = f"{clinic}-v{n}", f"A-{n + 1}"
        events.append((FLOOR, ev.make_event(
            ev.PatientArrived(visit_id=visit, ticket_code=ticket, provider_id=f"dr-{n % 2}",
                              visit_type="follow_up",
                              appointment_id=f"appt-{n}" if n % 2 else None),
            clinic_id=clinic, source="checkin", occurred_at=at, correlation_id=visit)))
    for minute in range(3):
        for n in range(3):
            visit = f"{clinic}-v{n}"
            events.append((ESTIMATES, ev.make_event(
                ev.WaitEstimated(visit_id=visit, ticket_code=f"A-{n + 1}",
                                 provider_id=f"dr-{n % 2}", position=n + 1,
                                 wait_minutes=10.0 * (n + 1) + minute, low=5.0 * n,
                                 high=20.0 * (n + 1) + minute),
                clinic_id=clinic, source="flow", occurred_at=at + timedelta(minutes=minute),
                correlation_id=visit)))
    ends: list[ev.Payload] = [
        ev.PatientRoomed(visit_id=f"{clinic}-v3", room_id="r1"),
        ev.PatientRoomed(visit_id=f"{clinic}-v4", room_id="r2"),
        ev.PatientRoomed(visit_id=f"{clinic}-v5", room_id="r3"),
        ev.ArrivalCancelled(visit_id=f"{clinic}-v6", reason="left_without_being_seen"),
        ev.ArrivalCancelled(visit_id=f"{clinic}-v7", reason="entered_in_error"),
        ev.PatientCheckedOut(visit_id=f"{clinic}-v8"),
    ]
    events += [(FLOOR, ev.make_event(end, clinic_id=clinic, source="flow",
                                     occurred_at=at + timedelta(minutes=5 + n)))
               for n, end in enumerate(ends)]
    return events


async def checkin_rebuilt(env: dict[str, Any], zone: str) -> dict[tuple[str, str], VisitView]:
    """Every visit as checkin's pure plan builds it from both topics read whole."""
    prefix = env["topic_prefix"]
    floor, estimates = topic_name(FLOOR, prefix), topic_name(ESTIMATES, prefix)
    reader = checkin_reader(floor, estimates)
    records = []
    for spec, name in ((FLOOR, floor), (ESTIMATES, estimates)):
        for record in sorted(await read_topic(env["kafka_bootstrap"], name),
                             key=lambda r: (r.partition, r.offset)):
            records.append(reader.read(name, record.partition, record.offset, record.key,
                                       record.value, spec.partitions))
    directory = CheckinSettings(checkin_timezone=zone).clinic_directory()
    planned = plan_visits(records, ProjectionState(), directory.zone)
    return dict(planned.changes.visits)


@pytest.mark.reliability(
    "two check-in instances in one consumer group, one killed with -9 mid-stream",
    "its partitions move to the other; every visit equals a rebuild from the topics",
)
async def test_checkin_s_visits_equal_a_rebuild_after_an_instance_is_killed_mid_stream(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, tmp_path: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    zone = midday_zone()  # the clinics' today holds every event, whenever this runs
    env: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url,
        "topic_prefix": topic_prefix, "redis_prefix": topic_prefix.rstrip("."),
        "checkin_group_id": f"{topic_prefix}checkin", "checkin_timezone": zone,
        "checkin_no_show_check_seconds": 0,  # no sweep publishing no-shows in between
        "checkin_session_timeout_ms": 2000,
    }
    at = datetime.now(UTC) - timedelta(minutes=10)
    stream = interleaved({clinic: checkin_day(clinic, at) for clinic in CLINICS})
    async with redis_client(redis_url) as redis, two_instances(
            "checkin", service_env(env), (env["checkin_group_id"],), kafka_bootstrap,
            tmp_path) as instances:
        offsets = Offsets(redis, env["redis_prefix"], "checkin")
        at_kill = await kill_the_first_mid_stream(instances, env, stream, offsets)
        await read_to_the_end(offsets, env, (FLOOR, ESTIMATES))
        await moved_on(offsets, at_kill)
        expected = await checkin_rebuilt(env, zone)
        assert len(expected) == len(CLINICS) * 9
        store = CheckinStore(redis, env["redis_prefix"])
        kept = {ref: await store.visit(*ref) for ref in expected}
        wrong = {ref: (kept[ref], want) for ref, want in expected.items() if kept[ref] != want}
        assert not wrong, f"{len(wrong)} visits differ from the rebuild, e.g. " \
            f"{next(iter(wrong.items()))}"
        statuses = Counter(view.status for view in kept.values() if view is not None)
        assert statuses == {"waiting": 36, "roomed": 36, "cancelled": 24, "checked_out": 12}
        # each appointment arrived as its visit, once; the one entered in error is free
        marks = {(clinic, n): await redis.get(store._arrived(clinic, f"appt-{n}"))
                 for clinic in CLINICS for n in (1, 3, 5, 7)}
        assert marks == {(clinic, n): None if n == 7 else f"{clinic}-v{n}".encode()
                         for clinic, n in marks}


# ------------------------------------------------------------------ billing


def billing_day(clinic: str, at: datetime) -> tuple[list[ToPublish], dict[str, int]]:
    """Four patients of a clinic check in and are checked out by another client (an
    EHR) with their services on the floor event, which billing prices; and what each
    visit must be charged."""
    events: list[ToPublish] = []
    charges: dict[str, int] = {}
    codes = sorted(FEES)
    for n in range(4):
        visit = f"{clinic}-v{n}"
        cpt = [codes[n % len(codes)], codes[(n + 2) % len(codes)]]
        charges[visit] = sum(FEES[c] for c in cpt)
        events += [
            (FLOOR, ev.make_event(
                ev.PatientArrived(visit_id=visit, ticket_code=f"A-{n + 1}",
                                  patient_ref=f"p-{clinic}-{n}", provider_id="dr-lee",
                                  visit_type="follow_up"),
                clinic_id=clinic, source="checkin", occurred_at=at, correlation_id=visit)),
            (FLOOR, ev.make_event(
                ev.PatientCheckedOut(visit_id=visit, cpt_codes=cpt),
                clinic_id=clinic, source="ehr", occurred_at=at + timedelta(minutes=n + 1),
                correlation_id=visit)),
        ]
    return events, charges


@pytest.mark.reliability(
    "two billing instances in one consumer group, one killed with -9 mid-stream of checkouts",
    "its partitions move to the other; each visit charged once, the day reconciles",
)
async def test_billing_charges_each_visit_once_after_an_instance_is_killed_mid_stream(
    billing_env: dict[str, Any], tmp_path: Path,
) -> None:
    env = {**billing_env, "default_timezone": midday_zone(),  # today holds every entry
           "billing_session_timeout_ms": 2000}
    at = datetime.now(UTC) - timedelta(minutes=30)
    days = {clinic: billing_day(clinic, at) for clinic in CLINICS}
    stream = interleaved({clinic: events for clinic, (events, _) in days.items()})
    groups = (env["billing_group_id"], f"{env['billing_group_id']}-ledger")
    async with redis_client(env["redis_url"]) as redis, two_instances(
            "billing", service_env(env), groups, env["kafka_bootstrap"], tmp_path
    ) as instances:
        offsets = Offsets(redis, env["redis_prefix"], "billing.floor")
        at_kill = await kill_the_first_mid_stream(instances, env, stream, offsets)
        await read_to_the_end(offsets, env, (FLOOR,))
        await moved_on(offsets, at_kill)
        # every entry the checkouts posted is in the projection the reports read
        await read_to_the_end(Offsets(redis, env["redis_prefix"], "billing.ledger"),
                              env, (LEDGER,))
        charges = {(clinic, visit): cents for clinic, (_, of_day) in days.items()
                   for visit, cents in of_day.items()}
        entries = await ledger(env)
        for kind in ("charge.posted", "patient_share.posted"):
            posted: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)  # id -> cents
            for event in of_type(entries, kind):
                payload: Any = event.payload
                amounts = posted[(event.clinic_id, payload.visit_id)]
                # a copy of an entry (posted again after a redelivery) agrees about money
                assert amounts.setdefault(event.envelope.event_id, payload.amount_cents) \
                    == payload.amount_cents, f"{kind} {event.envelope.event_id} conflicts"
            # one entry id a visit (another would be a second charge), at the visit's fees;
            # with no coverage recorded the patient's share is all of it
            assert {ref: list(amounts.values()) for ref, amounts in posted.items()} == {
                ref: [cents] for ref, cents in charges.items()}, f"{kind}: twice or lost"
        assert of_type(entries, "entry.voided") == []
        today = datetime.now(UTC).astimezone(ZoneInfo(env["default_timezone"])).date()
        async with httpx.AsyncClient(base_url=instances.second.url) as client:
            for clinic, (_, of_day) in days.items():
                answer = await client.get(f"/clinics/{clinic}/reconciliation",
                                          params={"date": today.isoformat()}, headers=MANAGER)
                assert answer.status_code == 200, answer.text
                report = answer.json()
                total = sum(of_day.values())
                assert (report["visits_charged"], report["charges_cents"],
                        report["patient_share_cents"], report["open_balance_cents"]) == (
                    len(of_day), total, total, total), clinic
                # nothing paid yet: each visit owes what it was charged
                assert {b["visit_id"]: b["balance_cents"] for b in report["open_balances"]} \
                    == of_day, clinic


# ------------------------------------------------------------------ notifications


def address(visit: str) -> str:
    return f"{visit}@patients.example.org"


@pytest.mark.reliability(
    "two notifications instances in one consumer group, one killed with -9 mid-stream",
    "its partitions move to the other; every due message decided once, none sent twice",
)
async def test_the_notifier_sends_nothing_twice_after_an_instance_is_killed_mid_stream(
    notifications_env: dict[str, Any], smtp_server: MailCatcher, tmp_path: Path,
) -> None:
    concurrency = 2
    env = {**notifications_env, "notifications_session_timeout_ms": 2000,
           "notifications_send_concurrency": concurrency}
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    now = datetime.now(UTC)
    # six patients a clinic: the even ones wait outside and are called back ("come back
    # now", flow's estimate reaching the lead time); the odd ones are checked out and
    # asked for feedback
    visits = {clinic: [f"{clinic}-v{n}" for n in range(6)] for clinic in CLINICS}
    expected = {(clinic, visit): "come_back_now" if n % 2 == 0 else "feedback_request"
                for clinic, ids in visits.items() for n, visit in enumerate(ids)}
    stream = interleaved({clinic: [
        (ESTIMATES, estimate(visit, f"A-{n + 1}", "dr-lee", 8, now, position=1,
                             clinic=clinic)) if n % 2 == 0 else
        (FLOOR, ev.make_event(ev.PatientCheckedOut(visit_id=visit), clinic_id=clinic,
                              source="billing", occurred_at=now, correlation_id=visit))
        for n, visit in enumerate(ids)] for clinic, ids in visits.items()})
    async with redis_client(env["redis_url"]) as redis, two_instances(
            "notifications", service_env(env), (env["notifications_group_id"],), bootstrap,
            tmp_path) as instances:
        # the patients arrive and give their contacts while the second instance joins
        await publish(bootstrap, prefix, interleaved({clinic: [
            (FLOOR, arrival(visit, f"A-{n + 1}", "dr-lee", now, clinic))
            for n, visit in enumerate(ids)] for clinic, ids in visits.items()}))
        async with httpx.AsyncClient(base_url=instances.first.url, timeout=30) as desk:
            await asyncio.gather(*(
                record_contact(desk, visit, "email", address(visit), clinic=clinic,
                               wait_anywhere=n % 2 == 0)
                for clinic, ids in visits.items() for n, visit in enumerate(ids)))
        async with httpx.AsyncClient(base_url=instances.second.url, timeout=30) as second:
            offsets = Offsets(redis, env["redis_prefix"], "notifications")
            at_kill = await kill_the_first_mid_stream(instances, env, stream, offsets)
            await read_to_the_end(offsets, env, (FLOOR, ESTIMATES))
            await moved_on(offsets, at_kill)

            async def all_settled() -> dict[str, list[dict[str, Any]]] | None:
                listed = {}
                for clinic in CLINICS:  # what the front desk lists (500: more than a clinic's)
                    answer = await second.get(f"/clinics/{clinic}/notifications",
                                              params={"limit": 500}, headers=FRONT_DESK)
                    listed[clinic] = answer.json()["notifications"]
                done = all(n["status"] in ("sent", "unconfirmed")
                           for records in listed.values() for n in records)
                return listed if done else None

            listed = await eventually(all_settled, timeout=30)
    decided = Counter((clinic, n["visit_id"], n["kind"])
                      for clinic, records in listed.items() for n in records)
    assert decided == Counter((clinic, visit, kind) for (clinic, visit), kind in
                              expected.items()), "a message decided twice, or not at all"
    received = Counter(mail.message_id for mail in smtp_server.mails)
    assert not [mail for mail, count in received.items() if count > 1], "sent twice"
    assert {to for mail in smtp_server.mails for to in mail.to} <= {
        address(visit) for _, visit in expected}
    status = {n["notification_id"]: n["status"] for records in listed.values() for n in records}
    sent = {f"<{nid}@clinicflow.invalid>" for nid, state in status.items() if state == "sent"}
    assert sent <= set(received), "recorded as sent, never reached the mail server"
    assert set(received) <= {f"<{nid}@clinicflow.invalid>" for nid in status}, \
        "a message sent that no record holds"
    # unconfirmed: the dead instance had handed the message to the mail server (at most as
    # many as it sends at once); never sent again, and listed so for the front desk
    assert len(status) - len(sent) <= concurrency
