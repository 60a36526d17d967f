"""The dead-letter counter's bounded reason label, from the reasons the reader gives."""

from __future__ import annotations

from services.flow.processor import floor_reader
from shared import events as ev
from shared.metrics import reason_kind


def test_a_record_on_another_partition_than_its_key_s_is_counted_as_wrong_partition() -> None:
    reader = floor_reader("floor")
    event = ev.make_event(ev.RoomReady(room_id="r1"), clinic_id="north", source="kcat")
    expected = next(p for p in range(12)
                    if not isinstance(reader.check("floor", p, b"north", ev.encode(event),
                                                   partitions=12), str))
    wrong = reader.check("floor", (expected + 1) % 12, b"north", ev.encode(event),
                         partitions=12)
    assert isinstance(wrong, str) and wrong.startswith("wrong partition")
    assert reason_kind(wrong) == "wrong_partition"
    assert reason_kind("roomed for unknown visit v9") == "not_applicable"
