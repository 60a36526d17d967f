"""The local stack without Docker: a real Apache Kafka broker (KRaft, one node that is both
broker and controller) and a real Redis server, both on 127.0.0.1 and owned by the project.

``clinicflow stack up [--detach] | status | down`` and the test fixtures use the same
Python API: ``LocalStack`` (start, stop, restart either server on the same port and data),
``create_topics`` (every declared topic, optionally prefixed) and the functions below.

Kafka's jars come from Maven Central through Maven on first use (deploy/local/kafka-pom.xml,
a pinned version) and are cached in ``~/.cache/clinicflow`` (``CLINICFLOW_CACHE_DIR``); the
broker runs on the machine's Java 17. Data and logs live in a directory the caller chooses;
the CLI uses ``.clinicflow/`` at the repository root (``CLINICFLOW_STATE_DIR``), git-ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
KAFKA_VERSION = "4.4.0"
POM = REPO / "deploy" / "local" / "kafka-pom.xml"
LOG4J = REPO / "deploy" / "local" / "log4j2.properties"

KAFKA_PORT_SETTING = "CLINICFLOW_KAFKA_PORT"
REDIS_PORT_SETTING = "CLINICFLOW_REDIS_PORT"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6379

# what the Kafka start scripts use, with a small heap: a laptop runs this next to four services
KAFKA_JVM_OPTIONS = (
    "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
STOP_GRACE_SECONDS = 20.0
_EXCEPTION = re.compile(r"^(Caused by: )?[\w.$]+(Exception|Error): ")

T = TypeVar("T")


class StackError(RuntimeError):
    """The local stack cannot start or answer; the message says why and how to fix it."""


def state_dir() -> Path:
    """Where the CLI keeps the stack's data, logs and ``stack.json``."""
    return Path(os.environ.get("CLINICFLOW_STATE_DIR", REPO / ".clinicflow"))


def cache_dir() -> Path:
    """Where Kafka's jars (and the JVM's class-data archive for them) are kept between runs."""
    default = Path.home() / ".cache" / "clinicflow"
    return Path(os.environ.get("CLINICFLOW_CACHE_DIR", default)) / f"kafka-{KAFKA_VERSION}"


# --------------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the sockets are held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:``port`` (TIME_WAIT leftovers don't count,
    as servers set SO_REUSEADDR too; a listener on 0.0.0.0 or 127.0.0.1 does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return False
    return True


def require_free(port: int, what: str, setting: str) -> None:
    """Raise a StackError naming the port and the setting that moves it, when it is taken."""
    if not port_is_free(port):
        raise StackError(
            f"port {port} on 127.0.0.1 is taken, so {what} cannot listen there: stop what "
            f"uses it (`ss -ltnp 'sport = :{port}'` shows it) or choose another port with "
            f"{setting}=<port>")


# ---------------------------------------------------------------------------- tools


def require_java() -> str:
    """The ``java`` executable, or a StackError that says what to install."""
    java = shutil.which("java")
    if java is None:
        raise StackError("Java is not installed: Apache Kafka needs Java 17 "
                         "(apt-get install -y openjdk-17-jre-headless)")
    return java


