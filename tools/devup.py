"""``clinicflow up`` (``make up``): the local stack, the four services and a simulated
clinic day, live. Ctrl-C stops everything it started, and nothing else.

Every run is a fresh demo day. Kafka's and Redis's data live in ``up/`` under the state
directory (``CLINICFLOW_STATE_DIR``, default ``.clinicflow/``), with the services' logs;
a run first moves the previous run's ``up/`` aside to ``up.previous/`` (dropping the one
before), so the day's visits are never published onto a floor that has seen them. Only
directories this command made are moved or removed (``is_demo_state``). A run that was
killed (``kill -9``) leaves its processes recorded in ``stack.json``: the next run stops
exactly those (PID, start time and command line checked) before it starts. A lock file
keeps a second ``make up`` from starting while one runs.

``clinicflow up --day --speed S`` plays one whole simulated day instead (``--date``,
default today): every process, the services and the simulated staff, reads the same
warped clock (``CLINICFLOW_CLOCK_WARP``, shared/clock.py ``WarpClock``) that starts
before the earliest clinic opens and runs ``S`` times faster than the wall clock; the
periodic jobs that act on the clock (flow's board refresh, the no-show sweep, the
notifier's tick) run ``S`` times as often. When the last clinic's day has ended it
writes the day's live accuracy next to the backtest of the same simulated day
(``tools.accuracy_day``; ``--report``, default ``up/accuracy-day.md``) and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx

from shared.clinics import ClinicConfigError, ClinicDirectory
from shared.clock import WarpClock
from shared.runner import SERVICES
from tools.stack import (
    REPO,
    LocalStack,
    Managed,
    StackError,
    free_port,
    is_our_process,
    port_is_free,
    process_start_time,
    read_state,
    recorded_processes,
    require_free,
    state_dir,
    stop_recorded,
)

DEFAULT_PORTS = {"checkin": 8001, "flow": 8002, "notifications": 8003, "billing": 8004}
DEMO_DIR = "up"  # under the state directory: this run's Kafka, Redis and logs
MARKER = ".clinicflow-up"  # in every demo directory this command made


def port_setting(service: str) -> str:
    return f"CLINICFLOW_{service.upper()}_PORT"


def service_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """Each service's HTTP port: ``CLINICFLOW_<SERVICE>_PORT`` as the services read it,
    else the default (8001-8004)."""
    ports = {}
    for name, default in DEFAULT_PORTS.items():
        value = environ.get(port_setting(name), str(default))
        try:
            ports[name] = int(value)
        except ValueError:
            raise StackError(f"{port_setting(name)}={value!r} is not a port number") from None
    return ports


def service_env(environ: Mapping[str, str], stack: LocalStack,
                ports: Mapping[str, int]) -> dict[str, str]:
    """What every service is started with: the stack's addresses, the demo clinics (zones
    and names, unless ``CLINICFLOW_CLINICS`` is set already) and the links between them."""
    from tools.ehr_sender import DEFAULT_HL7_PORT, EHR_CLINIC, feed_setting
    from tools.live_demo import DEMO_CLINICS

    ehr_clinic = next(c for c in DEMO_CLINICS if c.clinic_id == EHR_CLINIC)
    return {
        **environ,
        "CLINICFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": stack.redis_url,
        "CLINICFLOW_LOG_FORMAT": environ.get("CLINICFLOW_LOG_FORMAT", "json"),
        "CLINICFLOW_CLINICS": clinics_given(environ),
        # the EHR clinic's schedule and arrivals come over HL7 v2 (tools/ehr_sender.py)
        "CLINICFLOW_CHECKIN_HL7_PORT": environ.get("CLINICFLOW_CHECKIN_HL7_PORT",
                                                   str(DEFAULT_HL7_PORT)),
        "CLINICFLOW_CHECKIN_FEEDS": environ.get("CLINICFLOW_CHECKIN_FEEDS")
        or feed_setting(ehr_clinic),
        **{port_setting(name): str(port) for name, port in ports.items()},
        # the nurse station (served by flow) also shows notifications' room-ready alerts
        "CLINICFLOW_FLOW_NURSE_ALERTS_URL": environ.get(
            "CLINICFLOW_FLOW_NURSE_ALERTS_URL", f"http://127.0.0.1:{ports['notifications']}"),
        "CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS": environ.get(
            "CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS",
            json.dumps([f"http://{host}:{ports['flow']}" for host in ("127.0.0.1", "localhost")])),
        # the feedback links sent after checkout point at notifications' form
        "CLINICFLOW_NOTIFICATIONS_PUBLIC_URL": environ.get(
            "CLINICFLOW_NOTIFICATIONS_PUBLIC_URL", f"http://127.0.0.1:{ports['notifications']}"),
    }


def clinics_given(environ: Mapping[str, str]) -> str:
    """The ``CLINICFLOW_CLINICS`` every service is given: the one set, else the demo's."""
    from tools.live_demo import clinics_setting

    return environ.get("CLINICFLOW_CLINICS") or clinics_setting()


