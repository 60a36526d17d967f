"""``clinicflow billing``: end-of-day reconciliation from the ledger topic itself, and a
fee schedule check.

``clinicflow billing reconcile --clinic C [--date D]`` reads the whole ledger topic from
Kafka (not the Redis projection: it is the independent check of it), folds the clinic's
entries of its business day D (the clinic's own midnights, its zone from
``CLINICFLOW_CLINICS``; default: its today) with the same domain code the service uses,
and prints JSON, CSV or HTML.
Exit code 0: reconciled; 1: discrepancies; 2: could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.billing import views
from services.billing.domain.accounts import Posted
from services.billing.domain.fee_schedule import FeeScheduleError
from services.billing.domain.reconciliation import Reconciliation, business_day, reconcile
from services.billing.projection import LedgerRecord, ledger_reader, ledger_record_of
from shared.clock import clock_from_setting
from shared.errors import Rejected
from shared.kafka import aiokafka_security_kwargs, topic
from shared.settings import BillingSettings
from shared.topics import LEDGER


async def read_ledger(settings: BillingSettings, clinic_id: str,
                      timeout: float = 30.0) -> list[Posted]:
    """Every readable entry of ``clinic_id`` on the ledger topic, up to its current end
    (read as the ledger projection reads it: what it dead-letters is left out)."""
    name = topic(LEDGER, settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **aiokafka_security_kwargs(settings))
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise SystemExit(f"the ledger topic cannot be read: Kafka at "
                         f"{settings.kafka_bootstrap} is unreachable ({exc})") from None
    try:
        await consumer._client.force_metadata_update()  # learn every topic, ours included
        numbers = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(numbers)]
        if not tps:
            raise SystemExit(f"ledger topic {name} not found at {settings.kafka_bootstrap}")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        reader = ledger_reader(name)
        entries: list[Posted] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            if loop.time() > deadline:
                raise SystemExit(f"ledger topic {name}: not read to its end in {timeout} s")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    entry = ledger_record_of(reader.read(
                        record.topic, record.partition, record.offset, record.key,
                        record.value, len(tps)))
                    if isinstance(entry, LedgerRecord) and entry.clinic_id == clinic_id:
                        entries.append(entry.posted)
        return entries
    finally:
        await consumer.stop()


def reconcile_from(entries: Sequence[Posted], *, clinic_id: str, business_date: date,
                   settings: BillingSettings) -> Reconciliation:
    """The clinic's day, cut at its own midnights (its zone from ``CLINICFLOW_CLINICS``),
    from the whole ledger (every visit's balance is known exactly)."""
    timezone = settings.clinic_directory().zone(clinic_id).key
    starts, ends = business_day(timezone, business_date)
    return reconcile(clinic_id=clinic_id, business_date=business_date, timezone=timezone,
                     starts_at=starts, ends_at=ends, entries=entries, source="ledger topic",
                     carried={p.visit_id for p in entries if p.visit_id})


def _reconcile(args: argparse.Namespace) -> int:
    try:
        settings = BillingSettings()
    except ValueError as exc:  # pydantic's ValidationError: which setting, and why
        print(f"billing settings: {exc}", file=sys.stderr)
        return 2
    directory = settings.clinic_directory()
    if directory.clinics and args.clinic not in directory:
        print(f"no clinic {args.clinic!r} in CLINICFLOW_CLINICS (it lists "
              f"{', '.join(sorted(directory.clinics))})", file=sys.stderr)
        return 2
    if not directory.clinics:  # as the services without it: every clinic on one zone
        print(f"note: CLINICFLOW_CLINICS is not set here: clinic {args.clinic}'s day is cut at "
              f"{directory.default_zone.key} midnights (CLINICFLOW_DEFAULT_TIMEZONE); give "
              "this command the CLINICFLOW_CLINICS the services have (make up's: "
              "clinicflow up --print-clinics)", file=sys.stderr)
    clinic = directory[args.clinic]
    if args.date is None:
        # the services' clock: a warped one too (CLINICFLOW_CLOCK_WARP, a played day)
        business_date = clinic.day_of(clock_from_setting(settings.clock_warp).now())
    else:
        try:
            business_date = date.fromisoformat(args.date)
        except ValueError:
            print(f"--date {args.date!r} is not a date like 2026-03-02", file=sys.stderr)
            return 2
    try:  # a date whose day cannot be computed is a usage error, before Kafka is read
        business_day(clinic.zone.key, business_date)
    except Rejected as exc:
        print(f"--date: {exc.detail}", file=sys.stderr)
        return 2
    try:
        entries = asyncio.run(read_ledger(settings, args.clinic, args.timeout))
    except SystemExit as exc:
        print(str(exc), file=sys.stderr)
        return 2
    report = reconcile_from(entries, clinic_id=args.clinic, business_date=business_date,
                            settings=settings)
    if args.format == "csv":
        sys.stdout.write(views.reconciliation_csv(report))
    elif args.format == "html":
        sys.stdout.write(views.reconciliation_html(report, clinic.display_name))
    else:
        sys.stdout.write(orjson.dumps(views.reconciliation_json(report, clinic.display_name),
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if report.reconciled else 1


def _check_fees(args: argparse.Namespace) -> int:
    from services.billing.fees import load_fee_schedule

    try:
        schedule = load_fee_schedule(args.path)
    except FeeScheduleError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    codes = sum(len(fees) for fees in schedule.fees.values())
    print(f"{args.path}: {codes} fees for {len(schedule.fees)} clinic column(s), valid")
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("billing", help="billing: reconcile a day, check fees")
    commands = parser.add_subparsers(dest="billing_command", metavar="COMMAND", required=True)
    reconcile = commands.add_parser(
        "reconcile", help="end-of-day reconciliation of a clinic from the ledger topic")
    reconcile.add_argument("--clinic", required=True)
    reconcile.add_argument("--date", help="the clinic's business day, YYYY-MM-DD (default: "
                           "its today, in its own time zone)")
    reconcile.add_argument("--format", choices=("json", "csv", "html"), default="json")
    reconcile.add_argument("--timeout", type=float, default=30.0,
                           help="seconds to read the ledger to its end")
    reconcile.set_defaults(func=_reconcile)
    fees = commands.add_parser("fees", help="check a fee schedule CSV")
    fees.add_argument("path")
    fees.set_defaults(func=_check_fees)
