"""``clinicflow run SERVICE``: run one service alone with uvicorn."""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import sys
from typing import Any

from pydantic import ValidationError

from shared.settings import InsecureConfiguration

SERVICES = {
    "checkin": ("services.checkin.app", "CheckinSettings", "checkin_port"),
    "flow": ("services.flow.app", "FlowSettings", "flow_port"),
    "notifications": ("services.notifications.app", "NotificationsSettings", "notifications_port"),
    "billing": ("services.billing.app", "BillingSettings", "billing_port"),
}


def build_app(service: str) -> tuple[Any, Any, int]:
    """(app, settings, port) for a service, settings read from the environment."""
    module_path, settings_name, port_field = SERVICES[service]
    settings_cls = getattr(importlib.import_module("shared.settings"), settings_name)
    settings = settings_cls()
    module = importlib.import_module(module_path)
    return module.create_app(settings), settings, int(getattr(settings, port_field))


# Collect young objects every 50,000 allocations rather than 700: a consumer applying
# tens of thousands of events a second allocates far faster than it makes garbage cycles,
# and each collection otherwise walks much of the live state (measured in bench/).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Move what start-up built out of the collector's sight and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# glibc serves a buffer over its mmap threshold (128 KiB) with a mapping of its own, given
# back when freed; but after freeing one it raises the threshold to that size (up to
# 32 MiB), so later big transient buffers (a checkpoint's snapshots, a Kafka fetch) come
# from the heap, which only shrinks from its top. Resident memory then followed the
# biggest bursts seen, not the live state: after 30 simulated days (3M events) flow's heap
# held 52 MiB that malloc_trim gave back at once (docs/performance.md). A fixed threshold
# keeps it flat.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold (no effect, and False, where the C library is another)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        app, settings, port = build_app(args.service)
    except InsecureConfiguration as exc:
        print(f"clinicflow run {args.service}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        # what is wrong with which setting, never the value given (it may be a secret)
        for error in exc.errors(include_input=False, include_url=False):
            name = "CLINICFLOW_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"clinicflow run {args.service}: {name}: {error['msg']}", file=sys.stderr)
        return 2
    tune_malloc()
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=args.port or port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run one service (HTTP + Kafka consumers)")
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--port", type=int, default=None, help="override the service's port")
    parser.set_defaults(func=run)