def clinic_directory(env: Mapping[str, str]) -> ClinicDirectory:
    """The clinics the services are given (StackError naming the bad entry otherwise)."""
    try:
        return ClinicDirectory.parse(env.get("CLINICFLOW_CLINICS"),
                                     env.get("CLINICFLOW_DEFAULT_TIMEZONE") or "UTC")
    except ClinicConfigError as exc:
        raise StackError(str(exc)) from None


def available_services() -> list[str]:
    """The services whose code is present in this checkout."""
    return [name for name, (module, _s, _p) in SERVICES.items()
            if importlib.util.find_spec(module) is not None]


# ------------------------------------------------------------------ a fresh day each run


def is_demo_state(path: Path) -> bool:
    """True when ``path`` is a demo directory this command made: it holds the marker, or
    (made before there was one) nothing but Kafka's and Redis's data."""
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / MARKER).is_file():
        return True
    return {child.name for child in path.iterdir()} <= {"kafka", "redis"}


def fresh_demo_dir(data: Path) -> Path:
    """An empty ``data/up`` for this run; the previous run's is moved to ``up.previous``
    (and the one before is removed). Refuses (StackError) to touch a directory of that
    name that this command did not make."""
    current, previous = data / DEMO_DIR, data / f"{DEMO_DIR}.previous"
    for leftover in data.glob(f"{DEMO_DIR}.discarded-*"):  # a removal that was cut short
        shutil.rmtree(leftover, ignore_errors=True)
    for path in (current, previous):
        if path.exists() and not is_demo_state(path):
            raise StackError(f"{path} was not made by `make up`, so it is left alone: move "
                             "it away, or choose another CLINICFLOW_STATE_DIR")
    if previous.exists():
        # renamed first, so an interrupted removal never leaves a half-deleted directory
        # that looks like someone else's
        discarded = data / f"{DEMO_DIR}.discarded-{uuid.uuid4().hex[:8]}"
        previous.rename(discarded)
        shutil.rmtree(discarded, ignore_errors=True)
    if current.exists():
        current.rename(previous)
    current.mkdir(parents=True)
    (current / MARKER).write_text(json.dumps({
        "made_by": "clinicflow up", "pid": os.getpid(),
        "at": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
    return current


def stop_leftovers(state_file: Path, demo_dir: Path, say: Callable[[str], None]) -> None:
    """Stop what a killed ``make up`` left running (recorded in ``state_file``), exactly
    those processes. A running ``clinicflow stack up`` is left alone: StackError."""
    state = read_state(state_file)
    if state is None:
        return
    if state.get("data") != str(demo_dir):  # `clinicflow stack up`'s own stack
        alive = [m.name for m in recorded_processes(state) if m.alive()]
        if alive:
            raise StackError(f"`clinicflow stack up` is running ({', '.join(alive)}, recorded "
                             f"in {state_file}): stop it with `make down` first; `make up` "
                             "starts its own")
        return
    owner = state.get("owner") or {}
    if is_our_process(int(owner.get("pid") or 0), None, owner.get("started")):
        raise StackError(f"`make up` is already running (pid {owner['pid']}): Ctrl-C it there "
                         "or `make down`")
    if any(m.alive() for m in recorded_processes(state)):
        say("a previous `make up` was killed; stopping what it left running ...")
    stop_recorded(state_file, say)


@contextlib.contextmanager
def single_run(lock: Path) -> Iterator[IO[str]]:
    """Held while this run lasts; a second ``make up`` gets a StackError. The kernel lets
    go of it when this process ends, however it ends (the services do not inherit it)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError("`make up` is already running from this directory "
                             f"({lock.parent}): Ctrl-C it there, or `make down`") from None
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -------------------------------------------------------------------------- services


INSTANCE_PORT_STEP = 100  # the k-th instance of a service listens 100 * (k - 1) higher


def instance_ports(ports: Mapping[str, int], instances: int) -> dict[str, int]:
    """Every process's HTTP port: ``flow`` on its port, ``flow.2`` 100 higher, ``flow.3``
    200 higher... (``clinicflow up --instances N``)."""
    every = dict(ports)
    for k in range(2, instances + 1):
        every.update({f"{name}.{k}": port + INSTANCE_PORT_STEP * (k - 1)
                      for name, port in ports.items()})
    return every


def _start_services(stack: LocalStack, env: dict[str, str], logs: Path,
                    ports: Mapping[str, int]) -> dict[str, subprocess.Popen[bytes]]:
    """One process per entry of ``ports`` whose service is present (``flow.2`` is a
    second flow in the same consumer group: the partitions are shared out)."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    available = available_services()
    for name in (n for n in ports if n.split(".")[0] in available):
        service = name.split(".")[0]
        own = {port_setting(service): str(ports[name])}
        if name != service:  # one MLLP listener is enough (the first instance's)
            own["CLINICFLOW_CHECKIN_HL7_PORT"] = "0"
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", service],
            cwd=REPO, env={**env, **own}, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        started[name] = process
        # recorded at once: a run killed from here on has them stopped by the next one
        stack.add_companion(Managed(name, process.pid, ports[name], f"tools.cli run {service}",
                                    logs / f"{name}.log", process,
                                    process_start_time(process.pid)))
    return started


async def _wait_ready(processes: dict[str, subprocess.Popen[bytes]], logs: Path,
                      ports: Mapping[str, int], stop: asyncio.Event,
                      timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(processes)
    async with httpx.AsyncClient() as client:
        while pending and time.monotonic() < deadline and not stop.is_set():
            for name in list(pending):
                if processes[name].poll() is not None:
                    tail = (logs / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited at start:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(f"http://127.0.0.1:{ports[name]}/readyz",
                                              timeout=2)
                    if answer.status_code == 200:
                        pending.discard(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.3)
    if pending and not stop.is_set():
        raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))} "
                           f"(logs in {logs})")


def check_playable(day: date, today: date) -> None:
    """Refuse a ``--day`` date check-in could not keep: its schedule and visits expire
    ``KEEP_DAYS`` after their day on Redis's own clock, which is not warped, so a day
    older than that would be imported (2xx) and deleted at once."""
    from services.checkin.store import KEEP_DAYS

    earliest = today - timedelta(days=KEEP_DAYS - 1)
    if day < earliest:
        raise StackError(f"--date {day}: check-in keeps a day's schedule {KEEP_DAYS} days "
                         f"on Redis's clock, which the played day does not warp; play "
                         f"{earliest} or later")


def _banner(stack: LocalStack, elapsed: float, ports: Mapping[str, int],
            directory: ClinicDirectory, logs: Path) -> str:
    from tools.live_demo import DEMO_CLINICS

    flow = f"http://127.0.0.1:{ports['flow']}"
    lines = [
        "",
        f"clinicflow is up ({elapsed:.0f}s). A fresh simulated day is playing live in each "
        "clinic, on the clinic's own clock.",
        "",
        f"  Kafka   {stack.kafka_bootstrap}     Redis  {stack.redis_url}",
        "",
    ]
    pages = importlib.util.find_spec("services.flow.pages") is not None
    for demo in DEMO_CLINICS:
        clinic = directory[demo.clinic_id]
        lines.append(f"  {clinic.display_name} ({demo.clinic_id}, {clinic.zone.key}):")
        if pages:
            lines.append(f"    {'waiting room':13}{flow}/screens/{demo.clinic_id}/waiting-room"
                         "?token=dev-screen")
            for page, token in (("nurse", "dev-nurse"), ("operations", "dev-manager")):
                if (REPO / "services" / "flow" / "templates" / f"{page}.html").exists():
                    lines.append(f"    {page:13}{flow}/screens/{demo.clinic_id}/{page}"
                                 f"?token={token}")
            lines.append(f"    {'kiosk':13}http://127.0.0.1:{ports['checkin']}/kiosk/"
                         f"{demo.clinic_id}?token=dev-kiosk")
            if "notifications" in ports:
                lines.append(f"    {'complaints':13}http://127.0.0.1:{ports['notifications']}"
                             f"/screens/{demo.clinic_id}/complaints?token=dev-front-desk")
        lines.append(f"    {'board (JSON)':13}curl -H 'Authorization: Bearer dev-manager' "
                     f"{flow}/clinics/{demo.clinic_id}/board")
    lines += [
        "",
        "  Live board (SSE):    " f"curl -N -H 'Authorization: Bearer dev-screen' "
        f"{flow}/clinics/north/stream",
        "  APIs (OpenAPI):      " + "  ".join(
            f"http://127.0.0.1:{port}/docs ({name})" for name, port in ports.items()),
        "  Metrics:             " + "  ".join(
            f"http://127.0.0.1:{port}/metrics" for port in ports.values()),
        f"  Logs:                {logs}",
        "",
        "Development tokens: dev-front-desk, dev-kiosk, dev-nurse, dev-billing, dev-manager,"
        " dev-screen.",
        "Ctrl-C stops everything. The next `make up` starts a fresh day (this one is then "
        f"kept in {logs.parent.with_name(DEMO_DIR + '.previous')}).",
    ]
    return "\n".join(lines)


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes.values():
        remaining = max(0.1, deadline - time.monotonic())
        try:
            process.wait(remaining)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# ------------------------------------------------------------------ --day: a whole day

DAY_LEAD = timedelta(minutes=45)  # of the warped clock before the day's first fact
START_WALL_SECONDS = 45.0  # the warped clock stands before its origin while things start
SETTLE_WALL_SECONDS = 15.0  # after the last fact, before the figures are read
# periodic jobs that act on the clock, and their settings' defaults: run S times as often
ON_THE_CLOCK = {"CLINICFLOW_FLOW_TICK_SECONDS": ("shared.settings", "FlowSettings",
                                                 "flow_tick_seconds"),
                "CLINICFLOW_CHECKIN_NO_SHOW_CHECK_SECONDS": ("shared.settings",
                                                             "CheckinSettings",
                                                             "checkin_no_show_check_seconds"),
                "CLINICFLOW_NOTIFICATIONS_TICK_SECONDS": ("shared.settings",
                                                          "NotificationsSettings",
                                                          "notifications_tick_seconds")}
FASTEST_TICK_SECONDS = 0.25


def day_clock(first: datetime, speed: float, wall_now: float) -> WarpClock:
    """The warped clock of a played day whose first fact is at ``first``: it reads
    ``DAY_LEAD`` before that ``START_WALL_SECONDS`` from now (while Kafka and the
    services start), then runs ``speed`` times the wall clock."""
    return WarpClock(first - DAY_LEAD, wall_now + START_WALL_SECONDS, speed)


def day_env(clock: WarpClock, environ: Mapping[str, str]) -> dict[str, str]:
    """What the services are given on top for a played day: the warped clock, and the
    periodic jobs that act on it ``speed`` times as often (each at most every
    ``FASTEST_TICK_SECONDS``; a value set in the environment is kept)."""
    env = {"CLINICFLOW_CLOCK_WARP": clock.setting()}
    for name, (module, settings_class, field) in ON_THE_CLOCK.items():
        if name in environ:
            continue
        default = getattr(importlib.import_module(module), settings_class).model_fields[
            field].default
        env[name] = f"{max(FASTEST_TICK_SECONDS, float(default) / clock.speed):g}"
    return env


def load_average() -> str:
    """The machine's load (``/proc/loadavg``), or ``unknown``."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def write_day_report(day: date, notifications_url: str, path: Path, notes: list[str],
                     directory: ClinicDirectory) -> str:
    """The played day's live accuracy next to the backtest's (tools.accuracy_day), written
    to ``path``; returns the markdown."""
    from tools.accuracy_day import backtest_day, markdown, read_live
    from tools.live_demo import DEMO_CLINICS

    live = read_live(notifications_url, day, [c.clinic_id for c in DEMO_CLINICS])
    text = markdown(live, backtest_day(day, directory=directory), day=day, notes=notes)
    path.write_text(text)
    return text


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from shared.topics import FLOOR, topic_name
    from tools.ehr_sender import play_with_ehr as play

    if args.print_clinics:  # what service_env gives every service
        print(clinics_given(os.environ))
        return 0
    started = time.monotonic()
    data = state_dir()
    # until the event loop takes them over: a terminal closed or a `kill` while Kafka
    # starts still stops what was started
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        with single_run(data / "up.lock"):
            return _run_locked(args, data, started, play, topic_name(FLOOR, _topic_prefix()))
    except StackError as exc:
        print(f"clinicflow up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def staff_doors(ports: dict[str, int]) -> dict[str, str | None]:
    """flow's, billing's and notifications' HTTP bases, through which the demo's
    simulated staff act (None: the service is not part of this checkout)."""
    running = set(available_services())
    return {f"{name}_url": f"http://127.0.0.1:{ports[name]}" if name in running else None
            for name in ("flow", "billing", "notifications")}


def _topic_prefix() -> str:
    return os.environ.get("CLINICFLOW_TOPIC_PREFIX", "")


def _run_locked(args: argparse.Namespace, data: Path, started: float, play: Any,
                floor_topic: str) -> int:
    kafka_port = int(os.environ.get("CLINICFLOW_KAFKA_PORT", "9092"))
    redis_port = int(os.environ.get("CLINICFLOW_REDIS_PORT", "6379"))
    ports = service_ports(os.environ)
    processes_ports = instance_ports(ports, args.instances)
    state_file = data / "stack.json"  # as `clinicflow stack up` records, so `make down` works
    stop_leftovers(state_file, data / DEMO_DIR, _say)
    for name, port in processes_ports.items():
        require_free(port, name, port_setting(name.split(".")[0]))
    demo = fresh_demo_dir(data)
    logs = demo / "logs"
    logs.mkdir()
    stack = LocalStack(demo, kafka_port=kafka_port, redis_port=redis_port,
                       state_file=state_file)
    env = service_env(os.environ, stack, ports)
    warped: WarpClock | None = None
    if args.day:
        from tools.live_demo import day_span

        check_playable(args.date, datetime.now(UTC).date())
        first, last = day_span(args.date, directory=clinic_directory(env))
        warped = day_clock(first, args.speed, time.time())
        env.update(day_env(warped, os.environ))
    if "CLINICFLOW_CHECKIN_HL7_PORT" in os.environ:
        require_free(int(env["CLINICFLOW_CHECKIN_HL7_PORT"]), "checkin's HL7 listener",
                     "CLINICFLOW_CHECKIN_HL7_PORT")
    elif not port_is_free(int(env["CLINICFLOW_CHECKIN_HL7_PORT"])):
        env["CLINICFLOW_CHECKIN_HL7_PORT"] = str(free_port())  # the banner says which
    if args.instances > 1 and not os.environ.get("CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS"):
        # every flow instance's nurse station reads the room-ready alerts
        env["CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS"] = json.dumps([
            f"http://{host}:{port}" for name, port in processes_ports.items()
            if name.split(".")[0] == "flow" for host in ("127.0.0.1", "localhost")])
    directory = clinic_directory(env)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stop = asyncio.Event()
    report_path = Path(args.report) if args.report else demo / "accuracy-day.md"
    wall_began = (time.time(), load_average())
    outcome: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        _say(f"starting {', '.join(available_services())}"
             + (f", {args.instances} instances of each" if args.instances > 1 else "") + " ...")
        processes.update(_start_services(stack, env, logs, processes_ports))
        await _wait_ready(processes, logs, processes_ports, stop)
        if stop.is_set():
            return

        def caught_up(count: int) -> None:
            _say(f"the day so far is published ({count} events); the rest plays live")

        hl7 = ("127.0.0.1", int(env["CLINICFLOW_CHECKIN_HL7_PORT"]))
        # a played day: its facts keep their times, each waits for them on the warped clock
        timing: dict[str, Any] = {"speed": args.speed} if warped is None else {
            "speed": 1.0, "clock": warped.now, "day": args.date, "rate": warped.speed}
        feeder = asyncio.create_task(play(stack.kafka_bootstrap, floor_topic, hl7=hl7,
                                          checkin_url=f"http://127.0.0.1:{ports['checkin']}",
                                          stop=stop, directory=directory,
                                          on_caught_up=caught_up, **timing,
                                          **staff_doors(ports)))
        _say(_banner(stack, time.monotonic() - started, ports, directory, logs))
        if warped is not None:
            _say(f"  Played day:          {args.date} on a clock {warped.speed:g} times the "
                 f"wall's, now {warped.now():%H:%M} UTC; its last fact at {last:%H:%M} UTC "
                 f"(in about {warped.wall_seconds(last - warped.now()) / 60:.0f} min), then "
                 f"the accuracy report ({report_path}) and a stop")
        from tools.ehr_sender import EHR_CLINIC

        _say(f"  EHR feed:            {directory[EHR_CLINIC].display_name}'s bookings and "
             f"arrivals come from its EHR over HL7 v2 (MLLP {hl7[0]}:{hl7[1]}, "
             "tools/ehr_sender.py)")
        if args.instances > 1:
            _say("  More instances, each in its service's consumer group (the partitions "
                 "are shared out):\n    " + "  ".join(
                     f"{name} http://127.0.0.1:{port}" for name, port in
                     processes_ports.items() if "." in name))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({feeder, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if feeder.done() and feeder.exception() is not None:
            _say(f"clinicflow up: the demo stopped: {feeder.exception()!r}")
        elif feeder.done() and warped is not None and not stop.is_set():
            await _report_day(args.date, warped, wall_began, report_path, directory,
                              f"http://127.0.0.1:{ports['notifications']}", stop, outcome)
            stop.set()
        await stop.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(feeder, 10)

    try:
        _say("starting Kafka and Redis (a fresh day: the previous one is set aside) ...")
        stack.start(topics_prefix=_topic_prefix())
        asyncio.run(main())
    except RuntimeError as exc:
        print(f"clinicflow up: {exc}", file=sys.stderr)
        return 1
    finally:
        # the clean-up is short (services 15 s, Kafka 20 s at most): let nothing cut it
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        _say("\nstopping ...")
        _stop(processes)
        stack.stop()
        _say("stopped: services, Kafka and Redis.")
    return outcome[0] if outcome else 0


async def _report_day(day: date, warped: WarpClock, began: tuple[float, str], path: Path,
                      directory: ClinicDirectory, notifications_url: str,
                      stop: asyncio.Event, outcome: list[int]) -> None:
    """The played day is over: let the services read its last facts, then write the
    accuracy report (``outcome``: 1 when it could not be written)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), SETTLE_WALL_SECONDS)
    ended = warped.now()
    wall, load = began
    notes = [f"command: `clinicflow up --day --date {day} --speed "
             f"{warped.speed:g}` (the report: tools/accuracy_day.py)",
             f"warped clock {warped.setting()} (shared/clock.py WarpClock); the day "
             f"played in {(time.time() - wall) / 60:.1f} min of wall time, ending at "
             f"{ended:%Y-%m-%d %H:%M} UTC on the warped clock",
             f"machine load (/proc/loadavg, 1/5/15 min): {load} at the start, "
             f"{load_average()} at the end"]
    try:
        text = await asyncio.to_thread(write_day_report, day, notifications_url, path,
                                       notes, directory)
    except Exception as exc:
        _say(f"clinicflow up: the accuracy report could not be written: {exc!r}")
        outcome.append(1)
        return
    _say("\n" + text + f"\n(written to {path})")


