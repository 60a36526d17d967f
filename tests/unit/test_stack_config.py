"""The local stack's configuration, its error messages, and its care to stop only what it
started. No Kafka, no Redis: milliseconds."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import stack as local
from tools.stack import (
    LocalStack,
    Managed,
    StackError,
    is_our_process,
    kafka_properties,
    process_start_time,
    require_free,
    stop_process,
)


def _settings(props: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in props.splitlines() if line)


def test_the_broker_listens_on_loopback_only_and_creates_no_topic_by_itself() -> None:
    settings = _settings(kafka_properties(Path("/data"), 19092, 19093))
    assert settings["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert settings["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert settings["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert settings["process.roles"] == "broker,controller"
    assert settings["auto.create.topics.enable"] == "false"
    assert settings["log.dirs"] == "/data/kafka-data"


def test_one_broker_keeps_one_replica_of_every_internal_topic() -> None:
    settings = _settings(kafka_properties(Path("/data"), 19092, 19093))
    for key in ("offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
                "share.coordinator.state.topic.replication.factor"):
        assert settings[key] == "1", key
    assert settings["group.initial.rebalance.delay.ms"] == "0"


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_taken_port_is_reported_with_the_setting_that_changes_it(listening: int) -> None:
    with pytest.raises(StackError, match=f"port {listening} .*CLINICFLOW_KAFKA_PORT=<port>"):
        require_free(listening, "Kafka", "CLINICFLOW_KAFKA_PORT")


def test_the_stack_refuses_to_start_on_a_taken_redis_port(listening: int) -> None:
    stack = LocalStack(Path("/nonexistent"), kafka_port=local.free_port(), redis_port=listening)
    with pytest.raises(StackError, match=f"port {listening} .*CLINICFLOW_REDIS_PORT"):
        stack.start()
    assert stack.kafka is None and stack.redis is None


def test_without_java_the_error_says_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("CLINICFLOW_CACHE_DIR", str(tmp_path))  # no jars cached
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    with pytest.raises(StackError, match="openjdk-17-jre-headless"):
        local.ensure_kafka_jars()


def test_without_maven_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to("/bin/true")
    monkeypatch.setenv("CLINICFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(StackError, match="apt-get install -y maven"):
        local.ensure_kafka_jars()


def test_cached_jars_are_reused_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("CLINICFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # mvn would not be found
    libs = local.cache_dir() / "libs"
    libs.mkdir(parents=True)
    jars = [f"kafka_2.13-{local.KAFKA_VERSION}.jar", "kafka-clients.jar"]
    for name in jars:
        (libs / name).write_bytes(b"")
    (local.cache_dir() / "complete").write_text("\n".join(jars) + "\n")
    assert local.ensure_kafka_jars() == libs

    (libs / "kafka-clients.jar").unlink()  # an incomplete copy is fetched again
    with pytest.raises(StackError, match="Java is not installed"):
        local.ensure_kafka_jars()


def test_a_failing_maven_shows_its_last_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to("/bin/true")
    mvn = bin_dir / "mvn"
    mvn.write_text("#!/bin/sh\necho '[ERROR] Could not resolve org.apache.kafka:kafka_2.13'\n"
                   "exit 1\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("CLINICFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(StackError, match=r"(?s)Maven could not.*Could not resolve"):
        local.ensure_kafka_jars()
    assert not (local.cache_dir() / "complete").exists()


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A harmless process this test starts, standing in for someone else's."""
    process = subprocess.Popen(["sleep", "60"])
    deadline = time.monotonic() + 10
    while not is_our_process(process.pid, "sleep 60"):  # until it has exec'd
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_stop_process_leaves_a_process_whose_command_line_is_not_ours(
    stranger: subprocess.Popen[bytes],
) -> None:
    assert stop_process(stranger.pid, "kafka.Kafka", grace=1) is False
    assert stranger.poll() is None
    started = process_start_time(stranger.pid)
    assert started is not None
    assert stop_process(stranger.pid, "sleep 60", started=started + 1) is False  # PID reused
    assert stranger.poll() is None
    assert stop_process(stranger.pid, "sleep 60", grace=5, started=started) is True
    stranger.wait(5)
    assert not is_our_process(stranger.pid)


def _write_state(directory: Path, kafka: Managed, redis: Managed) -> Path:
    path = directory / "stack.json"
    path.write_text(json.dumps({"kafka": kafka.record(), "redis": redis.record(),
                                "kafka_bootstrap": "127.0.0.1:1", "redis_url": "redis://x",
                                "data": str(directory)}))
    return path


