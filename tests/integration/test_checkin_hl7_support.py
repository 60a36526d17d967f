"""Shared pieces of the HL7 feed tests: an EHR's interface engine as a plain MLLP client,
the messages it sends (modelled on the examples of the HL7 v2.5.1 chapters: SIU in
chapter 10, ADT in chapter 3, with today's times and this test clinic's facility), and
reading what the feed published back from Kafka.

Collected by pytest but holds no tests; the HL7 test modules import from here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from tests.helpers import free_port, read_topic
from tests.integration.test_checkin_support import Checkin, midday_zone, running_checkin

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
FACILITY = "GENHOS"
FEEDS = {FACILITY: {"clinic": "north", "providers": {"0148": "dr-addison"},
                    "rooms": {"O/R": "r3"}, "visit_types": {"OFFICE": "follow_up"}}}


def ehr_time(at: datetime, zone: str | None = None) -> str:
    """An HL7 DTM as an EHR writes it: the clinic's local time, no offset."""
    return at.astimezone(ZoneInfo(zone or midday_zone())).strftime("%Y%m%d%H%M%S")


@dataclass(slots=True)
class Ehr:
    """Builds messages the way an EHR's scheduling and registration systems do; each
    message gets a fresh control id unless given one."""

    facility: str = FACILITY
    zone: str = field(default_factory=midday_zone)

    def msh(self, kind: str, structure: str, sent_at: datetime, control: str | None) -> str:
        return (f"MSH|^~\\&|EPICADT|{self.facility}|CLINICFLOW|NORTH|"
                f"{ehr_time(sent_at, self.zone)}||{kind}^{structure}|"
                f"{control or uuid.uuid4().hex[:20]}|P|2.5.1")

    def siu(self, trigger: str, appointment: str, start: datetime, *, sent_at: datetime,
            mrn: str = "191919", control: str | None = None, minutes: int = 15,
            reason: str = "FOLLOWUP^Follow-up visit^HL70276", provider: str = "0148",
            patient: str = "MASSIE^JAMES^A", born: str = "19560129",
            status: str = "Booked") -> bytes:
        """SIU^S12..S26 as in chapter 10: SCH, PID, PV1, RGS, AIS, AIG, AIL, AIP."""
        begin = ehr_time(start, self.zone)
        end = ehr_time(start + timedelta(minutes=minutes), self.zone)
        segments = [
            self.msh(f"SIU^{trigger}", "SIU_S12", sent_at, control),
            f"SCH|{appointment}-P^EPIC|{appointment}^EPIC|||10345|OFFICE^Office visit|"
            f"{reason}|NORMAL|"
            f"{minutes}|m|^^{minutes}^{begin}^{end}|||||9^DENT^ARTHUR^||||9^DENT^COREY^"
            f"|||||{status}",
            "NTE|1||Patient prefers morning appointments",
            f"PID|1||{mrn}^^^GENHOS^MR~371-66-9256^^^USSSA^SS||{patient}||{born}|M|||"
            "171 ZOBERLEIN^^ISHPEMING^MI^49849^\"\"^||(900)485-5344|(900)485-5344||S|C|"
            "10199925^^^GENHOS^AN|371-66-9256",
            f"PV1|1|O|O/R^^^GENHOS||||{provider}^ADDISON^JAMES^^^DR",
            "RGS|1|A",
            f"AIS|1|A|99213^Office visit, established^C4|{begin}|||{minutes}|m",
            "AIG|1|A|1^White, Charles|D",
            f"AIL|1|A|O/R^^^GENHOS^^^^^Exam room 3|^Exam room||{begin}|||{minutes}|"
            f"m^Minutes||{status}",
            f"AIP|1|A|{provider}^ADDISON^JAMES^^^DR|D^Doctor||{begin}|||{minutes}|m^Minutes||"
            f"{status}",
        ]
        return "\r".join(segments).encode() + b"\r"

    def adt(self, trigger: str, *, sent_at: datetime, visit: str | None = "10199925",
            mrn: str = "191919", control: str | None = None, patient: str = "MASSIE^JAMES^A",
            born: str = "19560129", admission_type: str = "R",
            attending: str = "0148^ADDISON^JAMES") -> bytes:
        """ADT^A04/A11/A08/A03 as in chapter 3: EVN, PID, NK1, PV1, OBX, DG1."""
        structure = {"A04": "ADT_A01", "A08": "ADT_A01", "A11": "ADT_A09",
                     "A03": "ADT_A03"}.get(trigger, "ADT_A01")
        recorded = ehr_time(sent_at, self.zone)
        segments = [
            self.msh(f"ADT^{trigger}", structure, sent_at, control),
            f"EVN|{trigger}|{recorded}|||",
            f"PID|||{mrn}^^^GENHOS^MR~371-66-9256^^^USSSA^SS|253763|{patient}||{born}|M|||"
            "171 ZOBERLEIN^^ISHPEMING^MI^49849^\"\"^||(900)485-5344|(900)485-5344||S|C|"
            f"{visit or ''}^^^GENHOS^AN|371-66-9256||",
            "NK1|1|MASSIE^ELLEN|SPOUSE|171 ZOBERLEIN^^ISHPEMING^MI^49849^\"\"^|"
            "(900)485-5344|(900)545-1234~(900)545-1200|EC1^FIRST EMERGENCY CONTACT",
            f"PV1||O|O/R^^^GENHOS|{admission_type}|||{attending}|{attending}|{attending}|AMB"
            f"|||||||{attending}|S|{visit or ''}|A|||||||||||||||||||SF|K||||"
            f"{recorded}",
            "OBX||ST|1010.1^BODY WEIGHT||62|kg|||||F",
            "DG1|1|19||BIOPSY||00|",
        ]
        return "\r".join(segments).encode() + b"\r"


