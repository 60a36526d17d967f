"""Reading HL7 v2 messages, answering them, and MLLP framing: no broker, no Redis."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.checkin.feeds import FeedConfigError, Feeds
from services.checkin.hl7.messages import (
    Ack,
    Problem,
    RegistrationMessage,
    ScheduleMessage,
    ack_bytes,
    read_message,
)
from services.checkin.hl7.mllp import HEAD_BYTES, FrameReader

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)

# modelled on the HL7 v2.5.1 chapter 10 booking example (SCH, PID, PV1, RGS, AIS, AIG, AIL, AIP)
S12 = "\r".join([
    "MSH|^~\\&|SCHED|GENHOS|CLINICFLOW|NORTH|20260302083000||SIU^S12^SIU_S12|MSG00001|P|2.5.1",
    "SCH|10345^EPIC|A-2196178^EPIC|||10345|OFFICE^Office visit|FOLLOWUP^Follow-up^HL70276|"
    "NORMAL|30|m|^^30^20260302091500^20260302094500|||||9^DENT^ARTHUR^||||9^DENT^COREY^"
    "|||||Booked",
    "PID|1||371-66-9256^^^USSSA^SS~191919^^^GENHOS^MR||MASSIE^JAMES^A||19560129|M",
    "PV1|1|O|||||1^Smith^Miranda^A^MD",
    "RGS|1|A",
    "AIS|1|A|99213^Office visit^C4|20260302091500|||30|m",
    "AIG|1|A|1^White, Charles|D",
    "AIL|1|A|O/R^3^^GENHOS^^^^^Exam room 3|^Main Office||20260302091500|||30|m^Minutes||Booked",
    "AIP|1|A|0148^ADDISON^JAMES^A^^DR|D^Doctor||20260302091500|||30|m^Minutes||Booked",
]).encode() + b"\r"

# modelled on the chapter 3 registration example
A04 = "\r".join([
    "MSH|^~\\&|REGADT|GENHOS|IFENG||20260302090000-0500||ADT^A04^ADT_A01|000001|P|2.5.1",
    "EVN|A04|20260302085930-0500|||",
    "PID|||191919^^^GENHOS^MR~371-66-9256^^^USSSA^SS|253763|MASSIE^JAMES^A||19560129|M",
    "NK1|1|MASSIE^ELLEN|SPOUSE",
    "PV1||O|O/R||||0148^ADDISON^JAMES|0148^ADDISON^JAMES|0148^ADDISON^JAMES|AMB|||||||"
    "0148^ADDISON^JAMES|S|1400|A",
    "OBX||ST|1010.1^BODY WEIGHT||62|kg|||||F",
]).encode() + b"\r"


def test_a_booking_names_its_appointment_patient_provider_room_time_and_visit_type() -> None:
    message = read_message(S12)
    assert isinstance(message, ScheduleMessage)
    assert message.action == "book"
    assert message.appointment_id == "A-2196178"  # SCH-2, the filler's id
    assert message.start == datetime(2026, 3, 2, 9, 15)  # naive: the sender's clock
    assert message.duration_minutes == 30
    assert message.visit_type_code == "FOLLOWUP"  # SCH-7, table 0276
    assert message.patient is not None and message.patient.mrn == "191919"  # typed MR
    assert message.patient.initials == "JM" and message.patient.birth_date == date(1956, 1, 29)
    assert message.provider is not None
    assert (message.provider.ehr_id, message.provider.name) == ("0148", "DR JAMES ADDISON")
    assert message.room is not None and (message.room.ehr_id, message.room.name) == \
        ("3", "Exam room 3")
    assert message.header.control_id == "MSG00001"


def test_identifying_values_never_show_in_a_repr() -> None:
    message = read_message(S12)
    assert "191919" not in repr(message) and "MASSIE" not in repr(message)
    assert "1956" not in repr(message)


def test_a_registration_takes_its_time_from_evn_with_the_senders_offset() -> None:
    message = read_message(A04)
    assert isinstance(message, RegistrationMessage)
    assert message.action == "arrive" and message.visit_number == "1400"
    assert message.at == datetime(2026, 3, 2, 8, 59, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert message.attending is not None and message.attending.ehr_id == "0148"


@pytest.mark.parametrize(("change", "ack", "where"), [
    ((b"|MSG00001|P|2.5.1", b"||P|2.5.1"), "AR", "MSH-10"),
    ((b"|P|2.5.1", b"|X|2.5.1"), "AR", "MSH-11"),
    ((b"|P|2.5.1", b"|P|2.2"), "AR", "MSH-12"),
    ((b"SIU^S12^SIU_S12", b"SIU^S16^SIU_S12"), "AR", "MSH-9.2"),
    ((b"SIU^S12^SIU_S12", b"ORM^O01^ORM_O01"), "AR", "MSH-9.1"),
    ((b"20260302091500|||30|m\r", b"2026-03-02 9:15|||30|m\r"), "AE", "AIS-4.1"),
    ((b"|NORMAL|30|m|", b"|NORMAL|900|m|"), "AE", "SCH-9"),
    ((b"|19560129|M", b"|1956|M"), "AE", "PID-7.1"),
])
def test_what_cannot_be_taken_is_named_by_segment_and_field(
    change: tuple[bytes, bytes], ack: str, where: str,
) -> None:
    with pytest.raises(Problem) as refused:
        read_message(S12.replace(*change))
    assert (refused.value.ack, refused.value.where) == (ack, where)


def test_bytes_that_are_not_hl7_are_rejected() -> None:
    with pytest.raises(Problem) as refused:
        read_message(b"GET / HTTP/1.1\r\n\r\n")
    assert refused.value.ack == "AR" and refused.value.where == "MSH-1"


def test_an_ack_echoes_the_control_id_and_names_the_error() -> None:
    message = read_message(S12)
    accepted = ack_bytes(Ack("AA", text="appointment booked"), message.header,
                         application="CLINICFLOW", facility="CHECKIN", control_id="ACK1",
                         now=NOW)
    assert accepted.split(b"\r")[:2] == [
        b"MSH|^~\\&|CLINICFLOW|CHECKIN|SCHED|GENHOS|20260302140000+0000||ACK^S12^ACK|ACK1|P|"
        b"2.5.1", b"MSA|AA|MSG00001|appointment booked"]
    problem = Problem("AE", "101", "SCH-2 (filler appointment id) is missing", "SCH", 2, 1)
    refused = ack_bytes(Ack("AE", problem), message.header, application="CLINICFLOW",
                        facility="CHECKIN", control_id="ACK2", now=NOW)
    err = refused.split(b"\r")[2].split(b"|")
    assert err[0] == b"ERR" and err[2] == b"SCH^1^2^1^1"
    assert err[3] == b"101^Required field missing^HL70357" and err[4] == b"E"
    assert err[8].startswith(b"SCH-2.1: SCH-2")


def test_an_ack_escapes_the_reason() -> None:
    problem = Problem("AE", "207", "a|b^c~d\\e&f", "MSH")
    raw = ack_bytes(Ack("AE", problem), None, application="A", facility="F",
                    control_id="C", now=NOW)
    assert b"a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f" in raw


def test_frames_are_found_across_reads_and_garbage_between_them_is_dropped() -> None:
    reader = FrameReader(1024)
    stream = b"noise" + VT + b"MSH|one" + FS + CR + b"\r\n" + VT + b"MSH|two" + FS + CR
    found = []
    for at in range(0, len(stream), 3):
        found.extend(reader.feed(stream[at:at + 3]))
    assert [f.payload for f in found] == [b"MSH|one", b"MSH|two"]
    assert reader.skipped_bytes == len(b"noise\r\n")


def test_a_message_cut_by_a_new_start_block_is_dropped() -> None:
    reader = FrameReader(1024)
    found = reader.feed(VT + b"MSH|cut" + VT + b"MSH|whole" + FS + CR)
    assert [f.payload for f in found] == [b"MSH|whole"]


def test_a_message_over_the_limit_is_skipped_holding_only_its_head() -> None:
    reader = FrameReader(64 * 1024)
    head = b"MSH|^~\\&|A|GENHOS|||20260302||SIU^S12|BIG1|P|2.5.1\r"
    chunk = b"X" * 65536
    found = reader.feed(VT + head)
    held = []
    for _ in range(80):  # 5 MiB
        found += reader.feed(chunk)
        held.append(reader.pending_bytes)
    found += reader.feed(FS + CR)
    assert max(held) <= HEAD_BYTES + 64 * 1024
    assert len(found) == 1 and found[0].payload is None
    assert found[0].size == len(head) + 80 * 65536
    assert found[0].head.startswith(head)


def test_the_feeds_configuration_names_a_bad_entry() -> None:
    feeds = Feeds.parse('{"genhos": {"clinic": "north", "providers": {"0148": "dr-a"}}}')
    feed = feeds.for_facility("GENHOS")
    assert feed is not None and feed.clinic_id == "north" and feed.provider("0148") == "dr-a"
    assert feed.provider("0200") == "0200"
    with pytest.raises(FeedConfigError, match=r"\['X'\]\.clinic"):
        Feeds.parse('{"X": {"clinic": "no spaces"}}')
    with pytest.raises(FeedConfigError, match="source_of_truth"):
        Feeds.parse('{"X": {"clinic": "north", "source_of_truth": "fax"}}')