def require_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven is not installed: it fetches Kafka's jars from Maven Central "
                         "on first use (apt-get install -y maven)")
    return mvn


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (two test runs fetching jars at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _jars_complete(libs: Path, marker: Path) -> bool:
    """The marker lists every jar of a successful copy; all of them must still be there."""
    try:
        listed = [line for line in marker.read_text().splitlines() if line.endswith(".jar")]
    except OSError:
        return False
    return (f"kafka_2.13-{KAFKA_VERSION}.jar" in listed
            and all((libs / name).is_file() for name in listed))


def ensure_kafka_jars() -> Path:
    """The directory holding Kafka's jars; Maven copies them from Maven Central the first
    time (about 12 s), later calls return at once. Raises StackError with Maven's last lines
    when it fails."""
    cache = cache_dir()
    libs, marker = cache / "libs", cache / "complete"
    if _jars_complete(libs, marker):
        return libs
    require_java()
    mvn = require_maven()
    with _file_lock(cache / ".lock"):
        if _jars_complete(libs, marker):  # another process fetched them meanwhile
            return libs
        print(f"fetching Apache Kafka {KAFKA_VERSION}'s jars from Maven Central into {libs} "
              "(once) ...", file=sys.stderr, flush=True)
        staging = cache / f"libs.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}"],
            capture_output=True, text=True, check=False,
        )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if result.returncode != 0 or f"kafka_2.13-{KAFKA_VERSION}.jar" not in jars:
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise StackError(f"Maven could not fetch Kafka's jars (exit {result.returncode}; "
                             f"pom {POM}):\n{tail or '(no output)'}")
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        for archive in cache.glob("*.jsa*"):  # class-data archives of the old jars
            archive.unlink(missing_ok=True)
        marker.write_text("\n".join(jars) + "\n")
    return libs


def ensure_redis_server() -> str:
    """The redis-server binary; installed from Debian's packages when missing and root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server is missing: installing it with apt-get ...", file=sys.stderr,
              flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # the package would start a system-wide Redis on 6379; policy-rc.d stops that
        policy = Path("/usr/sbin/policy-rc.d")
        guarded = not policy.exists()
        if guarded:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                       "redis-server"]
            if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                               check=False)
                subprocess.run(install, env=env, capture_output=True, check=False)
        finally:
            if guarded:
                policy.unlink(missing_ok=True)
        found = shutil.which("redis-server")
        if found:
            return found
    raise StackError("redis-server is not installed: apt-get install -y redis-server "
                     "(as root)")


# ------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return fields[0], int(fields[19])


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the PID, it names one process."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def is_our_process(pid: int, hint: str | None = None, started: int | None = None) -> bool:
    """True when ``pid`` runs (not a zombie), its command line contains ``hint`` and, when
    given, it started at ``started``: a recycled PID is never mistaken for ours."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    if started is not None and stat[1] != started:
        return False
    if hint is not None:
        cmdline = process_cmdline(pid)
        return cmdline is not None and hint in cmdline
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _terminate(pid: int, started: int | None, grace: float) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; True when it exited on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_our_process(pid, None, started):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and is_our_process(pid, None, started):
        _reap(pid)
        time.sleep(0.05)
    return False


def stop_process(pid: int, hint: str | None = None, grace: float = STOP_GRACE_SECONDS,
                 started: int | None = None) -> bool:
    """Stop ``pid`` with SIGTERM, then SIGKILL after ``grace`` seconds, but only if it is the
    process we started (command line contains ``hint``, start time equals ``started``).
    Returns False, touching nothing, when it is not; True once it is gone."""
    if not is_our_process(pid, hint, started):
        return False
    _terminate(pid, started if started is not None else process_start_time(pid), grace)
    return True