def _say(text: str) -> None:
    """Print, unless the terminal is gone (a closed pipe must not stop the clean-up)."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up", help="the whole local stack, the four services and a live simulated clinic day "
        "(a fresh day each run)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="play the simulated day this many times faster (default 1)")
    parser.add_argument("--day", action="store_true",
                        help="play one whole simulated day (from before the earliest "
                        "opening to after the last closing) on a clock --speed times the "
                        "wall's, then write its live accuracy next to the backtest's and "
                        "stop")
    parser.add_argument("--date", type=date.fromisoformat,
                        default=datetime.now(UTC).date(),
                        help="with --day: the day to play (default today, UTC)")
    parser.add_argument("--report", default=None,
                        help="with --day: where to write the report (default "
                        "up/accuracy-day.md under the state directory)")
    parser.add_argument("--instances", type=_instances, default=1,
                        help="processes of each service, sharing its consumer group's "
                        "partitions (default 1; the k-th on its port + 100*(k-1))")
    parser.add_argument("--print-clinics", action="store_true",
                        help="print the demo's clinics as every service is given them "
                        "(CLINICFLOW_CLINICS: JSON) and exit, e.g. for `clinicflow billing "
                        "reconcile` beside a running `make up`")
    parser.set_defaults(func=run)


def _instances(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 4:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of processes from 1 to 4")
    return count
