"""``clinicflow replay LOG.jsonl``: backtest the live estimator on a visit log.

The contract is docs/replay-format.md. Each line becomes the same floor
fact the live service applies (``ClinicFlow.apply``) and the same estimator
produces the estimates, so a replay scores exactly what the screens show.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import IO, Any

import orjson

from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.memory import RememberingFlow
from shared.floor.model import NotApplicable

REQUIRED: dict[str, tuple[str, ...]] = {
    "arrival": ("visit_id", "provider_id", "visit_type", "scheduled_at", "priority"),
    "room_ready": ("room_id",),
    # beyond the format's seven: a room taken out of service (``clinicflow simulate
    # --days`` takes one out for a week), as the nurse station records it
    "room_out_of_service": ("room_id",),
    "roomed": ("visit_id", "room_id"),
    "provider_in": ("visit_id",),
    "delay": ("provider_id", "minutes", "reason"),
    "checkout": ("visit_id",),
    "cancel": ("visit_id", "reason"),
}
NULLABLE = {"provider_id", "scheduled_at", "reason"}


class BadRecord(ValueError):
    """A log line that does not follow the replay format."""


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise BadRecord(f"{name} must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRecord(f"{name} is not ISO-8601: {value!r}") from None
    if parsed.tzinfo is None:
        raise BadRecord(f"{name} has no UTC offset: {value!r}")
    return parsed


def _text(record: dict[str, Any], name: str) -> str:
    value = record[name]
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        raise BadRecord(f"{name} must be a non-empty string")
    return str(value)


def to_fact(record: dict[str, Any], ticket_for: Callable[[str, str], str]) -> ev.Payload:
    """Turn one replay-format record into the floor fact the live service applies.

    Identifiers are taken as they come (not held to the live service's id
    pattern): a clinic's export names things its own way.
    """
    kind = record["type"]
    missing = [name for name in REQUIRED[kind] if name not in record
               or (record[name] is None and name not in NULLABLE)]
    if missing:
        raise BadRecord(f"{kind} is missing {', '.join(missing)}")
    match kind:
        case "arrival":
            priority = record["priority"]
            if priority not in ("routine", "urgent"):
                raise BadRecord(f"priority must be routine or urgent, not {priority!r}")
            scheduled = record["scheduled_at"]
            visit_id = _text(record, "visit_id")
            return ev.PatientArrived.model_construct(
                visit_id=visit_id,
                ticket_code=ticket_for(str(record["clinic_id"]), visit_id),
                patient_ref=None,
                appointment_id=None,
                provider_id=None if record["provider_id"] is None else _text(record, "provider_id"),
                visit_type=_text(record, "visit_type"),
                scheduled_at=None if scheduled is None else _time(scheduled, "scheduled_at"),
                priority=priority,
                late=False,
            )
        case "room_ready":
            return ev.RoomReady.model_construct(room_id=_text(record, "room_id"))
        case "room_out_of_service":
            return ev.RoomOutOfService.model_construct(room_id=_text(record, "room_id"),
                                                       reason=str(record.get("reason") or ""))
        case "roomed":
            return ev.PatientRoomed.model_construct(visit_id=_text(record, "visit_id"),
                                                    room_id=_text(record, "room_id"))
        case "provider_in":
            provider = record.get("provider_id")
            return ev.ProviderIn.model_construct(visit_id=_text(record, "visit_id"),
                                                 provider_id=None if provider is None
                                                 else str(provider))
        case "delay":
            minutes = record["minutes"]
            if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 0:
                raise BadRecord("minutes must be a non-negative integer")
            provider = None if record["provider_id"] is None else _text(record, "provider_id")
            if minutes == 0:
                return ev.DelayCleared.model_construct(provider_id=provider)
            return ev.DelayAnnounced.model_construct(provider_id=provider, minutes=minutes,
                                                     reason=str(record.get("reason") or ""))
        case "checkout":
            return ev.PatientCheckedOut.model_construct(visit_id=_text(record, "visit_id"),
                                                        cpt_codes=[], icd10_codes=[])
        case "cancel":
            reason = str(record.get("reason") or "cancelled").lower()
            left = any(word in reason for word in ("left", "lwbs", "walk"))
            return ev.ArrivalCancelled.model_construct(
                visit_id=_text(record, "visit_id"),
                reason="left_without_being_seen" if left else "cancelled",
            )
    raise BadRecord(f"unknown type {kind!r}")


def replay_events(
    records: Iterable[dict[str, Any]],
    on_error: Callable[[int, str], None] | None = None,
    remember: bool = True,
) -> Iterator[dict[str, Any]]:
    """Replay parsed records (in time order); yield estimate dicts as the format says.

    An estimate line is written for a waiting visit when it is first made and
    whenever it differs from the previous one aged to now (an unchanged
    estimate ages with the clock by itself, so it need not be repeated).

    Each clinic is a ``RememberingFlow``: a log of several days is estimated
    day by day with what the earlier days taught (``shared.floor.memory``);
    ``remember=False`` replays with a plain ``ClinicFlow`` instead.
    """
    flows: dict[str, ClinicFlow] = {}
    make_flow = RememberingFlow if remember else ClinicFlow
    tickets: dict[str, int] = {}
    last: dict[str, tuple[datetime, float, float, float]] = {}

    def ticket_for(clinic_id: str, _visit_id: str) -> str:
        tickets[clinic_id] = tickets.get(clinic_id, 0) + 1
        return f"A{tickets[clinic_id] % 10000}"

    for number, record in enumerate(records, start=1):
        if isinstance(record, dict) and "__line__" in record:
            number = record.pop("__line__")
        try:
            if not isinstance(record, dict):
                raise BadRecord("line is not a JSON object")
            for name in ("ts", "type", "clinic_id"):
                if name not in record or record[name] is None:
                    raise BadRecord(f"missing {name}")
            if record["type"] not in REQUIRED:
                raise BadRecord(f"unknown type {record['type']!r}")
            at = _time(record["ts"], "ts")
            clinic_id = _text(record, "clinic_id")
            fact = to_fact(record, ticket_for)
            flow = flows.get(clinic_id)
            if flow is None:
                flow = flows[clinic_id] = make_flow(clinic_id)
            change = flow.apply(fact, at)
        except (BadRecord, NotApplicable) as exc:
            if on_error is not None:
                on_error(number, str(exc))
            continue
        if change.duplicate and not change.queue_changed:
            continue
        for estimate in flow.estimates(at):
            previous = last.get(estimate.visit_id)
            if previous is not None:
                made_at, wait, low, high = previous
                aged = (at - made_at).total_seconds() / 60.0
                if (abs(max(0.0, wait - aged) - estimate.wait_minutes) < 0.05
                        and abs(max(0.0, low - aged) - estimate.low) < 0.05
                        and abs(max(0.0, high - aged) - estimate.high) < 0.05):
                    continue
            last[estimate.visit_id] = (at, estimate.wait_minutes, estimate.low, estimate.high)
            yield {
                "ts": record["ts"],
                "visit_id": estimate.visit_id,
                "wait_minutes": estimate.wait_minutes,
                "low": estimate.low,
                "high": estimate.high,
            }
        for visit_id in change.visit_ids:
            if visit_id not in flow.clinic.visits:
                last.pop(visit_id, None)


def read_log(stream: IO[bytes], on_error: Callable[[int, str], None]) -> Iterator[dict[str, Any]]:
    """Parse JSON Lines; a line that is not JSON is reported and replaced by a marker."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            yield {"__skip__": True}
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            on_error(number, f"not valid JSON: {exc}")
            yield {"__skip__": True}


