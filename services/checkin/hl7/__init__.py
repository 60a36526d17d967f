"""Check-in's HL7 v2 feed: messages (reading SIU and ADT, writing ACKs), the MLLP
listener, and the feed that turns messages into the desk's schedule and arrival
commands. docs/interfaces.md says what each field becomes."""
