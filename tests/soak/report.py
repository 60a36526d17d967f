"""docs/soak.md, written by the soak itself: what ran, what memory did, every assertion
and its result. Always to test-artifacts/soak/soak.md; to docs/soak.md too when
``CLINICFLOW_UPDATE_REPORTS=1`` (the committed report is a run's own output)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import machine
from tests.helpers import REPO
from tests.soak.checks import Checks
from tests.soak.memory import Growth

INTRO = """# Soak: hours of a simulated clinic network

Written by the soak itself (`tests/soak/`, `make soak`; `CLINICFLOW_SOAK_MINUTES` sets
the length, default 120). A real Apache Kafka broker and Redis server on loopback, the
four services as separate processes (`clinicflow run NAME`), a local SMTP server, and a
network of simulated clinics (`tools/simulate.py`) played in accelerated time:
bursts of clinic days separated by idle stretches with no events and no requests at all.
Floor facts go onto the floor topic with a plain producer, walk-ins check in through
checkin's API, every checkout carries CPT codes (billing prices it from the floor), a
share of the visits pays at the billing desk and a share leaves an e-mail address with
notifications. Each service's RSS (`/proc/<pid>/status` VmRSS) is sampled into
`test-artifacts/soak/memory.csv`.
"""


def render(*, config: Any, started: datetime, seconds: float, phases: list[Any],
           warm_up: float, network: Any, checks: Checks, growths: list[Growth]) -> str:
    busy = sum(p.seconds for p in phases if p.kind == "busy")
    idle = sum(p.seconds for p in phases if p.kind == "idle")
    facts = checks.facts
    passed = sum(c.passed for c in checks.items)
    lines = [INTRO,
             f"Last run: {started:%Y-%m-%d %H:%M} UTC, **{passed} of {len(checks.items)} "
             f"assertions held**.\n",
             "## The run\n",
             "| | |", "|---|---|",
             f"| duration | {seconds / 60:.1f} min ({config.minutes:g} asked): "
             f"{len(phases) // 2} cycles, {busy / 60:.1f} min busy, {idle / 60:.1f} min idle "
             f"(stretches of {phases[1].seconds / 60:.1f} min) |",
             f"| clinics | {config.clinics} (every scenario of the simulator) |",
             f"| simulated time | {config.speed:g}x while busy; {network.sim_days_started} "
             f"clinic day(s) begun |",
             f"| floor events | {facts.get('floor_records', '?')} on the topic "
             f"({network.expected.floor_published} from the network, "
             f"{network.expected.walk_ins_via_checkin} walk-ins published by checkin); "
             f"{facts.get('floor_records', 0) / max(busy, 1):.1f}/s while busy |",
             f"| flow consumed | {_plain(facts.get('flow_consumed', {}))}; dead letters "
             f"{facts.get('flow_dead_letters', '?'):g} "
             f"({_plain(dict(facts.get('rebuilt_dead_letters', {}))) or 'none'}) |",
             f"| billing | {sum(network.expected.checkouts.values())} checkouts, "
             f"{facts.get('charged_cents', 0) / 100:,.2f} charged, "
             f"{facts.get('paid_cents', 0) / 100:,.2f} paid at the desks; business days "
             f"{', '.join(facts.get('billing_days', []))} |",
             f"| notifications | {network.expected.contacts} contacts recorded, "
             f"{facts.get('mails', '?')} e-mails received, "
             f"{facts.get('notifications_failed', '?')} failure events |",
             f"| consumer groups | {_plain(facts.get('groups', {}))} (lag at the end) |",
             f"| the checks | {facts.get('checks_seconds', 0):.0f} s after the last idle "
             f"stretch |",
             "",
             "## Memory (RSS, MiB)\n",
             f"Warm-up: the first {warm_up / 60:.1f} min (kept in the CSV, left out of the "
             f"fit): until the first simulated clinic day ended, at least 15 min, at most "
             f"half the run; {_first_day(facts.get('first_day_ended'))}. "
             f"Slope: least squares over every later sample. Busy and "
             f"idle: RSS change summed over the busy (resp. idle) stretches after the "
             f"warm-up, per hour of such stretches. Bound: {config.slope_bound:g} MiB/h; a "
             f"window too short to tell a slope from noise may grow "
             f"{config.noise_floor:g} MiB in all.\n",
             "| service | after warm-up | peak | final | slope MiB/h | busy MiB/h | "
             "idle MiB/h | idle growth MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for g in growths:
        lines.append(f"| {g.service} | {g.start:.1f} | {g.peak:.1f} | {g.final:.1f} | "
                     f"{g.slope:+.1f} | {g.busy_per_hour:+.1f} | {g.idle_per_hour:+.1f} | "
                     f"{g.idle_growth:+.1f} |")
    lines += ["", "## Assertions\n", "| asserted | result | seen |", "|---|---|---|"]
    for check in checks.items:
        seen = check.seen.replace("|", "/").replace("\n", " ")
        lines.append(f"| {check.asserted} | {'passed' if check.passed else 'FAILED'} | "
                     f"{seen[:600]} |")
    facts_of_machine = machine()
    lines += ["", "## Machine\n",
              f"{facts_of_machine['cores']} cores, {facts_of_machine['memory_gib']} GiB, "
              f"Python {facts_of_machine['python']}, {facts_of_machine['java']}, "
              f"{facts_of_machine['platform']}; other work may have shared the machine.", ""]
    return "\n".join(lines)


def _first_day(ended: float | None) -> str:
    if ended is None:
        return ("no clinic day ended in this run, so the fitted window lies within the "
                "first day, while its visits and statistics still fill: it tells a leak "
                "from that filling only over hours")
    return f"the first clinic day ended {ended / 60:.1f} min in"


def _plain(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in mapping.items())


def write(text: str, soak_dir: Path) -> None:
    (soak_dir / "soak.md").write_text(text)
    if os.environ.get("CLINICFLOW_UPDATE_REPORTS") == "1":
        (REPO / "docs" / "soak.md").write_text(text)


def now() -> datetime:
    return datetime.now(UTC)