@dataclass
class Managed:
    """A server process this stack started (or recorded in a state file)."""

    name: str
    pid: int
    port: int
    cmdline_hint: str
    log: Path  # the server's own log
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started: int | None = None  # /proc start time: with the PID, names this process
    output: Path | None = None  # stdout and stderr
    cds_part: Path | None = None  # class-data archive the JVM writes when it exits

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return is_our_process(self.pid, self.cmdline_hint, self.started)

    def tail(self, lines: int = 25) -> str:
        """The end of its log and output, the last errors first (a Java stack trace can
        push the line that says what went wrong out of the tail)."""
        parts = []
        for path in (self.log, self.output):
            if path is None or not path.exists() or not path.stat().st_size:
                continue
            text = _tail(path, 10_000)
            errors = [line for line in text.splitlines()
                      if "] ERROR " in line or _EXCEPTION.match(line)][-4:]
            if errors:
                parts.append("errors:\n" + "\n".join(errors))
            parts.append(f"--- end of {path} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or f"(nothing logged in {self.log})"

    def signal(self, signum: int) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signum)
        elif is_our_process(self.pid, self.cmdline_hint, self.started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            if self.process is None:
                _reap(self.pid)
            time.sleep(0.05)
        return True

    def stop(self, grace: float = STOP_GRACE_SECONDS, kill: bool = False,
             signalled: bool = False) -> bool:
        """SIGTERM (SIGKILL with ``kill``: a crash), SIGKILL after ``grace`` seconds;
        ``signalled``: SIGTERM was already sent. True when it shut down cleanly."""
        was_running = self.alive()
        if not signalled or kill:
            self.signal(signal.SIGKILL if kill else signal.SIGTERM)
        exited = self.wait_gone(grace)
        if not exited:
            self.signal(signal.SIGKILL)
            self.wait_gone(10)
        if self.process is not None:
            clean = self.process.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
        else:
            clean = was_running and exited and not kill
        _settle_class_archive(self.cds_part, clean)
        self.cds_part = None
        return clean

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "port": self.port, "started": self.started,
                "hint": self.cmdline_hint, "log": str(self.log),
                "output": str(self.output) if self.output else None,
                "cds_part": str(self.cds_part) if self.cds_part else None}

    @classmethod
    def from_record(cls, name: str, item: dict[str, Any]) -> Managed:
        def path(key: str) -> Path | None:
            return Path(item[key]) if item.get(key) else None

        return cls(name, int(item["pid"]), int(item["port"]), str(item["hint"]),
                   path("log") or Path("/nonexistent"), None, item.get("started"),
                   path("output"), path("cds_part"))


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ Kafka


def kafka_properties(data: Path, port: int, controller_port: int) -> str:
    """server.properties for one KRaft node (broker + controller) on loopback only."""
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
        # topics come from shared/topics.py only, never from a typo in a producer
        "auto.create.topics.enable=false",
        "num.partitions=1",
        # one node: every internal topic has one replica
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",  # the first consumer group is ready sooner
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=5",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # after a kill -9 the new incarnation cannot register until the old one's session
        # expires (default 9 s); the controller is in the same process, so be quick
        "broker.session.timeout.ms=3000",
        "broker.heartbeat.interval.ms=500",
        "group.min.session.timeout.ms=1000",  # tests may use short sessions
        "log.cleaner.dedupe.buffer.size=33554432",
        "",
    ])


def _controller_port_of(props: Path) -> int | None:
    """The controller port a data directory was last run with (kept across restarts)."""
    try:
        for line in props.read_text().splitlines():
            if line.startswith("controller.quorum.voters="):
                return int(line.rsplit(":", 1)[1])
    except (OSError, ValueError):
        return None
    return None


