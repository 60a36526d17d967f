"""``clinicflow up`` (``make up``): the local stack, the four services and a simulated
clinic day, live. Ctrl-C stops everything it started, and nothing else."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from shared.runner import SERVICES
from tools.stack import REPO, LocalStack, StackError, state_dir

PORTS = {"checkin": 8001, "flow": 8002, "notifications": 8003, "billing": 8004}


def _service_env(stack: LocalStack) -> dict[str, str]:
    return {
        **os.environ,
        "CLINICFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": stack.redis_url,
        "CLINICFLOW_LOG_FORMAT": os.environ.get("CLINICFLOW_LOG_FORMAT", "json"),
        # the nurse station (served by flow) also shows notifications' room-ready alerts
        "CLINICFLOW_FLOW_NURSE_ALERTS_URL": os.environ.get(
            "CLINICFLOW_FLOW_NURSE_ALERTS_URL", f"http://127.0.0.1:{PORTS['notifications']}"),
        "CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS": os.environ.get(
            "CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS",
            json.dumps([f"http://{host}:{PORTS['flow']}" for host in ("127.0.0.1", "localhost")])),
    }


def available_services() -> list[str]:
    """The services whose code is present in this checkout."""
    return [name for name, (module, _s, _p) in SERVICES.items()
            if importlib.util.find_spec(module) is not None]


def _start_services(stack: LocalStack, logs: Path) -> dict[str, subprocess.Popen[bytes]]:
    env = _service_env(stack)
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name in available_services():
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        started[name] = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", name],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    return started


async def _wait_ready(processes: dict[str, subprocess.Popen[bytes]], logs: Path,
                      timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(processes)
    async with httpx.AsyncClient() as client:
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if processes[name].poll() is not None:
                    tail = (logs / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited at start:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(f"http://127.0.0.1:{PORTS[name]}/readyz",
                                              timeout=2)
                    if answer.status_code == 200:
                        pending.discard(name)
            await asyncio.sleep(0.3)
    if pending:
        raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))} "
                           f"(logs in {logs})")


def _banner(stack: LocalStack, elapsed: float) -> str:
    flow = "http://127.0.0.1:8002"
    lines = [
        "",
        f"clinicflow is up ({elapsed:.0f}s). A simulated clinic day is playing live.",
        "",
        f"  Kafka   {stack.kafka_bootstrap}     Redis  {stack.redis_url}",
        "",
    ]
    if importlib.util.find_spec("services.flow.pages") is not None:
        lines.append("  Waiting-room screens (TV):")
        for clinic in ("north", "south", "east"):
            lines.append(f"    {flow}/screens/{clinic}/waiting-room?token=dev-screen")
        for page, token in (("nurse", "dev-nurse"), ("operations", "dev-manager")):
            if (REPO / "services" / "flow" / "templates" / f"{page}.html").exists():
                lines.append(f"  {page.title() + ':':20} {flow}/screens/north/{page}?token={token}")
        lines.append(f"  {'Kiosk:':20} http://127.0.0.1:{PORTS['checkin']}/kiosk/north"
                     "?token=dev-kiosk")
    lines += [
        "  Live board (SSE):    " f"curl -N -H 'Authorization: Bearer dev-screen' "
        f"{flow}/clinics/north/stream",
        "  Board (JSON):        " f"curl -H 'Authorization: Bearer dev-manager' "
        f"{flow}/clinics/north/board",
        "  APIs (OpenAPI):      http://127.0.0.1:8001/docs (checkin)  :8002/docs (flow)  "
        ":8003/docs (notifications)  :8004/docs (billing)",
        "  Metrics:             http://127.0.0.1:800[1-4]/metrics",
        f"  Logs:                {state_dir() / 'logs'}",
        "",
        "Development tokens: dev-front-desk, dev-kiosk, dev-nurse, dev-billing, dev-manager,"
        " dev-screen.",
        "Ctrl-C stops everything.",
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


def run(args: argparse.Namespace) -> int:
    from shared.topics import FLOOR, topic_name
    from tools.live_demo import play

    started = time.monotonic()
    kafka_port = int(os.environ.get("CLINICFLOW_KAFKA_PORT", "9092"))
    redis_port = int(os.environ.get("CLINICFLOW_REDIS_PORT", "6379"))
    data = state_dir()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # recorded like `clinicflow stack up`, so `make down` can stop it if this terminal is lost
    stack = LocalStack(data / "up", kafka_port=kafka_port, redis_port=redis_port,
                       state_file=data / "stack.json")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    print("starting Kafka and Redis ...", flush=True)
    try:
        stack.start(topics_prefix="")
    except StackError as exc:
        print(f"clinicflow up: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"starting {', '.join(available_services())} ...", flush=True)
        processes.update(_start_services(stack, logs))
        await _wait_ready(processes, logs)
        feeder = asyncio.create_task(play(stack.kafka_bootstrap, topic_name(FLOOR, ""),
                                          speed=args.speed, stop=stop))
        print(_banner(stack, time.monotonic() - started), flush=True)
        await stop.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(feeder, 10)

    try:
        asyncio.run(main())
    except RuntimeError as exc:
        print(f"clinicflow up: {exc}", file=sys.stderr)
        return 1
    finally:
        _say("\nstopping ...")
        _stop(processes)
        stack.stop()
        _say("stopped: services, Kafka and Redis.")
    return 0


def _say(text: str) -> None:
    """Print, unless the terminal is gone (a closed pipe must not stop the clean-up)."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up", help="the whole local stack, the four services and a live simulated clinic day")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="play the simulated day this many times faster (default 1)")
    parser.set_defaults(func=run)