def test_down_refuses_to_stop_a_recorded_pid_that_is_no_longer_our_server(
    stranger: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the state file says "kafka is pid N", but pid N now runs something else
    monkeypatch.setenv("CLINICFLOW_STATE_DIR", str(tmp_path))
    kafka = Managed("kafka", stranger.pid, 9092, "/somewhere/server.properties",
                    tmp_path / "server.log", started=process_start_time(stranger.pid))
    redis = Managed("redis", stranger.pid, 6379, "127.0.0.1:6379", tmp_path / "redis.log",
                    started=process_start_time(stranger.pid))
    state = _write_state(tmp_path, kafka, redis)

    assert local.status(argparse.Namespace()) == 1
    assert local.down(argparse.Namespace()) == 0

    said = capsys.readouterr().out
    assert f"pid {stranger.pid} is not the process `stack up` started" in said
    assert stranger.poll() is None  # still running
    assert not state.exists()


def test_down_stops_the_recorded_processes_that_are_ours(
    stranger: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLINICFLOW_STATE_DIR", str(tmp_path))
    ours = Managed("kafka", stranger.pid, 9092, "sleep 60", tmp_path / "server.log",
                   started=process_start_time(stranger.pid))
    gone = Managed("redis", 2**22 + 1, 6379, "127.0.0.1:6379", tmp_path / "redis.log")
    _write_state(tmp_path, ours, gone)

    assert local.down(argparse.Namespace()) == 0

    stranger.wait(5)
    assert not is_our_process(stranger.pid)
    said = capsys.readouterr().out
    assert f"stopped kafka (pid {stranger.pid})" in said
    assert "redis (pid 4194305) was not running" in said


def test_up_says_so_when_the_recorded_stack_is_already_running(
    stranger: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLINICFLOW_STATE_DIR", str(tmp_path))
    started = process_start_time(stranger.pid)
    _write_state(tmp_path, Managed("kafka", stranger.pid, 9092, "sleep", tmp_path / "k",
                                   started=started),
                 Managed("redis", stranger.pid, 6379, "sleep", tmp_path / "r", started=started))
    assert local.up(argparse.Namespace(detach=True)) == 0
    assert "already up" in capsys.readouterr().out
    assert stranger.poll() is None


def test_servers_left_by_a_killed_test_run_are_stopped_by_the_next_one(
    stranger: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    server = Managed("kafka", stranger.pid, 9092, "sleep 60", tmp_path / "server.log",
                     started=process_start_time(stranger.pid))

    def record(owner_pid: int, owner_started: int | None) -> str:
        return json.dumps({"owner": {"pid": owner_pid, "started": owner_started},
                           "kafka": server.record(), "redis": None})

    running_run = tmp_path / "running.json"
    running_run.write_text(record(os.getpid(), process_start_time(os.getpid())))
    local.sweep_orphans(tmp_path)
    assert stranger.poll() is None and running_run.exists()  # its run is still going

    running_run.unlink()
    killed_run = tmp_path / "killed.json"
    killed_run.write_text(record(2**22 + 1, 1))
    local.sweep_orphans(tmp_path)
    stranger.wait(5)
    assert not is_our_process(stranger.pid)
    assert not killed_run.exists()


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 as the first byte encodes to "-" in URL-safe base64: the storage tool would
    # read such an id as an option and refuse to format (it failed CI once).
    ids = iter([
        local.uuid.UUID(bytes=bytes([0xF8]) + bytes(15)),
        local.uuid.UUID(bytes=bytes([0x10]) + bytes(15)),
    ])
    monkeypatch.setattr(local.uuid, "uuid4", lambda: next(ids))
    cluster_id = local.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22


def test_make_ups_services_are_recorded_with_the_stack_and_listed_before_it(
    stranger: subprocess.Popen[bytes], tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path / "up", state_file=tmp_path / "stack.json")
    stack.kafka = Managed("kafka", 2**22 + 1, 9092, "server.properties", tmp_path / "k")
    stack.redis = Managed("redis", 2**22 + 2, 6379, "127.0.0.1:6379", tmp_path / "r")
    stack.add_companion(Managed("flow", stranger.pid, 8002, "sleep 60", tmp_path / "flow.log",
                                started=process_start_time(stranger.pid)))
    state = local.read_state(tmp_path / "stack.json")
    assert state is not None
    recorded = local.recorded_processes(state)
    # the services go first: they use Kafka and Redis until they stop
    assert [m.name for m in recorded] == ["flow", "kafka", "redis"]
    assert recorded[0].pid == stranger.pid and recorded[0].alive()


def test_down_stops_the_services_a_lost_make_up_left_as_well(
    stranger: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLINICFLOW_STATE_DIR", str(tmp_path))
    gone_kafka = Managed("kafka", 2**22 + 1, 9092, "server.properties", tmp_path / "k")
    gone_redis = Managed("redis", 2**22 + 2, 6379, "127.0.0.1:6379", tmp_path / "r")
    state = _write_state(tmp_path, gone_kafka, gone_redis)
    record = json.loads(state.read_text())
    service = Managed("flow", stranger.pid, 8002, "sleep 60", tmp_path / "flow.log",
                      started=process_start_time(stranger.pid))
    record["companions"] = [{"name": "flow", **service.record()}]
    state.write_text(json.dumps(record))

    assert local.down(argparse.Namespace()) == 0

    stranger.wait(5)
    said = capsys.readouterr().out
    assert said.index(f"stopped flow (pid {stranger.pid})") < said.index("kafka (pid")
    assert not state.exists()


def test_up_sees_the_stack_running_whatever_else_was_recorded_with_it(
    stranger: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLINICFLOW_STATE_DIR", str(tmp_path))
    started = process_start_time(stranger.pid)
    state = _write_state(tmp_path, Managed("kafka", stranger.pid, 9092, "sleep", tmp_path / "k",
                                           started=started),
                         Managed("redis", stranger.pid, 6379, "sleep", tmp_path / "r",
                                 started=started))
    record = json.loads(state.read_text())
    record["companions"] = [{"name": "flow", **Managed(
        "flow", stranger.pid, 8002, "sleep", tmp_path / "f", started=started).record()}]
    state.write_text(json.dumps(record))
    assert local.up(argparse.Namespace(detach=True)) == 0
    assert "already up" in capsys.readouterr().out
    assert stranger.poll() is None
