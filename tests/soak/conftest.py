"""The soak's fixtures: its settings from the environment, the four services as child
processes on the session's own Kafka and Redis (tests/conftest.py), and a real SMTP server
for notifications. ``make soak`` runs only this directory (``-m soak``); ``make test``
deselects it (``addopts = -m 'not soak'``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.admin import ensure_topics
from tests.helpers import REPO, ServiceProcess
from tests.integration.notifications_support import MailCatcher, smtp_server

__all__ = ["smtp_server"]

SERVICES = ("checkin", "flow", "notifications", "billing")


@dataclass(frozen=True)
class SoakConfig:
    minutes: float  # CLINICFLOW_SOAK_MINUTES (default 120)
    clinics: int  # CLINICFLOW_SOAK_CLINICS (default 30)
    speed: float  # simulated seconds per real second while busy (default 60)
    sample_seconds: float  # RSS sampling period
    slope_bound: float  # MiB/h a service may grow after the warm-up
    noise_floor: float  # MiB a window too short to fit a slope may grow (state still filling)

    @classmethod
    def from_env(cls) -> SoakConfig:
        minutes = float(os.environ.get("CLINICFLOW_SOAK_MINUTES", "120"))
        return cls(
            minutes=minutes,
            clinics=int(os.environ.get("CLINICFLOW_SOAK_CLINICS", "30")),
            speed=float(os.environ.get("CLINICFLOW_SOAK_SPEED", "60")),
            sample_seconds=float(os.environ.get(
                "CLINICFLOW_SOAK_SAMPLE_SECONDS", str(min(15.0, max(2.0, minutes * 60 / 150))))),
            slope_bound=float(os.environ.get("CLINICFLOW_SOAK_SLOPE_BOUND_MIB_PER_HOUR", "10")),
            noise_floor=float(os.environ.get("CLINICFLOW_SOAK_NOISE_FLOOR_MIB", "10")),
        )


@pytest.fixture(scope="session")
def soak_config() -> SoakConfig:
    return SoakConfig.from_env()


@pytest.fixture(scope="session")
def soak_dir() -> Path:
    """test-artifacts/soak: memory.csv, the services' logs, soak.md."""
    path = REPO / "test-artifacts" / "soak"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def soak_services(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
                        smtp_server: MailCatcher, soak_dir: Path,
                        ) -> AsyncIterator[dict[str, ServiceProcess]]:
    """checkin, flow, notifications and billing as separate processes (``clinicflow run``),
    ready; stopped (SIGTERM, then -9 if they hang) after the test."""
    await ensure_topics(kafka_bootstrap, topic_prefix)
    settings: dict[str, object] = {
        "kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url,
        "topic_prefix": topic_prefix, "redis_prefix": topic_prefix.rstrip("."),
        "log_format": "json", "log_level": "WARNING",  # hours of INFO lines fill a disk
        "smtp_host": "127.0.0.1", "smtp_port": smtp_server.port,
        **{f"{name}_group_id": f"{topic_prefix}{name}" for name in SERVICES},
    }
    env = {f"CLINICFLOW_{key.upper()}": str(value) for key, value in settings.items()}
    services: dict[str, ServiceProcess] = {}
    for name in SERVICES:
        log = soak_dir / f"{name}.log"
        log.write_bytes(b"")
        services[name] = ServiceProcess(name, env, log)
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            await service.wait_ready(120)
        yield services
    finally:
        for service in services.values():
            service.stop()