@dataclass(slots=True)
class Answer:
    """An ACK as the sender reads it."""

    raw: bytes

    @property
    def segments(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in self.raw.decode().split("\r"):
            if line:
                found.setdefault(line[:3], line.split("|"))
        return found

    @property
    def code(self) -> str:
        return self.segments["MSA"][1]

    @property
    def control_id(self) -> str:
        return self.segments["MSA"][2]

    @property
    def text(self) -> str:
        msa = self.segments["MSA"]
        return msa[3] if len(msa) > 3 else ""

    @property
    def error(self) -> list[str] | None:
        return self.segments.get("ERR")


class MllpClient:
    """One MLLP connection, as an interface engine holds it: send, wait for the ACK."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> MllpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, message: bytes, timeout: float = 15.0) -> Answer:
        self.writer.write(VT + message + FS + CR)
        await self.writer.drain()
        return await self.read(timeout)

    async def read(self, timeout: float = 15.0) -> Answer:
        data = await asyncio.wait_for(self.reader.readuntil(FS + CR), timeout)
        start = data.find(VT)
        return Answer(data[start + 1:-2])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@dataclass(slots=True)
class Feed:
    """The checkin service with its MLLP listener, and a way to read its floor topic."""

    checkin: Checkin
    port: int

    @property
    def kafka_bootstrap(self) -> str:
        return self.checkin.kafka_bootstrap

    async def floor(self) -> list[dict[str, Any]]:
        """Every event on the floor topic so far (what an AA promised is there)."""
        records = await read_topic(self.checkin.kafka_bootstrap, self.checkin.floor_topic,
                                   timeout=10.0)
        return [orjson.loads(r.value) for r in records]

    async def raw_floor(self) -> bytes:
        records = await read_topic(self.checkin.kafka_bootstrap, self.checkin.floor_topic,
                                   timeout=10.0)
        return b"\n".join(r.value for r in records)

    async def send(self, message: bytes) -> Answer:
        client = await MllpClient.connect(self.port)
        try:
            return await client.send(message)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def running_feed(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
                       **overrides: Any) -> AsyncIterator[Feed]:
    """Checkin with its HL7 listener on a free port, the test feeds configured."""
    port = free_port()
    settings: dict[str, Any] = {"checkin_hl7_port": port,
                                "checkin_feeds": orjson.dumps(FEEDS).decode(), **overrides}
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix, **settings) as checkin:
        yield Feed(checkin, port)


def module_prefix() -> str:
    """A fresh topic and key prefix for a module's one service."""
    return f"t{uuid.uuid4().hex[:10]}."