def run(args: argparse.Namespace) -> int:
    errors = 0

    def report(number: int, reason: str) -> None:
        nonlocal errors
        errors += 1
        print(f"{args.log}:{number}: {reason}; line skipped", file=sys.stderr)

    try:
        stream: IO[bytes] = sys.stdin.buffer if args.log == "-" else open(args.log, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"clinicflow replay: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    with stream:
        parsed = read_log(stream, report)
        # lines skipped as non-JSON keep their numbering in the replay's own reports
        numbered = (r for r in parsed)
        for estimate in replay_events(_drop_skips(numbered, report), on_error=report,
                                      remember=not args.no_memory):
            out.write(orjson.dumps(estimate) + b"\n")
    out.flush()
    return 0


def _drop_skips(
    records: Iterator[dict[str, Any]], report: Callable[[int, str], None]
) -> Iterator[dict[str, Any]]:
    """Feed records to the replay, reporting its per-line errors with the file's numbers."""
    for number, record in enumerate(records, start=1):
        if record.get("__skip__") if isinstance(record, dict) else False:
            continue
        errors: list[str] = []
        _validate_line(record, errors)
        if errors:
            report(number, errors[0])
            continue
        record["__line__"] = number
        yield record


def _validate_line(record: Any, errors: list[str]) -> None:
    """The per-line checks of the format, so errors carry the file's line number."""
    try:
        if not isinstance(record, dict):
            raise BadRecord("line is not a JSON object")
        for name in ("ts", "type", "clinic_id"):
            if name not in record or record[name] is None:
                raise BadRecord(f"missing {name}")
        if record["type"] not in REQUIRED:
            raise BadRecord(f"unknown type {record['type']!r}")
        _time(record["ts"], "ts")
        to_fact(record, lambda _c, _v: "A1")
    except BadRecord as exc:
        errors.append(str(exc))


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay", help="replay a visit log through the wait estimator (JSON Lines out)"
    )
    parser.add_argument("log", help="visit log, JSON Lines in time order ('-' for stdin)")
    parser.add_argument("--no-memory", action="store_true",
                        help="do not carry what a clinic's earlier days taught into its "
                        "later ones (each day starts from the estimator's priors... and "
                        "from whatever the previous day left, as a plain ClinicFlow)")
    parser.set_defaults(func=run)