def _class_archive(java: str) -> Path:
    """The JVM class-data archive for the broker, per Java install (saves ~2 s a start)."""
    real = Path(java).resolve()
    stat = real.stat()
    key = hashlib.sha1(f"{real}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:12]
    return cache_dir() / f"kafka-{key}.jsa"


def _class_archive_options(java: str) -> tuple[list[str], Path | None]:
    """JVM options that use the class-data archive or, while there is none, write one when
    this broker exits cleanly (``_settle_class_archive`` moves it into place)."""
    if os.environ.get("CLINICFLOW_KAFKA_CDS", "1") == "0":
        return [], None
    quiet = "-Xlog:cds=off,cds+dynamic=off"
    archive = _class_archive(java)
    if archive.exists():
        return [f"-XX:SharedArchiveFile={archive}", quiet], None
    part = archive.with_name(f"{archive.name}.{uuid.uuid4().hex[:8]}.part")
    return [f"-XX:ArchiveClassesAtExit={part}", quiet], part


def _settle_class_archive(part: Path | None, clean_exit: bool) -> None:
    if part is None:
        return
    final = part.with_name(part.name.split(".jsa.", 1)[0] + ".jsa")
    if clean_exit and part.exists() and part.stat().st_size > 0 and not final.exists():
        part.rename(final)
    part.unlink(missing_ok=True)


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64, never starting with "-".

    Kafka's own ``Uuid.randomUuid`` rejects ids that begin with "-" because the
    storage tool would read them as an option; one id in 32 would.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kafka(data: Path, port: int, controller_port: int, *,
                properties: str | None = None, cluster_id: str | None = None,
                format_args: Sequence[str] = ()) -> Managed:
    """Format ``data`` (first time only) and spawn the broker; returns without waiting
    until it answers (``wait_kafka`` does). Raises StackError when formatting fails.

    The one-node loopback broker is the default; a cluster node or a secured broker
    passes its own ``properties`` (server.properties text), the ``cluster_id`` its nodes
    share, and extra ``format_args`` for the storage tool (``--add-scram ...``,
    ``--initial-controllers ...``). Custom properties keep ``log.dirs`` at
    ``data / "kafka-data"`` (formatting is skipped once its meta.properties exists)."""
    libs = ensure_kafka_jars()
    java = require_java()
    data.mkdir(parents=True, exist_ok=True)
    props = data / "server.properties"
    props.write_text(properties if properties is not None
                     else kafka_properties(data, port, controller_port))
    classpath = f"{libs}/*"
    logging = [f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.dir={data}"]
    archive_options, part = _class_archive_options(java)
    if not (data / "kafka-data" / "meta.properties").exists():
        reuse = archive_options if part is None else []
        result = subprocess.run(
            [java, *reuse, *logging, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", cluster_id or new_cluster_id(), "-c", str(props), *format_args],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka's storage in {data} failed:\n"
                             f"{result.stdout}{result.stderr}")
    output = data / "kafka.out"
    with open(output, "ab") as handle:
        process = subprocess.Popen(
            [java, *KAFKA_JVM_OPTIONS, *archive_options, *logging, "-cp", classpath,
             "kafka.Kafka", str(props)],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it
        )
    return Managed("kafka", process.pid, port, str(props), data / "server.log", process,
                   process_start_time(process.pid), output, part)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def kafka_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when the broker at ``bootstrap`` returns cluster metadata."""
    from aiokafka.admin import AIOKafkaAdminClient

    host, _, port = bootstrap.rpartition(":")
    if host in ("127.0.0.1", "localhost") and not _port_open(int(port)):
        return False  # not listening yet: skip the client and its connection-error logs
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def wait_kafka(bootstrap: str, managed: Managed | None = None,
                     timeout: float = 90.0) -> None:
    """Poll until the broker answers; StackError with its log's tail when it exits or
    does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed is not None and not managed.alive():
            raise StackError(f"Kafka exited while starting:\n{managed.tail()}")
        if await kafka_answers(bootstrap, timeout=3.0):
            return
        await asyncio.sleep(0.1)
    tail = managed.tail() if managed else ""
    raise StackError(f"Kafka did not answer on {bootstrap} within {timeout:.0f}s:\n{tail}")


# ------------------------------------------------------------------------------ Redis


def start_redis(data: Path, port: int, password: str | None = None) -> Managed:
    """Spawn redis-server on 127.0.0.1:``port`` with an append-only file in ``data``;
    returns without waiting until it answers (``wait_redis`` does)."""
    binary = ensure_redis_server()
    data.mkdir(parents=True, exist_ok=True)
    log, output = data / "redis.log", data / "redis.out"
    args = [binary]
    if password:  # from a file, so the password is not on the command line for `ps` to show
        conf = data / "redis.conf"
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        descriptor = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(f'requirepass "{quoted}"\n')
        args.append(str(conf))
    args += ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
             "--appendonly", "yes", "--save", "", "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", str(log)]
    with open(output, "ab") as handle:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    # redis-server sets its process title to "<binary> 127.0.0.1:<port>"
    return Managed("redis", process.pid, port, f"127.0.0.1:{port}", log, process,
                   process_start_time(process.pid), output)


async def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """True when the Redis at ``url`` answers PING."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def wait_redis(url: str, managed: Managed | None = None, timeout: float = 30.0) -> None:
    """Poll until Redis answers PING; StackError with its log's tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed is not None and not managed.alive():
            raise StackError(f"redis-server exited while starting:\n{managed.tail()}")
        if await redis_answers(url, timeout=1.0):
            return
        await asyncio.sleep(0.05)
    tail = managed.tail() if managed else ""
    raise StackError(f"Redis did not answer on {url} within {timeout:.0f}s:\n{tail}")


# ----------------------------------------------------------------------------- topics


async def create_topics(bootstrap: str, prefix: str = "", replication_factor: int = 1,
                        timeout: float = 30.0) -> list[str]:
    """Create every topic of ``shared.topics.ALL_TOPICS`` (name prefixed with ``prefix``)
    that does not exist yet, with its partitions and configs, and wait until each has a
    leader. Idempotent. Returns the names it created; StackError on a refused topic."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    from shared.topics import ALL_TOPICS, topic_name

    names = [topic_name(spec, prefix) for spec in ALL_TOPICS]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(topic_name(spec, prefix), spec.partitions, replication_factor,
                           topic_configs=spec.topic_config())
                  for spec in ALL_TOPICS if topic_name(spec, prefix) not in existing]
        created: list[str] = []
        if wanted:
            response = await admin.create_topics(wanted)
            refused = []
            for item in response.to_object()["topic_errors"]:
                error = for_code(item["error_code"])
                if item["error_code"] == 0:
                    created.append(item["topic"])
                elif error.__name__ != "TopicAlreadyExistsError":
                    refused.append(f"{item['topic']}: {error.__name__} "
                                   f"{item.get('error_message') or ''}".rstrip())
            if refused:
                raise StackError("Kafka refused to create topics:\n" + "\n".join(refused))
        await _wait_for_leaders(admin, names, timeout)
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(admin: Any, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        described = await admin.describe_topics(names)
        ready = {d["topic"] for d in described
                 if d["error_code"] == 0 and d["partitions"]
                 and all(p["leader"] >= 0 for p in d["partitions"])}
        if ready >= set(names):
            return
        if time.monotonic() > deadline:
            raise StackError(f"topics without a leader after {timeout:.0f}s: "
                             f"{sorted(set(names) - ready)}")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ stack


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, also when the calling thread
    already runs an event loop (an async test). Runs on its own thread, so the caller's
    event-loop state is left alone, and Ctrl-C still interrupts the wait."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(factory())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="clinicflow-stack", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


@dataclass
class LocalStack:
    """One Kafka broker and one Redis server on loopback, data and logs in ``data``.

    ``start()`` returns once both answer. From async code, call the blocking methods
    through ``asyncio.to_thread`` so the event loop keeps running meanwhile.
    ``state_file``, when set, is kept up to date with the processes (PIDs, start times,
    ports) so ``stop_recorded`` can stop exactly them from another process; so are
    ``companions``, processes started alongside the stack (``make up``'s services), which
    ``stop_recorded`` stops first.
    """

    data: Path
    kafka_port: int = DEFAULT_KAFKA_PORT
    controller_port: int = 0
    redis_port: int = DEFAULT_REDIS_PORT
    redis_password: str | None = None
    state_file: Path | None = None
    kafka: Managed | None = None
    redis: Managed | None = None
    companions: list[Managed] = field(default_factory=list)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    def start(self, topics_prefix: str | None = "") -> LocalStack:
        """Start both servers and wait until they answer; then create every declared topic
        with ``topics_prefix`` (None: create none). On any failure, stops what it started
        and raises StackError."""
        if self.kafka is not None or self.redis is not None:
            raise StackError("this stack is already started")
        if self.kafka_port == self.redis_port:
            raise StackError(f"Kafka and Redis cannot share port {self.kafka_port}: set "
                             f"{KAFKA_PORT_SETTING} and {REDIS_PORT_SETTING} apart")
        require_free(self.kafka_port, "Kafka", KAFKA_PORT_SETTING)
        require_free(self.redis_port, "Redis", REDIS_PORT_SETTING)
        self._choose_controller_port()
        ensure_kafka_jars()
        ensure_redis_server()
        try:
            self.redis = start_redis(self.data / "redis", self.redis_port, self.redis_password)
            self.kafka = start_kafka(self.data / "kafka", self.kafka_port, self.controller_port)
            self._save()
            _run_sync(lambda: self._wait_ready(topics_prefix))
        except BaseException:
            self.stop()
            raise
        return self

    def _choose_controller_port(self) -> None:
        if self.controller_port:
            require_free(self.controller_port, "Kafka's controller", "controller_port")
            return
        previous = _controller_port_of(self.data / "kafka" / "server.properties")
        if previous and previous not in (self.kafka_port, self.redis_port) \
                and port_is_free(previous):
            self.controller_port = previous
        else:
            self.controller_port = next(p for p in free_ports(3)
                                        if p not in (self.kafka_port, self.redis_port))

    async def _wait_ready(self, topics_prefix: str | None) -> None:
        await asyncio.gather(wait_redis(self.redis_url, self.redis),
                             wait_kafka(self.kafka_bootstrap, self.kafka))
        if topics_prefix is not None:
            await create_topics(self.kafka_bootstrap, topics_prefix)

    # one server at a time, same port and data: for fault tests

    def stop_kafka(self, kill: bool = False) -> None:
        """Stop the broker (``kill``: SIGKILL, a crash) and keep its data."""
        if self.kafka is not None:
            self.kafka.stop(kill=kill)
            self.kafka = None
            self._save()

    def start_kafka(self, wait: bool = True) -> None:
        """Start the broker again on the same port and data; with ``wait``, until it answers."""
        if self.kafka is not None and self.kafka.alive():
            raise StackError("Kafka is already running")
        require_free(self.kafka_port, "Kafka", KAFKA_PORT_SETTING)
        self.kafka = start_kafka(self.data / "kafka", self.kafka_port, self.controller_port)
        self._save()
        if wait:
            kafka = self.kafka
            _run_sync(lambda: wait_kafka(self.kafka_bootstrap, kafka))

    def restart_kafka(self, down_seconds: float = 0.0, kill: bool = False) -> None:
        """Stop the broker, stay down ``down_seconds``, start it again and wait for it."""
        self.stop_kafka(kill=kill)
        time.sleep(down_seconds)
        self.start_kafka()

    def stop_redis(self, kill: bool = False) -> None:
        """Stop Redis (``kill``: SIGKILL) and keep its append-only file."""
        if self.redis is not None:
            self.redis.stop(kill=kill)
            self.redis = None
            self._save()

    def start_redis(self, wait: bool = True) -> None:
        """Start Redis again on the same port and data; with ``wait``, until it answers."""
        if self.redis is not None and self.redis.alive():
            raise StackError("Redis is already running")
        self.redis = start_redis(self.data / "redis", self.redis_port, self.redis_password)
        self._save()
        if wait:
            redis = self.redis
            _run_sync(lambda: wait_redis(self.redis_url, redis))

    def restart_redis(self, down_seconds: float = 0.0, kill: bool = False) -> None:
        """Stop Redis, stay down ``down_seconds``, start it again and wait for it."""
        self.stop_redis(kill=kill)
        time.sleep(down_seconds)
        self.start_redis()

    def stop(self) -> None:
        """Stop both (SIGTERM together, SIGKILL after a grace period); keeps the data."""
        running = [m for m in (self.kafka, self.redis) if m is not None]
        for managed in running:  # both at once: Redis is done while Kafka shuts down
            managed.signal(signal.SIGTERM)
        for managed in running:
            managed.stop(signalled=True)
        self.kafka = self.redis = None
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    def add_companion(self, managed: Managed) -> None:
        """Record a process started alongside the stack (``stop`` leaves it to its owner;
        ``stop_recorded``, from another process, stops it before Kafka and Redis)."""
        self.companions.append(managed)
        self._save()

    def running(self) -> dict[str, bool]:
        return {"kafka": self.kafka is not None and self.kafka.alive(),
                "redis": self.redis is not None and self.redis.alive()}

    def _save(self) -> None:
        if self.state_file is not None:
            write_state(self.state_file, self)


# --------------------------------------------------------------------- state files


def write_state(path: Path, stack: LocalStack) -> None:
    """Record the stack's processes (atomically) so another process can check or stop them."""
    state = {
        "owner": {"pid": os.getpid(), "started": process_start_time(os.getpid())},
        "data": str(stack.data),
        "kafka_bootstrap": stack.kafka_bootstrap,
        "redis_url": stack.redis_url,
        "kafka": stack.kafka.record() if stack.kafka else None,
        "redis": stack.redis.record() if stack.redis else None,
        "companions": [{"name": m.name, **m.record()} for m in stack.companions],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".stack-", delete=False) as f:
        json.dump(state, f, indent=2)
    os.replace(f.name, path)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state


def recorded_processes(state: dict[str, Any]) -> list[Managed]:
    """The recorded processes: companions first (they use Kafka and Redis), then those."""
    companions = [Managed.from_record(str(item["name"]), item)
                  for item in state.get("companions") or ()]
    return companions + [Managed.from_record(name, state[name]) for name in ("kafka", "redis")
                         if state.get(name)]


def stop_recorded(path: Path, say: Callable[[str], None] = lambda _: None) -> None:
    """Stop exactly the processes recorded in ``path`` (each only if its PID still is the
    process that was started: same start time and command line), then remove the file."""
    state = read_state(path)
    for managed in recorded_processes(state or {}):
        if managed.alive():
            # a process of another session: close enough to promote its class archive
            clean = managed.stop()
            say(f"stopped {managed.name} (pid {managed.pid}){'' if clean else ', killed'}")
        elif process_cmdline(managed.pid) is not None:
            say(f"{managed.name}: pid {managed.pid} is not the process `stack up` started "
                "(it exited and the PID was reused); left it alone")
        else:
            say(f"{managed.name} (pid {managed.pid}) was not running")
        _settle_class_archive(managed.cds_part, False)  # left by a broker that did not exit
    path.unlink(missing_ok=True)


def sweep_orphans(directory: Path) -> None:
    """Stop stacks recorded in ``directory`` whose owner process is gone (a test run that
    was killed before it could stop its servers)."""
    for path in directory.glob("*.json"):
        state = read_state(path)
        owner = (state or {}).get("owner") or {}
        if state is None or not is_our_process(int(owner.get("pid", 0)), None,
                                                owner.get("started")):
            stop_recorded(path)


# --------------------------------------------------------------------------------- CLI


def _state_file() -> Path:
    return state_dir() / "stack.json"


def _port_setting(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


def _say(text: str, err: bool = False) -> None:
    with contextlib.suppress(OSError):  # a closed terminal must not stop the clean-up
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def up(args: argparse.Namespace) -> int:
    """``clinicflow stack up [--detach]``."""
    path = _state_file()
    state = read_state(path)
    if state is not None:
        alive = [m.name for m in recorded_processes(state)
                 if m.name in ("kafka", "redis") and m.alive()]
        if len(alive) == 2:
            _say(f"the stack is already up: Kafka {state['kafka_bootstrap']}, Redis "
                 f"{state['redis_url']} (`clinicflow stack down` stops it)")
            return 0
        if alive:
            _say(f"only {alive[0]} of the recorded stack is running; "
                 "`clinicflow stack down` first", err=True)
            return 1
    try:
        kafka_port = _port_setting(KAFKA_PORT_SETTING, DEFAULT_KAFKA_PORT)
        redis_port = _port_setting(REDIS_PORT_SETTING, DEFAULT_REDIS_PORT)
        stack = LocalStack(state_dir(), kafka_port=kafka_port, redis_port=redis_port,
                           state_file=path)
        began = time.monotonic()
        stack.start(topics_prefix=os.environ.get("CLINICFLOW_TOPIC_PREFIX", ""))
    except StackError as exc:
        _say(f"clinicflow stack: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    _say(f"Kafka {KAFKA_VERSION}  {stack.kafka_bootstrap}\n"
         f"Redis         {stack.redis_url}\n"
         f"up in {time.monotonic() - began:.1f}s; data and logs in {stack.data}")
    if args.detach:
        _say("`clinicflow stack status` checks it, `clinicflow stack down` stops it")
        return 0
    return _run_foreground(stack)


def _run_foreground(stack: LocalStack) -> int:
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    _say("Ctrl-C stops both.")
    code = 0
    try:
        while True:
            gone = [m for m in (stack.kafka, stack.redis) if m is not None and not m.alive()]
            if gone:
                _say(f"{gone[0].name} exited (stopped from elsewhere, or it failed):\n"
                     f"{gone[0].tail()}", err=True)
                code = 1
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        _say("stopping Kafka and Redis ...")
        stack.stop()
        _say("stopped.")
    return code


def status(_args: argparse.Namespace) -> int:
    """``clinicflow stack status``: which server runs, on which port, and answers."""
    state = read_state(_state_file())
    if state is None:
        _say(f"the stack is not up (no {_state_file()})")
        return 1
    checks = {
        "kafka": lambda: kafka_answers(state["kafka_bootstrap"], timeout=3.0),
        "redis": lambda: redis_answers(state["redis_url"], timeout=2.0),
    }
    healthy = True
    for name in ("kafka", "redis"):
        item = state.get(name)
        if not item:
            _say(f"{name:6} not started")
            healthy = False
            continue
        managed = Managed.from_record(name, item)
        alive = managed.alive()
        answers = alive and _run_sync(checks[name])
        healthy = healthy and answers
        where = state["kafka_bootstrap"] if name == "kafka" else state["redis_url"]
        _say(f"{name:6} pid {managed.pid:<8} port {managed.port:<6} "
             f"{'running' if alive else 'stopped'}, "
             f"{'answering' if answers else 'NOT answering'}  {where}")
    _say(f"data and logs in {state['data']}")
    return 0 if healthy else 1


def down(_args: argparse.Namespace) -> int:
    """``clinicflow stack down``: stop exactly the processes ``stack up`` recorded."""
    path = _state_file()
    if read_state(path) is None:
        _say(f"nothing to stop: no stack recorded in {path}")
        return 0
    stop_recorded(path, _say)
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stack", help="the local Kafka + Redis on 127.0.0.1 (no Docker)",
        description=f"Apache Kafka {KAFKA_VERSION} (KRaft, one node) and Redis on 127.0.0.1; "
        f"ports from {KAFKA_PORT_SETTING} (default {DEFAULT_KAFKA_PORT}) and "
        f"{REDIS_PORT_SETTING} (default {DEFAULT_REDIS_PORT}), data in "
        "CLINICFLOW_STATE_DIR (default .clinicflow/).")
    sub = parser.add_subparsers(dest="stack_command", required=True)
    start = sub.add_parser("up", help="start Kafka and Redis, create the topics")
    start.add_argument("--detach", action="store_true",
                       help="return once both answer (default: run until Ctrl-C)")
    start.set_defaults(func=up)
    sub.add_parser("status", help="are they running and answering").set_defaults(func=status)
    sub.add_parser("down", help="stop what `stack up` started").set_defaults(func=down)
