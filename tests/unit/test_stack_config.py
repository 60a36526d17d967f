"""The local stack's configuration and its care to stop only what it started."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.stack import (
    LocalStack,
    StackError,
    is_our_process,
    kafka_properties,
    require_free,
    stop_process,
)


def test_the_broker_listens_on_loopback_only_and_creates_no_topic_by_itself() -> None:
    props = kafka_properties(Path("/data"), 19092, 19093)
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in props
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092" in props
    assert "auto.create.topics.enable=false" in props
    assert "process.roles=broker,controller" in props


def test_a_taken_port_is_reported_with_the_setting_that_changes_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port}.*CLINICFLOW_KAFKA_PORT"):
            require_free(port, "Kafka", "CLINICFLOW_KAFKA_PORT")
        stack = LocalStack(Path("/nonexistent"), kafka_port=port, redis_port=port)
        with pytest.raises(StackError, match="taken"):
            stack.start()


def test_down_never_kills_a_process_it_did_not_start() -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    deadline = time.monotonic() + 10
    while not is_our_process(stranger.pid, "time.sleep(60)"):  # until it has exec'd
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert not is_our_process(stranger.pid, "kafka.Kafka")
        assert stop_process(stranger.pid, "kafka.Kafka", grace=1) is False
        assert stranger.poll() is None  # still running
        assert stop_process(stranger.pid, "time.sleep(60)", grace=5) is True
        assert stranger.wait(5) is not None
    finally:
        if stranger.poll() is None:
            stranger.kill()
