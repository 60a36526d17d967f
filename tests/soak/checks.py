"""What the soak asserts at its end, each as a ``Check`` (what was asserted, whether it
held, what was seen), so the report lists every one of them whether it passed or not."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.billing import views
from services.billing.cli import read_ledger, reconcile_from
from services.flow.processor import FloorBatchOutcome, FloorProcessor, build_board, floor_reader
from shared import events as ev
from shared.events_notifications import NotificationSent
from shared.settings import BillingSettings
from tests.helpers import REPO, auth, read_topic
from tests.integration.notifications_support import MailCatcher
from tests.soak.network import BILLING, Expected

NURSE = auth("dev-nurse")
MANAGER = auth("dev-manager")
ESTIMATE_FIELDS = ("position", "wait_minutes", "low", "high")  # drawn at the clock's time


@dataclass
class Check:
    asserted: str
    passed: bool
    seen: str


@dataclass
class Checks:
    items: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # numbers for the report

    def add(self, asserted: str, passed: bool, seen: str) -> None:
        self.items.append(Check(asserted, bool(passed), seen))

    def failed(self) -> list[Check]:
        return [c for c in self.items if not c.passed]


async def guarded(checks: Checks, what: str, work: Any) -> None:
    """Run one group of checks; one that cannot run is a failed assertion saying why."""
    try:
        await work
    except Exception as exc:
        checks.add(f"{what} could be checked", False, repr(exc)[:500])


def metric(text: str, name: str) -> dict[str, float]:
    """Samples of one metric in Prometheus text: label string -> value."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def by_label(samples: dict[str, float], label: str) -> dict[str, float]:
    """Sum the samples by one label's value."""
    summed: dict[str, float] = defaultdict(float)
    for labels, value in samples.items():
        match = re.search(rf'{label}="([^"]*)"', labels)
        summed[match.group(1) if match else ""] += value
    return dict(summed)


async def metrics_of(url: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"{url}/metrics")).text


# ------------------------------------------------------------------ lag


async def group_lags(bootstrap: str, prefix: str) -> dict[str, int]:
    """Every consumer group of this run: records between its committed offsets and the
    end of the topics it reads (partitions it never committed count from 0)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        groups = sorted(g[0] for g in await admin.list_consumer_groups()
                        if g[0].startswith(prefix))
        lags: dict[str, int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            topics = {tp.topic for tp in committed}
            tps = [TopicPartition(t, p) for t in topics
                   for p in consumer.partitions_for_topic(t) or ()]
            ends = await consumer.end_offsets(tps)
            lags[group] = sum(end - max(0, committed[tp].offset if tp in committed else 0)
                              for tp, end in ends.items())
        return lags
    finally:
        await consumer.stop()
        await admin.close()


async def check_lag(checks: Checks, bootstrap: str, prefix: str,
                    urls: dict[str, str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        lags = await group_lags(bootstrap, prefix)
        gauges = {name: sum(metric(await metrics_of(url),
                                   "clinicflow_consumer_lag_events").values())
                  for name, url in urls.items()}
        settled = lags and not any(lags.values()) and not any(gauges.values())
        if settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    short = {g.removeprefix(prefix): n for g, n in lags.items()}
    checks.facts["groups"] = short
    checks.add("every consumer group's committed offsets reach the end of its topics "
               "(lag 0)", bool(lags) and not any(lags.values()), f"lag by group: {short}")
    checks.add("every service's clinicflow_consumer_lag_events gauge is back to 0",
               not any(gauges.values()), f"gauges: {gauges}")


# ----------------------------------------------------------------- flow


def stable(board: dict[str, Any]) -> dict[str, Any]:
    """What a board says that does not depend on when it was drawn."""
    waiting = [{k: v for k, v in w.items() if k not in ESTIMATE_FIELDS}
               for w in board["waiting"]]
    return {"counts": board["counts"], "rooms": board["rooms"],
            "in_rooms": board["in_rooms"], "waiting": waiting}


async def check_flow(checks: Checks, bootstrap: str, floor: str, flow_url: str,
                     expected: Expected) -> None:
    records = await read_topic(bootstrap, floor, timeout=600)
    checks.facts["floor_records"] = len(records)
    sent = expected.floor_published + expected.walk_ins_via_checkin
    checks.add("every floor fact the network sent is on the floor topic (the soak's and "
               "checkin's)", len(records) == sent,
               f"{len(records)} records; {expected.floor_published} sent by the network, "
               f"{expected.walk_ins_via_checkin} walk-ins published by checkin")
    rebuilt, reader = FloorProcessor(), floor_reader(floor)
    result: FloorBatchOutcome = rebuilt.process([
        reader.read(r.topic, r.partition, r.offset, r.key, r.value)
        for r in sorted(records, key=lambda r: (r.partition, r.offset))])
    text = await metrics_of(flow_url)
    consumed = by_label(metric(text, "clinicflow_events_consumed_total"), "outcome")
    dead = sum(v for k, v in metric(text, "clinicflow_dead_letters_total").items()
               if 'service="flow"' in k)
    checks.facts["flow_consumed"] = consumed
    checks.facts["flow_dead_letters"] = dead
    checks.facts["rebuilt_dead_letters"] = Counter(d.reason.split(" ")[0]
                                                   for d in result.dead_letters)
    want = {"applied": result.applied, "duplicate": result.duplicates,
            "already_applied": 0, "dead letters": len(result.dead_letters)}
    got = {"applied": consumed.get("applied", 0), "duplicate": consumed.get("duplicate", 0),
           "already_applied": consumed.get("already_applied", 0), "dead letters": dead}
    checks.add("flow applied exactly what a rebuild from the topic applies: no event lost, "
               "none applied twice (applied, duplicate, dead-lettered counts equal)",
               {k: int(v) for k, v in got.items()} == want, f"flow {got}; rebuild {want}")
    differing: list[str] = []
    async with httpx.AsyncClient(base_url=flow_url, timeout=30) as client:
        for clinic, clinic_flow in sorted(rebuilt.flows.items()):
            at = clinic_flow.last_event_at
            assert at is not None
            want_board = stable(build_board(clinic_flow, clinic_flow.estimates(at), at))
            answer = await client.get(f"/clinics/{clinic}/board", headers=NURSE)
            if answer.status_code != 200 or stable(answer.json()) != want_board:
                differing.append(clinic)
    checks.facts["boards"] = len(rebuilt.flows)
    checks.add("every clinic's board equals the board rebuilt from the whole floor topic "
               "(counts, rooms, patients in rooms, the queue in order)",
               not differing and bool(rebuilt.flows),
               f"{len(rebuilt.flows)} boards compared; differing: {differing or 'none'}")


# -------------------------------------------------------------- billing


async def _cli_reconcile(env: dict[str, str], clinic: str, day: date) -> tuple[int, Any, str]:
    """``clinicflow billing reconcile`` itself, as a manager would run it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "billing", "reconcile", "--clinic", clinic,
        "--date", day.isoformat(), "--timeout", "300", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 600)
    report = orjson.loads(stdout) if stdout.strip() else None
    return process.returncode or 0, report, stderr.decode()[-500:]


