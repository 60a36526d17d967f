"""The local stack without Docker: a real Apache Kafka broker (KRaft, one node) and a
real Redis server on 127.0.0.1, owned by the project.

``clinicflow stack up [--detach] | status | down``; tests and ``make up`` use the
same Python API (``LocalStack``). Kafka's jars come from Maven Central through
Maven on first use (deploy/local/kafka-pom.xml, a pinned version) and are cached;
the broker runs on the machine's Java 17. Data and logs live in a state
directory (``.clinicflow/`` by default, git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KAFKA_VERSION = "4.4.0"
POM = REPO / "deploy" / "local" / "kafka-pom.xml"
LOG4J = REPO / "deploy" / "local" / "log4j2.properties"


class StackError(RuntimeError):
    """Something the local stack needs is missing; the message says how to fix it."""


def state_dir() -> Path:
    return Path(os.environ.get("CLINICFLOW_STATE_DIR", REPO / ".clinicflow"))


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "clinicflow"
    return Path(os.environ.get("CLINICFLOW_CACHE_DIR", default)) / f"kafka-{KAFKA_VERSION}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def require_free(port: int, what: str, setting: str) -> None:
    if not port_is_free(port):
        raise StackError(f"port {port} on 127.0.0.1 is taken, so {what} cannot start there; "
                         f"stop what uses it or choose another port with {setting}=<port>")


# ------------------------------------------------------------------ kafka jars


def ensure_kafka_jars() -> Path:
    """The directory of Kafka's jars, fetched by Maven from Maven Central on first use."""
    libs = cache_dir() / "libs"
    marker = cache_dir() / "complete"
    if marker.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("java") is None:
        raise StackError("Java is not installed: Apache Kafka needs Java 17 "
                         "(apt-get install -y openjdk-17-jre-headless)")
    if shutil.which("mvn") is None:
        raise StackError("Maven is not installed: it fetches Kafka's jars from Maven Central "
                         "(apt-get install -y maven)")
    libs.mkdir(parents=True, exist_ok=True)
    print(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...",
          file=sys.stderr)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise StackError(f"Maven could not fetch Kafka's jars:\n{tail}")
    marker.write_text(KAFKA_VERSION)
    return libs


# ----------------------------------------------------------------- processes


@dataclass
class Managed:
    """A server process this stack started."""

    name: str
    pid: int
    port: int
    cmdline_hint: str
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return is_our_process(self.pid, self.cmdline_hint)


def is_our_process(pid: int, hint: str) -> bool:
    """True when ``pid`` runs and its command line contains ``hint`` (never kill a stranger)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return hint in cmdline


def stop_process(pid: int, hint: str, grace: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if ``pid`` is the process we started."""
    if not is_our_process(pid, hint):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not is_our_process(pid, hint):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def kafka_properties(data: Path, port: int, controller_port: int) -> str:
    """server.properties for a single KRaft node (broker + controller) on loopback."""
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data / 'kafka-data'}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "log.retention.check.interval.ms=300000",
        "",
    ])


def start_kafka(data: Path, port: int, controller_port: int) -> Managed:
    """Format storage (first time) and start the broker; returns once it is spawned."""
    libs = ensure_kafka_jars()
    data.mkdir(parents=True, exist_ok=True)
    props = data / "server.properties"
    props.write_text(kafka_properties(data, port, controller_port))
    classpath = f"{libs}/*"
    java = shutil.which("java") or "java"
    if not (data / "kafka-data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            [java, "-cp", classpath, f"-Dlog4j2.configurationFile={LOG4J}",
             f"-Dkafka.logs.dir={data}", "kafka.tools.StorageTool", "format", "-t",
             cluster_id, "-c", str(props)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
    log = data / "kafka.out"
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
         f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.dir={data}",
         "-cp", classpath, "kafka.Kafka", str(props)],
        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Managed("kafka", process.pid, port, str(props), log, process)


