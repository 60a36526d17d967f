"""Event models owned by the billing service (registered with ``register_event``)."""

from __future__ import annotations
