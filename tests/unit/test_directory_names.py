"""Names people use, learned from imports (issue 15, point 3): checkin publishes
``directory.named`` when an import brings a new or changed display name; flow and
notifications keep them and name providers and rooms by them where the configuration
does not. The configured name wins (the operator chose it); the id is the last resort.
Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from services.flow.api import BoardViews
from services.flow.names import BoardNames
from services.notifications.domain import RuleBook
from services.notifications.names import NameBook
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.directory import (
    DirectoryNames,
    ImportedNames,
    changed_names,
    clean_display,
    directory_reader,
    layered,
    named_clinic,
    named_entries,
    plan_names,
)
from shared.projection import Inbound, partition_for

AT = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
TOPIC = "clinicflow.directory.v1"
CLINICS = ClinicDirectory.parse({"north": {"timezone": "America/New_York",
                                           "providers": {"p1": "Dr. Okafor"},
                                           "rooms": {"r5": "Exam 5"}}})


def named(clinic: str, kind: ev.DirectoryKind, ident: str, display: str,
          offset: int = 0) -> Inbound:
    raw = ev.encode(ev.make_event(ev.DirectoryNamed(kind=kind, id=ident, display=display),
                                  clinic_id=clinic, source="checkin", occurred_at=AT))
    return directory_reader(TOPIC).read(TOPIC, partition_for(clinic.encode(), 6), offset,
                                        clinic.encode(), raw, 6)


def test_the_configured_name_wins_over_the_imported_one_and_the_id_comes_last() -> None:
    assert layered({"p1": "Dr. Okafor"}, {"p1": "Dr. A. Okafor", "p7": "Dr. Lee"}) == {
        "p1": "Dr. Okafor", "p7": "Dr. Lee"}
    clinic = named_clinic(CLINICS["north"], ImportedNames({"p7": "Dr. Lee"}, {"r9": "Exam 9"}))
    assert clinic.provider_name("p7") == "Dr. Lee"
    assert clinic.provider_name("p1") == "Dr. Okafor"
    assert clinic.provider_name("p8") == "p8"
    assert clinic.room_name("r9") == "Exam 9" and clinic.room_name("r5") == "Exam 5"


def test_an_import_publishes_only_names_that_are_new_or_changed() -> None:
    stored = {"p1": "Dr. Okafor", "p2": "Dr. Ng"}
    learned = {"p1": "Dr. Okafor", "p2": "Dr.  Ng\n", "p7": " Dr. Ada Lee ", "p8": "  "}
    assert changed_names(stored, learned) == {"p7": "Dr. Ada Lee"}
    assert clean_display("x" * 200) == "x" * 80
    entries = named_entries("north", "provider", {"p7": "Dr. Ada Lee"}, origin="fhir",
                            source="checkin", now=AT)
    (entry,) = [orjson.loads(e) for e in entries]
    assert entry["topic"] == "directory" and entry["key"] == "north"
    event = ev.decode(entry["value"])
    assert event.payload == ev.DirectoryNamed(kind="provider", id="p7", display="Dr. Ada Lee",
                                              origin="fhir")
    assert event.clinic_id == "north"


def test_a_batch_sets_each_name_once_the_last_winning_and_the_same_name_changes_nothing(
        ) -> None:
    records = [named("north", "provider", "p7", "Dr. Lee", 0),
               named("north", "provider", "p7", "Dr. Ada Lee", 1),
               named("north", "room", "r9", "Exam 9", 2),
               named("south", "provider", "p1", "Dr. Kim", 3)]
    planned = plan_names(records, {("south", "provider"): {"p1": "Dr. Kim"}})
    assert planned.changes == {("north", "provider"): {"p7": "Dr. Ada Lee"},
                               ("north", "room"): {"r9": "Exam 9"}}
    assert planned.applied == 4 and not planned.dead_letters


def test_the_directory_topic_carries_directory_named_only() -> None:
    raw = ev.encode(ev.make_event(ev.RoomReady(room_id="r1"), clinic_id="north",
                                  source="flow"))
    record = directory_reader(TOPIC).read(TOPIC, partition_for(b"north", 6), 0, b"north", raw, 6)
    assert record.reason == f"room.ready does not belong on {TOPIC}"


async def test_flow_boards_carry_the_clinic_names_and_change_when_a_name_is_imported(
        ) -> None:
    imported = DirectoryNames(store=None)  # type: ignore[arg-type]
    names = BoardNames(CLINICS, imported, lambda: imported.changes)
    views = BoardViews(names_of=names)
    board = orjson.dumps({"clinic_id": "north", "as_of": AT.isoformat(), "waiting": [],
                          "in_rooms": [], "rooms": [], "providers": [],
                          "clinic_delay": None})
    first = orjson.loads(views.render("north", "screen", board, frame=False))
    assert first["names"] == {"providers": {"p1": "Dr. Okafor"}, "rooms": {"r5": "Exam 5"}}
    await imported.applied({("north", "provider"): {"p7": "Dr. Ada Lee", "p1": "Dr. A. O."}})
    again = orjson.loads(views.render("north", "manager", board, frame=False))
    assert again["names"]["providers"] == {"p1": "Dr. Okafor", "p7": "Dr. Ada Lee"}
    frame = views.render("north", "screen", board, frame=True)
    assert b'"p7":"Dr. Ada Lee"' in frame


async def test_a_delay_message_names_an_imported_provider_not_its_id() -> None:
    imported = DirectoryNames(store=None)  # type: ignore[arg-type]
    book = NameBook(CLINICS, RuleBook.parse({}))
    book.use_imported(imported)
    assert book("north").provider("p7") == "P7"  # read from the id, before the import
    await imported.applied({("north", "provider"): {"p7": "Dr. Ada Lee",
                                                    "p1": "Dr. A. Okafor"},
                            ("north", "room"): {"r9": "Exam 9"}})
    names = book("north")
    assert names.provider("p7") == "Dr. Ada Lee"
    assert names.provider("p1") == "Dr. Okafor"  # configured: the operator's choice
    assert names.room("r9") == "Exam 9"
