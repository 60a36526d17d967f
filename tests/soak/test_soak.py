"""``make soak``: a network of simulated clinics against the four services for
``CLINICFLOW_SOAK_MINUTES`` (default 120), bursts and idle stretches, memory sampled;
then every assertion of issue 8: no event lost, none applied twice, every board equal to
a board rebuilt from the topic, billing reconciling to the cent, no notification sent
twice, consumer lag back to zero, and memory bounded (fitted after a warm-up, idle
stretches apart). The report goes to test-artifacts/soak/ (and docs/soak.md when
CLINICFLOW_UPDATE_REPORTS=1) before the verdict, passed or not."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path

import pytest

from shared.topics import FLOOR, NOTIFICATIONS, topic_name
from tests.helpers import ServiceProcess
from tests.integration.notifications_support import MailCatcher
from tests.soak import report
from tests.soak.checks import (
    Checks,
    check_billing,
    check_flow,
    check_lag,
    check_notifications,
    guarded,
)
from tests.soak.conftest import SoakConfig
from tests.soak.memory import MemorySampler, growth
from tests.soak.network import ClinicNetwork, schedule

MINUTES = SoakConfig.from_env().minutes


def warm_up_seconds(first_day_ended: float | None, minutes: float) -> float:
    """Until the first simulated clinic day has ended (its open visits, queues and day
    statistics filled and emptied once), and at least 15 minutes (start-up allocations);
    never past half the run: a run shorter than a clinic day is fitted within its first."""
    return min(max(first_day_ended or math.inf, 15 * 60.0), minutes * 30)


@pytest.mark.soak
@pytest.mark.timeout(int(MINUTES * 60 + 1800))
async def test_a_clinic_network_runs_for_hours_losing_nothing_and_keeping_its_memory(
    soak_config: SoakConfig, soak_services: dict[str, ServiceProcess],
    smtp_server: MailCatcher, kafka_bootstrap: str, topic_prefix: str, soak_dir: Path,
) -> None:
    config = soak_config
    urls = {name: service.url for name, service in soak_services.items()}
    pids = {name: service.process.pid for name, service in soak_services.items()
            if service.process is not None}
    phases = schedule(config.minutes)
    sampler = MemorySampler(pids, soak_dir / "memory.csv", config.sample_seconds)
    started_at, started = report.now(), time.monotonic()
    network = ClinicNetwork(
        bootstrap=kafka_bootstrap, floor_topic=topic_name(FLOOR, topic_prefix),
        clinics=config.clinics, speed=config.speed, checkin_url=urls["checkin"],
        billing_url=urls["billing"], notifications_url=urls["notifications"])
    sampler.start()
    async with network:
        for phase in phases:
            sampler.phase = phase.kind
            if phase.kind == "busy":
                await network.play(phase.seconds)
                await network.settle()
            else:
                await asyncio.sleep(phase.seconds)  # an idle stretch: nothing at all
    sampler.phase = "checks"
    await sampler.stop()
    seconds = time.monotonic() - started
    for name, service in soak_services.items():
        assert service.process is not None and service.process.poll() is None, (
            f"{name} died during the soak: {service.log_path.read_text()[-3000:]}")

    checks = Checks()
    checks_started = time.monotonic()
    checks.add("every walk-in, contact and payment the network sent was accepted",
               not network.expected.http_failures,
               f"{network.expected.walk_ins_via_checkin} walk-ins, "
               f"{network.expected.contacts} contacts; refused: "
               f"{network.expected.http_failures[:5] or 'none'}")
    await guarded(checks, "consumer lag", check_lag(checks, kafka_bootstrap, topic_prefix, urls))
    await guarded(checks, "flow", check_flow(
        checks, kafka_bootstrap, topic_name(FLOOR, topic_prefix), urls["flow"],
        network.expected))
    await guarded(checks, "billing", check_billing(
        checks, urls["billing"], {**os.environ, **soak_services["billing"].env},
        network.expected, started_at.date(), report.now().date()))
    await guarded(checks, "notifications", check_notifications(
        checks, kafka_bootstrap, topic_name(NOTIFICATIONS, topic_prefix), smtp_server))
    checks.facts["checks_seconds"] = time.monotonic() - checks_started
    day_ended = None if network.first_day_ended is None else \
        network.first_day_ended - sampler.started
    checks.facts["first_day_ended"] = day_ended
    warm_up = warm_up_seconds(day_ended, config.minutes)
    growths = [growth(sampler.samples, name, warm_up) for name in pids]
    for g in growths:
        allowed = max(config.slope_bound * g.window_hours, config.noise_floor)
        checks.add(f"{g.service}: RSS growth after the warm-up under {config.slope_bound:g} "
                   f"MiB/h (or {config.noise_floor:g} MiB over a short window)",
                   g.slope * g.window_hours <= allowed,
                   f"slope {g.slope:+.1f} MiB/h over {g.window_hours * 60:.0f} min: "
                   f"{g.slope * g.window_hours:+.1f} MiB fitted, {allowed:.1f} allowed; "
                   f"{g.start:.1f} -> {g.final:.1f} MiB, peak {g.peak:.1f}")
        idle_allowed = max(config.slope_bound * g.idle_hours, config.noise_floor)
        checks.add(f"{g.service}: RSS growth during idle stretches (idle consumers) under "
                   f"the same bound", g.idle_growth <= idle_allowed,
                   f"{g.idle_growth:+.1f} MiB over {g.idle_hours * 60:.0f} idle min "
                   f"({idle_allowed:.1f} allowed); busy {g.busy_growth:+.1f} MiB over "
                   f"{g.busy_hours * 60:.0f} min")

    report.write(report.render(config=config, started=started_at, seconds=seconds,
                               phases=phases, warm_up=warm_up, network=network,
                               checks=checks, growths=growths), soak_dir)
    failed = checks.failed()
    assert not failed, "soak assertions failed (see test-artifacts/soak/soak.md):\n" + \
        "\n".join(f"- {c.asserted}: {c.seen}" for c in failed)
