"""A full ``make bench`` writes docs/performance.md again: what was written by hand stays."""

from __future__ import annotations

from bench.report import keep_written

EXISTING = """# Performance

Measured on day 1.

## HTTP

old table

## Scale-out

written by hand

### The other consumers

also by hand

## EHR feed

old feed table

### Fewer round trips (day 1)

a dated pair

## Outbox relay

by hand, last
"""

GENERATED = """# Performance

Measured on day 2.

## HTTP

new table

## EHR feed

new feed table
"""


def test_the_run_replaces_its_sections_and_keeps_what_was_written_by_hand() -> None:
    merged = keep_written(GENERATED, EXISTING)
    assert merged == """# Performance

Measured on day 2.

## HTTP

new table

## Scale-out

written by hand

### The other consumers

also by hand

## EHR feed

new feed table

### Fewer round trips (day 1)

a dated pair

## Outbox relay

by hand, last
"""


def test_a_first_report_is_the_run_alone_and_a_second_changes_nothing_more() -> None:
    assert keep_written(GENERATED, "") == GENERATED
    once = keep_written(GENERATED, EXISTING)
    assert keep_written(GENERATED, once) == once