def ensure_redis_server() -> str:
    """The redis-server binary; installed from Debian's packages when missing and root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing redis-server with apt-get ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env,
                       capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=False,
                       env=env, capture_output=True)
        found = shutil.which("redis-server")
        if found:
            return found
    raise StackError("redis-server is not installed: apt-get install -y redis-server")


def start_redis(data: Path, port: int, password: str | None = None) -> Managed:
    binary = ensure_redis_server()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "redis.out"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--appendonly", "yes", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", str(log)]
    if password:
        args += ["--requirepass", password]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return Managed("redis", process.pid, port, f"127.0.0.1:{port}", log, process)


async def wait_kafka(bootstrap: str, managed: Managed | None = None,
                     timeout: float = 90.0) -> None:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "unable to connect" is expected
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if managed is not None and not managed.alive():
            raise StackError(f"Kafka exited while starting; see {managed.log}:\n"
                             + _tail(managed.log))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.3)
    raise StackError(f"Kafka did not answer on {bootstrap} within {timeout:.0f}s ({last!r}):\n"
                     + (_tail(managed.log) if managed else ""))


async def wait_redis(url: str, managed: Managed | None = None, timeout: float = 30.0) -> None:
    from redis.asyncio import Redis

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed is not None and not managed.alive():
            raise StackError(f"redis-server exited while starting:\n{_tail(managed.log)}")
        client = Redis.from_url(url, socket_connect_timeout=1)
        try:
            if await client.ping():
                return
        except Exception:
            pass
        finally:
            await client.aclose()
        await asyncio.sleep(0.1)
    raise StackError(f"Redis did not answer on {url} within {timeout:.0f}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class LocalStack:
    """Kafka + Redis on loopback in ``data``; ``start()`` waits until both answer."""

    data: Path
    kafka_port: int = 9092
    controller_port: int = 0
    redis_port: int = 6379
    redis_password: str | None = None
    kafka: Managed | None = None
    redis: Managed | None = None

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    def start(self, topics_prefix: str | None = "") -> LocalStack:
        if not self.controller_port:
            self.controller_port = free_port()
        require_free(self.kafka_port, "Kafka", "CLINICFLOW_KAFKA_PORT")
        require_free(self.redis_port, "Redis", "CLINICFLOW_REDIS_PORT")
        ensure_kafka_jars()
        self.redis = start_redis(self.data / "redis", self.redis_port, self.redis_password)
        self.kafka = start_kafka(self.data / "kafka", self.kafka_port, self.controller_port)
        try:
            asyncio.run(self._wait(topics_prefix))
        except BaseException:
            self.stop()
            raise
        return self

    async def _wait(self, topics_prefix: str | None) -> None:
        await wait_redis(self.redis_url, self.redis)
        await wait_kafka(self.kafka_bootstrap, self.kafka)
        if topics_prefix is not None:
            from shared.admin import ensure_topics

            await ensure_topics(self.kafka_bootstrap, topics_prefix)

    def restart_kafka(self, down_seconds: float = 0.0) -> None:
        """Stop and start the broker on the same port and data (fault tests)."""
        if self.kafka is not None:
            stop_process(self.kafka.pid, self.kafka.cmdline_hint)
        time.sleep(down_seconds)
        self.kafka = start_kafka(self.data / "kafka", self.kafka_port, self.controller_port)
        asyncio.run(wait_kafka(self.kafka_bootstrap, self.kafka))

    def restart_redis(self, down_seconds: float = 0.0) -> None:
        if self.redis is not None:
            stop_process(self.redis.pid, self.redis.cmdline_hint)
        time.sleep(down_seconds)
        self.redis = start_redis(self.data / "redis", self.redis_port, self.redis_password)
        asyncio.run(wait_redis(self.redis_url, self.redis))

    def stop(self) -> None:
        for managed in (self.kafka, self.redis):
            if managed is not None and managed.process is not None:
                if managed.process.poll() is None:
                    managed.process.terminate()
                    try:
                        managed.process.wait(20)
                    except subprocess.TimeoutExpired:
                        managed.process.kill()
                        managed.process.wait(10)
            elif managed is not None:
                stop_process(managed.pid, managed.cmdline_hint)
        self.kafka = self.redis = None


# ----------------------------------------------------------------------- CLI


def _state_file() -> Path:
    return state_dir() / "stack.json"


def _ports() -> tuple[int, int]:
    return (int(os.environ.get("CLINICFLOW_KAFKA_PORT", "9092")),
            int(os.environ.get("CLINICFLOW_REDIS_PORT", "6379")))


def _record(stack: LocalStack) -> None:
    assert stack.kafka is not None and stack.redis is not None
    _state_file().write_text(json.dumps({
        "kafka": {"pid": stack.kafka.pid, "port": stack.kafka_port,
                  "hint": stack.kafka.cmdline_hint},
        "redis": {"pid": stack.redis.pid, "port": stack.redis_port,
                  "hint": stack.redis.cmdline_hint},
        "kafka_bootstrap": stack.kafka_bootstrap,
        "redis_url": stack.redis_url,
    }, indent=2))


def _recorded() -> dict[str, Any] | None:
    try:
        recorded: dict[str, Any] = json.loads(_state_file().read_text())
        return recorded
    except (OSError, ValueError):
        return None


def up(args: argparse.Namespace) -> int:
    recorded = _recorded()
    if recorded and any(is_our_process(recorded[n]["pid"], recorded[n]["hint"])
                        for n in ("kafka", "redis")):
        print(f"the stack is already up (Kafka {recorded['kafka_bootstrap']}, Redis "
              f"{recorded['redis_url']}); `clinicflow stack down` stops it")
        return 0
    kafka_port, redis_port = _ports()
    state_dir().mkdir(parents=True, exist_ok=True)
    stack = LocalStack(state_dir(), kafka_port=kafka_port, redis_port=redis_port)
    try:
        started = time.monotonic()
        stack.start(topics_prefix=os.environ.get("CLINICFLOW_TOPIC_PREFIX", ""))
    except StackError as exc:
        print(f"clinicflow stack: {exc}", file=sys.stderr)
        return 1
    _record(stack)
    print(f"Kafka {KAFKA_VERSION}  {stack.kafka_bootstrap}\nRedis        {stack.redis_url}\n"
          f"(up in {time.monotonic() - started:.1f}s; data in {state_dir()})")
    if args.detach:
        return 0
    print("Ctrl-C stops both.")
    try:
        while stack.kafka is not None and stack.kafka.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        _state_file().unlink(missing_ok=True)
    return 0


def status(_args: argparse.Namespace) -> int:
    recorded = _recorded()
    if recorded is None:
        print("the stack is not up (no .clinicflow/stack.json)")
        return 1
    running = 0
    for name in ("kafka", "redis"):
        item = recorded[name]
        alive = is_our_process(item["pid"], item["hint"])
        running += alive
        print(f"{name:6} pid {item['pid']:<8} port {item['port']:<6} "
              f"{'running' if alive else 'not running'}")
    return 0 if running == 2 else 1


def down(_args: argparse.Namespace) -> int:
    recorded = _recorded()
    if recorded is None:
        print("nothing to stop: the stack was not started with `clinicflow stack up`")
        return 0
    for name in ("kafka", "redis"):
        item = recorded[name]
        if stop_process(item["pid"], item["hint"]):
            print(f"stopped {name} (pid {item['pid']})")
        else:
            print(f"{name} (pid {item['pid']}) was not running")
    _state_file().unlink(missing_ok=True)
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("stack", help="the local Kafka + Redis (no Docker)")
    sub = parser.add_subparsers(dest="stack_command", required=True)
    start = sub.add_parser("up", help="start Kafka and Redis on 127.0.0.1")
    start.add_argument("--detach", action="store_true", help="start and return")
    start.set_defaults(func=up)
    sub.add_parser("status", help="is the stack running").set_defaults(func=status)
    sub.add_parser("down", help="stop what `stack up` started").set_defaults(func=down)
