"""Flow's HTTP API: boards, the live stream, and staff floor commands.

Reads come from the Redis board (any instance can serve any clinic). Commands
are checked against the current board, then published as floor events; the
consumer applies them like any other fact. Every command honours an
``Idempotency-Key`` header.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, tzinfo
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from services.flow import metrics as m
from services.flow.commands import UNDO, Claim, FloorClaims, refusal, room_claim
from services.flow.store import FlowStore
from shared import events as ev
from shared.auth import Principal, require_role
from shared.clinics import ClinicDirectory
from shared.directory import NO_NAMES, ImportedNames
from shared.errors import Conflict, NotFound, Refusal
from shared.idempotency import IdempotencyStore, fingerprint
from shared.logging import get_logger
from shared.metrics import EVENTS_PUBLISHED
from shared.refusals import REFUSALS
from shared.service import ServiceRuntime
from shared.sse import SseHub
from shared.visit_end import VisitEnds

log = get_logger("clinicflow.flow.api")

ClinicId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                               examples=["north"])]
VisitId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                              examples=["v-20260302-017"])]
RoomId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", examples=["room-4"])]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]

read_board = require_role("screen", "nurse", "front_desk", "manager")
floor_staff = require_role("nurse", "manager")
delay_staff = require_role("nurse", "front_desk", "manager")

SCREEN_WAITING_FIELDS = ("ticket_code", "provider_id", "position", "wait_minutes", "low", "high")
# how long the waiting room shows a ticket as called ("NOW CALLING"): from its rooming, by
# the board's as_of (the events' and the board refresh's clock, never a browser's)
CALLING_MINUTES = 3


class Accepted(BaseModel):
    """A floor command was accepted and published."""

    event_id: str = Field(examples=["5f0c7f3b9d2e4c0f8f1e2a3b4c5d6e7f"])
    event_type: str = Field(examples=["patient.roomed"])
    replayed: bool = Field(False, description="true when answered from an earlier request "
                           "with the same Idempotency-Key")


class RoomPatient(BaseModel):
    room_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", examples=["room-4"])


class ProviderInBody(BaseModel):
    provider_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                                    examples=["dr-lee"])


class OutOfService(BaseModel):
    reason: str = Field("", max_length=200, examples=["sink leaking"])


class AnnounceDelay(BaseModel):
    provider_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="null: the whole clinic", examples=["dr-lee"])
    minutes: int = Field(strict=True, ge=0, le=600, description="0 clears the delay",
                         examples=[25])
    reason: str = Field("", max_length=200, examples=["emergency procedure"])


class Undo(BaseModel):
    event_id: str = Field(min_length=1, max_length=64, description="the event to reverse",
                          examples=["5f0c7f3b9d2e4c0f8f1e2a3b4c5d6e7f"])
    reason: str = Field("", max_length=200, examples=["wrong patient roomed"])


class BoardHub(SseHub):
    """Boards fanned out to live screens by clinic: a screen that has not taken its last
    board yet gets the newest one in its place (only the newest matters, and a busy
    process sends no stale boards); 429 past ``max_per_credential``, 503 past
    ``max_total``.

    The hub also keeps the newest board of each clinic it has heard while subscribed,
    so a board GET or a new stream's snapshot is answered without a Redis read. Every
    board is written and published in one Lua call (FlowStore.write), so the boards
    heard are the boards stored, in their order; the few milliseconds between a write
    and its message are the same race a GET has with a write. Until a clinic's board
    changes after the subscription, and whenever the subscription is lost (boards may
    have been missed), the board is read from Redis."""

    def __init__(self, runtime: ServiceRuntime, store: FlowStore, max_total: int,
                 max_per_credential: int) -> None:
        super().__init__(runtime, name="flow-board-hub", pattern=store.changes_pattern,
                         clinic_of_channel=store.clinic_of_channel, gauge=m.SSE_CLIENTS,
                         max_total=max_total, max_per_credential=max_per_credential,
                         queue_size=1, when_full="keep_newest")
        self.newest: dict[str, bytes] = {}

    def deliver(self, clinic_id: str, data: bytes) -> None:
        self.newest[clinic_id] = data
        super().deliver(clinic_id, data)

    def lost(self) -> None:
        self.newest.clear()

    def heard(self, clinic_id: str) -> bytes | None:
        """The newest board of ``clinic_id`` heard on a subscription that is still up
        (None: read it from Redis)."""
        return self.newest.get(clinic_id) if self.listening.is_set() else None


def view_for(board: dict[str, Any], role: str) -> dict[str, Any]:
    """What a role may see: screens get ticket codes and ranges, nothing else; the
    operations report is for managers."""
    if role == "manager":
        return board
    if role != "screen":
        return {k: v for k, v in board.items() if k != "operations"}
    return {
        "clinic_id": board["clinic_id"],
        "as_of": board["as_of"],
        "waiting": [{k: w[k] for k in SCREEN_WAITING_FIELDS} for w in board["waiting"]],
        "calling": calling(board),
        "providers": [
            {k: p[k] for k in ("provider_id", "delay_minutes", "delay_until", "waiting")}
            for p in board["providers"]
        ],
        "clinic_delay": board["clinic_delay"],
    }


# a JSON string that is a date and time with its offset: every time of a board
_TIME = re.compile(rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z))"')


def on_clinic_clock(raw: bytes, zone: tzinfo, done: dict[bytes, bytes] | None = None) -> bytes:
    """The board ``raw`` (JSON) with every time in it (``as_of``, ``arrived_at``,
    ``scheduled_at``, ``since``, ``until``, the report's) given in the clinic's offset:
    the same instants, ISO 8601 with the offset the clinic's clock had then.

    ``done``: the times converted already in ``zone`` (each JSON time to its local
    form), used and added to; boards repeat their times, and a clinic's next board most
    of its last one's."""
    if done is None:
        done = {}

    def local(match: re.Match[bytes]) -> bytes:
        text = match.group(1)
        found = done.get(text)
        if found is None:
            at = datetime.fromisoformat(text.decode())
            found = done[text] = b'"' + at.astimezone(zone).isoformat().encode() + b'"'
        return found
    return _TIME.sub(local, raw)


def calling(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The tickets the waiting room shows as called: roomed (the provider not in yet) at
    most ``CALLING_MINUTES`` before the board's ``as_of``."""
    as_of = datetime.fromisoformat(board["as_of"])
    return [
        {"ticket_code": v["ticket_code"], "room_id": v["room_id"], "since": v["since"]}
        for v in board["in_rooms"] if v["status"] == "roomed"
        and as_of - datetime.fromisoformat(v["since"]) <= timedelta(minutes=CALLING_MINUTES)
    ]


# times a clinic's views keep converted to its clock, at most (then they start afresh)
CLOCK_TIMES_KEPT = 512


class BoardViews:
    """What each role sees of a clinic's board, rendered once per board: the answer of a
    GET (JSON) and the frame of a live stream (SSE). Every screen and station of a clinic
    asks for the same few views of the same board; the last rendering of each (clinic,
    role, form) is kept, at most ``size`` of them (the oldest go first). A board is put
    on the clinic's clock and parsed once for all its views; the times converted are
    kept for the clinic's next boards (per zone, at most ``CLOCK_TIMES_KEPT``)."""

    def __init__(self, size: int = 256, zone_of: Callable[[str], tzinfo] | None = None,
                 names_of: Callable[[str], bytes] | None = None) -> None:
        self.size = size
        self.zone_of = zone_of
        # the clinic's names (services/flow/names.py): every view carries them as "names"
        self.names_of = names_of
        self._kept: dict[tuple[str, str, bool], tuple[bytes, bytes, bytes | None]] = {}
        # clinic -> (raw, on its clock, that parsed when a view needed it)
        self._local: dict[str, tuple[bytes, bytes, dict[str, Any] | None]] = {}
        self._times: dict[str, tuple[tzinfo, dict[bytes, bytes]]] = {}  # clinic -> its zone's

    def _parsed(self, clinic_id: str, local: bytes) -> dict[str, Any]:
        """``local`` parsed, once per board for all the views that cut it (read only)."""
        kept = self._local.get(clinic_id)
        if kept is not None and kept[1] is local and kept[2] is not None:
            return kept[2]
        parsed: dict[str, Any] = orjson.loads(local)
        if kept is not None and kept[1] is local:
            self._local[clinic_id] = (kept[0], local, parsed)
        return parsed

    def render(self, clinic_id: str, role: str, raw: bytes, *, frame: bool) -> bytes:
        """``raw`` (the board as stored) as ``role`` sees it: JSON, or with ``frame`` an
        SSE ``board`` event."""
        key = (clinic_id, role, frame)
        names = None if self.names_of is None else self.names_of(clinic_id)
        kept = self._kept.get(key)
        if kept is not None and (kept[0] is raw or kept[0] == raw) and kept[2] is names:
            return kept[1]
        local = raw if self.zone_of is None else self._on_clock(clinic_id, raw)
        # a manager sees the whole board: the stored JSON is already the answer
        body = (local if role == "manager"
                else orjson.dumps(view_for(self._parsed(clinic_id, local), role)))
        if names is not None:
            body = body[:-1] + b',"names":' + names + b"}"
        rendered = b"event: board\ndata: " + body + b"\n\n" if frame else body
        if kept is None and len(self._kept) >= self.size:
            del self._kept[next(iter(self._kept))]
        self._kept[key] = (raw, rendered, names)
        return rendered

    def _on_clock(self, clinic_id: str, raw: bytes) -> bytes:
        """``raw`` on the clinic's clock, made once per board for all its views."""
        kept = self._local.get(clinic_id)
        if kept is not None and (kept[0] is raw or kept[0] == raw):
            return kept[1]
        assert self.zone_of is not None
        zone = self.zone_of(clinic_id)
        times = self._times.get(clinic_id)
        if times is None or times[0] != zone or len(times[1]) >= CLOCK_TIMES_KEPT:
            if times is None and len(self._times) >= self.size:
                del self._times[next(iter(self._times))]
            times = self._times[clinic_id] = (zone, {})
        local = on_clinic_clock(raw, zone, times[1])
        if kept is None and len(self._local) >= self.size:
            del self._local[next(iter(self._local))]
        self._local[clinic_id] = (raw, local, None)
        return local


class SnapshotReads:
    """The boards a new stream opens with, read from Redis at most once at a time per
    clinic and at most ``at_once`` clinics at a time. A thousand screens reconnecting
    together (a restart, a network blip) took a pooled Redis connection each, past the
    pool's size (100), and their streams failed."""

    def __init__(self, store: FlowStore, hub: BoardHub | None = None,
                 at_once: int = 32) -> None:
        self.store = store
        self.hub = hub
        self.slots = asyncio.Semaphore(at_once)
        self.reading: dict[str, asyncio.Future[bytes | None]] = {}

    async def read(self, clinic_id: str) -> bytes | None:
        heard = None if self.hub is None else self.hub.heard(clinic_id)
        if heard is not None:
            return heard
        pending = self.reading.get(clinic_id)
        if pending is None:
            pending = asyncio.ensure_future(self._read(clinic_id))
            self.reading[clinic_id] = pending
            pending.add_done_callback(lambda _: self.reading.pop(clinic_id, None))
        # a stream that goes away while waiting leaves the read to the others
        return await asyncio.shield(pending)

    async def _read(self, clinic_id: str) -> bytes | None:
        async with self.slots:
            return await self.store.board(clinic_id)


def make_router(runtime: ServiceRuntime, store: FlowStore, hub: BoardHub, floor_topic: str,
                idempotency: IdempotencyStore, clinics: ClinicDirectory | None = None,
                names: Callable[[str], bytes] | None = None,
                imported: Callable[[str], ImportedNames] | None = None) -> APIRouter:
    """``clinics``: the rooms and providers each clinic has (every command is checked
    against them and the board); None: none configured. ``names``: the JSON of a
    clinic's display names every board view carries (services/flow/names.py);
    ``imported``: the providers and rooms imports named (shared/directory.py), which a
    clinic whose configuration lists its providers or rooms has as well."""
    router = APIRouter(responses=REFUSALS)
    clinics = clinics if clinics is not None else ClinicDirectory.parse(None)
    views = BoardViews(zone_of=clinics.zone, names_of=names)
    imported_of = imported or (lambda _clinic_id: NO_NAMES)
    snapshots = SnapshotReads(store, hub)
    claims = FloorClaims(runtime.redis, store, floor_topic)
    ends = VisitEnds(runtime.redis, claims.redis_prefix)

    async def board_or_empty(clinic_id: str) -> dict[str, Any]:
        raw = await store.board(clinic_id)
        if raw is None:
            return {"clinic_id": clinic_id, "waiting": [], "in_rooms": [], "rooms": [],
                    "providers": [], "clinic_delay": None}
        result: dict[str, Any] = orjson.loads(raw)
        return result

    async def publish(clinic_id: str, payload: ev.Payload, request: Request,
                      key: str | None, principal: Principal,
                      correlation_id: str | None = None,
                      check: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
                      claim: Claim | None = None) -> Accepted:
        """Check the command against the clinic's board, then publish it. The check runs
        inside the idempotent action: a retry with the same key replays the first answer,
        and a refusal stores nothing (so no 2xx answer is a command the floor refuses).
        A command that changes a room or a visit (``claim``) first claims them until its
        event is on the board (services/flow/commands.py): of two commands on one room
        or visit that would both pass the check, one is refused here."""
        body = await request.body()

        async def action() -> tuple[int, Any]:
            event = ev.make_event(payload, clinic_id=clinic_id, source="flow",
                                  occurred_at=runtime.clock.now(),
                                  correlation_id=correlation_id)
            event_id = event.envelope.event_id
            if not runtime.kafka_started:
                raise HTTPException(503, detail="Kafka is not connected yet: nothing was "
                                    "published; try again shortly", headers={"Retry-After": "2"})
            if check is not None:  # refused at once, whatever another command is doing
                await checked(check, await board_or_empty(clinic_id))
            board = None if claim is None else await take_claim(clinic_id, claim, event_id)
            try:
                if check is not None and claim is not None:  # again, with what came before
                    await checked(check, board if board is not None
                                  else await board_or_empty(clinic_id))
                if claim is not None:
                    await claims.hold_visit_end(clinic_id, claim)
                try:
                    sent = await runtime.broker.publish(ev.encode(event), floor_topic,
                                                       key=clinic_id.encode())
                finally:  # on Kafka (or not): a cancel or checkout after it may go on
                    if claim is not None:
                        await claims.let_go_visit_end(clinic_id, claim)
            except Refusal:
                if claim is not None:
                    await claims.release(clinic_id, event_id)
                raise
            except Exception as exc:
                if claim is not None:
                    await claims.release(clinic_id, event_id)
                log.warning("floor command not published", error=repr(exc), clinic=clinic_id)
                raise HTTPException(503, detail="could not publish to Kafka; try again (with "
                                    "the same Idempotency-Key)",
                                    headers={"Retry-After": "2"}) from exc
            if claim is not None and isinstance(getattr(sent, "offset", None), int):
                await claims.stamp(clinic_id, event_id, sent.partition, sent.offset)
            EVENTS_PUBLISHED.labels("flow", event.event_type).inc()
            log.info("floor command published", event_type=event.event_type, clinic=clinic_id,
                     by=principal.name)
            return 202, {"event_id": event_id, "event_type": event.event_type}

        if key is None:
            _status, answer = await action()
            return Accepted(**answer)
        _status, answer, replayed = await idempotency.run(
            f"flow:{clinic_id}", key, fingerprint(request.method, request.url.path, body), action)
        return Accepted(**answer, replayed=replayed)

    async def checked(check: Callable[[dict[str, Any]], Awaitable[None] | None],
                      board: dict[str, Any]) -> None:
        """Run a command's board check (which may have to ask Redis: ``not_on_board``)."""
        pending = check(board)
        if pending is not None:
            await pending

    async def not_on_board(clinic_id: str, visit_id: str, what: str) -> None:
        """A visit the board does not have: 409 ``visit_ended`` when it ended today (its
        checkout or cancel holds its end claim, shared/visit_end.py), else 404
        ``unknown_visit`` (never seen at this clinic, or ended days ago)."""
        ended = await ends.holder(clinic_id, visit_id)
        if ended in ("checked_out", "cancelled"):
            raise Conflict(f"visit {visit_id} has ended at clinic {clinic_id} (it was "
                           f"{ended.replace('_', ' ')}): it {what}", code="visit_ended")
        raise NotFound(f"visit {visit_id} {what} at clinic {clinic_id}", code="unknown_visit")

    async def take_claim(clinic_id: str, claim: Claim, event_id: str) -> dict[str, Any] | None:
        """Claim what the command changes, or refuse it (409 naming what holds it) while
        another command's event is not on the board yet. Returns the board a claim found
        held and done was decided on (the command is checked against it), else None."""
        holders = await claims.take(clinic_id, claim, event_id)
        if not holders:
            return None
        pending, board = await claims.done(holders, lambda: board_or_empty(clinic_id))
        if pending:
            raise refusal(clinic_id, claim, pending[0], board)
        held = await claims.take(clinic_id, claim, event_id,
                                 replacing=tuple(h.event_id for h in holders))
        if held:
            raise refusal(clinic_id, claim, held[0], board)
        return board

    def room_of(clinic_id: str, board: dict[str, Any], room_id: str) -> dict[str, Any] | None:
        """The room as the board has it; NotFound when the clinic has no such room. A clinic
        with rooms in CLINICFLOW_CLINICS has those rooms (and any already on its board); a
        clinic with none configured opens a room by naming it, as before."""
        room = next((r for r in board["rooms"] if r["room_id"] == room_id), None)
        configured = clinics[clinic_id].rooms
        if configured:
            configured = {**imported_of(clinic_id).rooms, **configured}
        if room is None and configured and room_id not in configured:
            raise NotFound(f"clinic {clinic_id} has no room {room_id!r} (its rooms: "
                           f"{', '.join(sorted(configured))})", code="unknown_room")
        return room

    def already(clinic_id: str, room_id: str, room: dict[str, Any] | None, state: str) -> None:
        """Conflict for a command that would change nothing: the room is ``state`` already
        (a second click, a retry without a key). Nothing is published for it; a retry with
        the first command's Idempotency-Key replays that command's 202 instead."""
        if room is not None and room["state"] == state:
            raise Conflict(f"room {room_id} is already {state.replace('_', ' ')} at clinic "
                           f"{clinic_id}", code=f"already_{state}")

    def occupant(board: dict[str, Any], room_id: str, room: dict[str, Any]) -> str:
        """Who is in an occupied room, in a refusal's words: its visit and ticket code."""
        visit = next((v for v in board["in_rooms"] if v["room_id"] == room_id), None)
        if visit is None:
            return f"patient {room['ticket_code']}"
        return f"visit {visit['visit_id']} (patient {visit['ticket_code']})"

    def check_provider(clinic_id: str, board: dict[str, Any], provider_id: str | None) -> None:
        """NotFound for a provider the clinic does not have: configured providers, and any
        on its board; a clinic with none configured takes any provider id, as before."""
        if provider_id is None:
            return
        configured = clinics[clinic_id].providers
        if configured:
            configured = {**imported_of(clinic_id).providers, **configured}
        known = {p["provider_id"] for p in board["providers"]}
        known.update(v["provider_id"] for v in [*board["waiting"], *board["in_rooms"]])
        if configured and provider_id not in configured and provider_id not in known:
            raise NotFound(f"clinic {clinic_id} has no provider {provider_id!r} (its "
                           f"providers: {', '.join(sorted(configured))})",
                           code="unknown_provider")

    def check_standing(clinic_id: str, board: dict[str, Any], provider_id: str | None) -> None:
        """NotFound when there is no delay standing to clear (the clinic's, with None)."""
        if provider_id is None:
            if board.get("clinic_delay") is None:
                raise NotFound(f"clinic {clinic_id} has no clinic-wide delay standing",
                               code="no_delay")
            return
        if not any(p["provider_id"] == provider_id and p["delay_minutes"] > 0
                   for p in board["providers"]):
            raise NotFound(f"provider {provider_id} has no delay standing at clinic "
                           f"{clinic_id}", code="no_delay")

    @router.get("/clinics", tags=["boards"], summary="Clinics with a board today")
    async def list_clinics(principal: Principal = Depends(read_board)) -> dict[str, list[str]]:
        clinics = [c for c in await store.clinics() if principal.allows_clinic(c)]
        return {"clinics": clinics}

    @router.get("/clinics/{clinic_id}/board", tags=["boards"], response_model=dict[str, Any],
                summary="The clinic's board: waiting patients by ticket code, rooms, providers")
    async def get_board(clinic_id: ClinicId,
                        principal: Principal = Depends(read_board)) -> Response:
        principal.require_clinic(clinic_id)
        raw = hub.heard(clinic_id) or await store.board(clinic_id)
        if raw is None:
            raise HTTPException(404, detail=f"no board for clinic {clinic_id!r}: nothing has "
                                "happened there today")
        return Response(views.render(clinic_id, principal.role, raw, frame=False),
                        media_type="application/json")

    @router.get("/clinics/{clinic_id}/stream", tags=["boards"],
                summary="Server-Sent Events: the board each time it changes",
                response_class=StreamingResponse)
    async def stream(clinic_id: ClinicId, request: Request,
                     principal: Principal = Depends(read_board)) -> StreamingResponse:
        principal.require_clinic(clinic_id)
        role = principal.role

        def render(raw: bytes) -> bytes:
            return views.render(clinic_id, role, raw, frame=True)

        async def first() -> bytes | None:
            board = await snapshots.read(clinic_id)
            return None if board is None else render(board)

        # every stream of a role shows the same frame of each board: rendered once
        return hub.stream(clinic_id, principal.name, request, first=first, render=render,
                          view=role)

    @router.post("/clinics/{clinic_id}/rooms/{room_id}/ready", status_code=202,
                 tags=["floor commands"], summary="A room is clean and can take the next patient")
    async def room_ready(clinic_id: ClinicId, room_id: RoomId, request: Request,
                         idempotency_key: IdempotencyKey = None,
                         principal: Principal = Depends(floor_staff)) -> Accepted:
        principal.require_clinic(clinic_id)

        def check(board: dict[str, Any]) -> None:
            room = room_of(clinic_id, board, room_id)
            if room is not None and room["state"] == "occupied":
                raise Conflict(f"room {room_id} holds {occupant(board, room_id, room)}; check "
                               "them out or room them elsewhere first", code="room_occupied")
            already(clinic_id, room_id, room, "ready")
        return await publish(clinic_id, ev.RoomReady(room_id=room_id), request,
                             idempotency_key, principal, check=check,
                             claim=room_claim(room_id, f"marking room {room_id} ready"))

    @router.post("/clinics/{clinic_id}/rooms/{room_id}/out-of-service", status_code=202,
                 tags=["floor commands"], summary="Take a room out of service")
    async def room_out(clinic_id: ClinicId, room_id: RoomId, request: Request,
                       body: OutOfService = Body(default_factory=lambda: OutOfService()),
                       idempotency_key: IdempotencyKey = None,
                       principal: Principal = Depends(floor_staff)) -> Accepted:
        principal.require_clinic(clinic_id)

        def check(board: dict[str, Any]) -> None:
            room = room_of(clinic_id, board, room_id)
            if room is not None and room["state"] == "occupied":
                raise Conflict(f"room {room_id} holds {occupant(board, room_id, room)}; room "
                               "them elsewhere or check them out first", code="room_occupied")
            already(clinic_id, room_id, room, "out_of_service")
        return await publish(clinic_id, ev.RoomOutOfService(room_id=room_id, reason=body.reason),
                             request, idempotency_key, principal, check=check,
                             claim=room_claim(room_id, f"taking room {room_id} out of service"))

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/room", status_code=202,
                 tags=["floor commands"], summary="Call a waiting patient into a room")
    async def room_patient(clinic_id: ClinicId, visit_id: VisitId, body: RoomPatient,
                           request: Request, idempotency_key: IdempotencyKey = None,
                           principal: Principal = Depends(floor_staff)) -> Accepted:
        principal.require_clinic(clinic_id)

        def check(board: dict[str, Any]) -> Awaitable[None] | None:
            if not any(w["visit_id"] == visit_id for w in board["waiting"]):
                where = next((v for v in board["in_rooms"] if v["visit_id"] == visit_id), None)
                if where is None:
                    return not_on_board(clinic_id, visit_id, "is not waiting")
                raise Conflict(f"visit {visit_id} is already {where['status']} in room "
                               f"{where['room_id']}", code="visit_not_waiting")
            room = room_of(clinic_id, board, body.room_id)
            if room is not None and room["state"] == "occupied":
                raise Conflict(f"room {body.room_id} holds "
                               f"{occupant(board, body.room_id, room)}; choose another room",
                               code="room_occupied")
            if room is not None and room["state"] == "out_of_service":
                raise Conflict(f"room {body.room_id} is out of service; choose another room",
                               code="room_out_of_service")
            if room is not None and room["state"] == "needs_cleaning":
                raise Conflict(f"room {body.room_id} needs cleaning: mark it ready first",
                               code="room_needs_cleaning")
            return None
        rooming = ev.PatientRoomed(visit_id=visit_id, room_id=body.room_id)
        return await publish(clinic_id, rooming, request, idempotency_key, principal,
                             correlation_id=visit_id, check=check,
                             claim=room_claim(body.room_id, f"rooming visit {visit_id} into "
                                              f"room {body.room_id}", visit_id))

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/provider-in", status_code=202,
                 tags=["floor commands"], summary="The provider starts seeing the patient")
    async def provider_in(clinic_id: ClinicId, visit_id: VisitId, request: Request,
                          body: ProviderInBody = Body(default_factory=lambda: ProviderInBody()),
                          idempotency_key: IdempotencyKey = None,
                          principal: Principal = Depends(floor_staff)) -> Accepted:
        principal.require_clinic(clinic_id)

        def check(board: dict[str, Any]) -> Awaitable[None] | None:
            known = [*board["waiting"], *board["in_rooms"]]
            if not any(v["visit_id"] == visit_id for v in known):
                return not_on_board(clinic_id, visit_id, "is not open")
            if any(w["visit_id"] == visit_id for w in board["waiting"]):
                raise Conflict(f"visit {visit_id} is waiting, not roomed: room the patient "
                               "first", code="visit_not_roomed")
            seeing = next((v for v in board["in_rooms"] if v["visit_id"] == visit_id), None)
            if seeing is not None and seeing["status"] == "with_provider":
                raise Conflict(f"visit {visit_id} is already with a provider in room "
                               f"{seeing['room_id']}", code="already_with_provider")
            check_provider(clinic_id, board, body.provider_id)
            return None
        return await publish(clinic_id, ev.ProviderIn(visit_id=visit_id,
                                                      provider_id=body.provider_id),
                             request, idempotency_key, principal, correlation_id=visit_id,
                             check=check, claim=Claim((f"visit:{visit_id}",),
                                                      f"provider in for visit {visit_id}",
                                                      (visit_id, "seen")))

    @router.post("/clinics/{clinic_id}/delays", status_code=202, tags=["floor commands"],
                 summary="Announce (or with 0 minutes, clear) a provider's or the clinic's delay")
    async def announce_delay(clinic_id: ClinicId, body: AnnounceDelay, request: Request,
                             idempotency_key: IdempotencyKey = None,
                             principal: Principal = Depends(delay_staff)) -> Accepted:
        principal.require_clinic(clinic_id)
        payload: ev.Payload = (
            ev.DelayCleared(provider_id=body.provider_id) if body.minutes == 0
            else ev.DelayAnnounced(provider_id=body.provider_id, minutes=body.minutes,
                                   reason=body.reason)
        )
        def check(board: dict[str, Any]) -> None:
            check_provider(clinic_id, board, body.provider_id)
            if body.minutes == 0:
                check_standing(clinic_id, board, body.provider_id)
        return await publish(clinic_id, payload, request, idempotency_key, principal,
                             check=check)

    @router.delete("/clinics/{clinic_id}/delays/{provider_id}", status_code=202,
                   tags=["floor commands"],
                   summary="Clear a provider's delay ('clinic' clears the clinic-wide one)")
    async def clear_delay(clinic_id: ClinicId, provider_id: RoomId, request: Request,
                          idempotency_key: IdempotencyKey = None,
                          principal: Principal = Depends(delay_staff)) -> Accepted:
        principal.require_clinic(clinic_id)
        target = None if provider_id == "clinic" else provider_id

        def check(board: dict[str, Any]) -> None:
            check_provider(clinic_id, board, target)
            check_standing(clinic_id, board, target)
        return await publish(clinic_id, ev.DelayCleared(provider_id=target), request,
                             idempotency_key, principal, check=check)

    @router.post("/clinics/{clinic_id}/undo", status_code=202, tags=["floor commands"],
                 summary="Undo a mistaken floor action with a correcting event")
    async def undo(clinic_id: ClinicId, body: Undo, request: Request,
                   idempotency_key: IdempotencyKey = None,
                   principal: Principal = Depends(floor_staff)) -> Accepted:
        principal.require_clinic(clinic_id)

        def check(board: dict[str, Any]) -> None:
            action = next((a for a in board.get("undo", []) if a["event_id"] == body.event_id),
                          None)
            if action is None:
                raise NotFound(f"event {body.event_id} is not a recent floor action of clinic "
                               f"{clinic_id} (unknown, another clinic's, already undone or too "
                               "old to undo)", code="unknown_event")
            if not action["undoable"]:
                raise Conflict(f"event {body.event_id} ({action['kind'].replace('_', ' ')}) "
                               "cannot be undone: its patient or room changed since, or its "
                               "visit ended; undo the later action first",
                               code="not_undoable")
        return await publish(clinic_id, ev.ActionUndone(undone_event_id=body.event_id,
                                                        reason=body.reason),
                             request, idempotency_key, principal, check=check,
                             claim=Claim((UNDO,), f"an undo of event {body.event_id}"))

    return router
