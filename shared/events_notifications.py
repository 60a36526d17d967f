"""Event models owned by the notifications service (registered with ``register_event``)."""

from __future__ import annotations