async def _ledger_reports(settings: BillingSettings, clinic: str,
                          days: list[date]) -> list[tuple[int, Any, str]]:
    """What the CLI prints for each day, from the CLI's own functions in this process (one
    read of the ledger topic per clinic instead of a process per clinic-day)."""
    entries = await read_ledger(settings, clinic, 300)
    reports = []
    for day in days:
        report = reconcile_from(entries, clinic_id=clinic, business_date=day, settings=settings)
        reports.append((0 if report.reconciled else 1, views.reconciliation_json(report), ""))
    return reports


MONEY_KEYS = ("entries", "visits_charged", "charges_cents", "charges_voided_cents",
              "patient_share_cents", "insurance_expected_cents", "collected_cents",
              "open_balance_cents", "credit_balance_cents", "methods", "open_balances",
              "discrepancies", "reconciled")


async def check_billing(checks: Checks, billing_url: str, env: dict[str, str],
                        expected: Expected, first_day: date, last_day: date) -> None:
    """Drawer counts from what the desks took, then every clinic's every day reconciled
    by the CLI (reading the ledger topic) and by the service (its Redis projection)."""
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    clinics = sorted(expected.checkouts)
    async with httpx.AsyncClient(base_url=billing_url, timeout=60) as client:
        for clinic in clinics:
            for day in days:
                counted = {f"{m}_cents": expected.taken.get((clinic, day, m), 0)
                           for m in ("cash", "check", "card")}
                answer = await client.post(f"/clinics/{clinic}/drawer-counts", headers=BILLING,
                                           json={"business_date": day.isoformat(), **counted})
                assert answer.status_code == 201, answer.text
        settings = BillingSettings(kafka_bootstrap=env["CLINICFLOW_KAFKA_BOOTSTRAP"],
                                   topic_prefix=env["CLINICFLOW_TOPIC_PREFIX"])
        results = []
        for clinic in clinics:
            for day, from_ledger in zip(days, await _ledger_reports(settings, clinic, days),
                                        strict=True):
                served = (await client.get(f"/clinics/{clinic}/reconciliation",
                                           params={"date": day.isoformat()},
                                           headers=MANAGER)).json()
                results.append((clinic, day, from_ledger, served))
    # the command itself, for the first and the last clinic, prints the same day
    cli_differs = []
    for clinic in {clinics[0], clinics[-1]}:
        code, printed, stderr = await _cli_reconcile(env, clinic, days[-1])
        in_process = next(r for c, d, r, _ in results if c == clinic and d == days[-1])
        if code != in_process[0] or printed is None or \
                {k: printed[k] for k in MONEY_KEYS} != {k: in_process[1][k] for k in MONEY_KEYS}:
            cli_differs.append(f"{clinic}: exit {code} {stderr}")
    not_reconciled, disagree, money_off = [], [], []
    charged: dict[str, int] = defaultdict(int)
    net: dict[tuple[str, str], int] = defaultdict(int)
    open_at_end: dict[str, dict[str, int]] = {}
    for clinic, day, (code, report, stderr), served in results:
        if code != 0 or report is None or report.get("source") != "ledger topic":
            not_reconciled.append(f"{clinic} {day}: exit {code} "
                                  f"{(report or {}).get('discrepancies', stderr)}"[:300])
            continue
        if {k: report[k] for k in MONEY_KEYS} != {k: served.get(k) for k in MONEY_KEYS}:
            disagree.append(f"{clinic} {day}")
        charged[clinic] += report["charges_cents"]
        for method in report["methods"]:
            net[(clinic, method["method"])] += method["net_cents"]
        if day == days[-1]:
            open_at_end[clinic] = {b["visit_id"]: b["balance_cents"]
                                   for b in report["open_balances"]}
    for clinic in clinics:
        paid = {m: expected.paid.get((clinic, m), 0) for m in ("cash", "check", "card")}
        got = {m: net.get((clinic, m), 0) for m in ("cash", "check", "card")}
        if charged[clinic] != expected.charges[clinic] or paid != got or \
                open_at_end.get(clinic) != expected.open_balances.get(clinic, {}):
            money_off.append(f"{clinic}: charged {charged[clinic]} (want "
                             f"{expected.charges[clinic]}), net {got} (want {paid})")
    checks.facts["billing_days"] = [d.isoformat() for d in days]
    checks.facts["charged_cents"] = sum(expected.charges.values())
    checks.facts["paid_cents"] = sum(expected.paid.values())
    checks.add("the ledger topic reconciles every clinic's every day (`clinicflow billing "
               "reconcile`'s code; the command itself run for two clinics prints the same): "
               "no discrepancy, drawers match",
               not not_reconciled and not cli_differs,
               f"{len(results)} clinic-days; not reconciled: {not_reconciled or 'none'}; "
               f"command differing: {cli_differs or 'none'}")
    checks.add("billing's own report (its Redis projection) equals the ledger's, cent for "
               "cent, for every clinic-day", not disagree,
               f"differing: {disagree or 'none'}")
    checks.add("charges, payments by method and open balances equal, to the cent, what the "
               "network checked out and paid", not money_off and bool(clinics),
               f"{len(clinics)} clinics, {sum(expected.checkouts.values())} checkouts, "
               f"{sum(expected.charges.values())} cents charged, "
               f"{sum(expected.paid.values())} cents paid; off: {money_off or 'none'}")


# -------------------------------------------------------- notifications


async def check_notifications(checks: Checks, bootstrap: str, topic: str,
                              smtp: MailCatcher) -> None:
    records = await read_topic(bootstrap, topic, timeout=300)
    sent: Counter[str] = Counter()
    failed = 0
    for record in records:
        event = ev.decode(record.value)
        payload = event.payload
        if isinstance(payload, NotificationSent) and payload.channel == "email":
            sent[f"<{payload.notification_id}@clinicflow.invalid>"] += 1
        elif event.event_type == "notification.failed":
            failed += 1
    mails = Counter(m.message_id for m in smtp.mails)
    checks.facts["mails"] = sum(mails.values())
    checks.facts["notifications_failed"] = failed
    twice = [m for m, n in mails.items() if n > 1]
    checks.add("no notification sent twice: every message id reached the SMTP server once",
               bool(mails) and not twice,
               f"{sum(mails.values())} mails, {len(mails)} distinct; twice: {twice[:5] or 'none'}")
    checks.add("what the SMTP server received is exactly what notifications recorded as "
               "sent by e-mail (notification.sent events)",
               set(mails) == set(sent) and max(sent.values(), default=1) == 1,
               f"{len(sent)} recorded, {len(mails)} received; failed events: {failed}")
