"""Kafka over SASL_SSL (SCRAM-SHA-512) and Redis over TLS with a password, as an operator
configures them: only environment variables, the services run as real processes against
a broker and a Redis server that accept nothing else (tests/integration/secure_servers.py).

An arrival goes from checkin through Kafka to flow's board in Redis, in production mode;
a wrong password or an untrusted CA keeps a service unready with /readyz saying which and
why; production mode without these settings is refused before anything connects."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.admin import ensure_topics
from shared.settings import CommonSettings
from tests.helpers import REPO, ServiceProcess, auth, eventually
from tests.integration.secure_servers import SecureServers, secure_servers

__all__ = ["secure_servers"]

DESK_TOKEN = "desk-token-5b0e6c1f9a"
SCREEN_TOKEN = "screen-token-27d4f8e3c1"
PRODUCTION = {
    "CLINICFLOW_ENV": "production",
    "CLINICFLOW_CREDENTIALS": json.dumps([
        {"name": "front desk", "role": "front_desk", "token": DESK_TOKEN},
        {"name": "lobby tv", "role": "screen", "token": SCREEN_TOKEN},
    ]),
    "CLINICFLOW_CHECKIN_IDENTITY_SECRET": "identity-secret-9c2a71e0b4",
    "CLINICFLOW_LOG_FORMAT": "json",
}


def service_env(servers: SecureServers, topic_prefix: str, **wrong: Any) -> dict[str, str]:
    return {**servers.env(**wrong), **PRODUCTION,
            "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
            "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
            "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow"}


@pytest.mark.reliability(
    "Kafka SASL_SSL (SCRAM-SHA-512) and Redis TLS + password, production mode",
    "an arrival posted to checkin reaches flow's board through the secured broker and "
    "Redis, configured by environment variables alone",
)
async def test_an_arrival_crosses_the_secured_broker_and_redis_to_the_board(
    secure_servers: SecureServers, topic_prefix: str, tmp_path: Path,
) -> None:
    await ensure_topics(secure_servers.kafka_bootstrap, topic_prefix,
                        settings=secure_servers.settings())
    env = service_env(secure_servers, topic_prefix)
    checkin = ServiceProcess("checkin", env, tmp_path / "checkin.log")
    flow = ServiceProcess("flow", env, tmp_path / "flow.log")
    checkin.start()
    flow.start()
    try:
        await checkin.wait_ready(timeout=90)
        await flow.wait_ready(timeout=90)
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{checkin.url}/clinics/north/arrivals",
                json={"provider_id": "dr-lee", "visit_type": "follow_up",
                      "patient_ref": "p-5ec0e"},
                headers={**auth(DESK_TOKEN), "Idempotency-Key": uuid.uuid4().hex})
            assert answer.status_code == 201, answer.text
            ticket = answer.json()["ticket_code"]

            async def on_the_board() -> Any:
                response = await client.get(f"{flow.url}/clinics/north/board",
                                            headers=auth(SCREEN_TOKEN))
                if response.status_code == 404:
                    return None  # flow has not applied the arrival yet: ask again
                assert response.status_code == 200, response.text
                return [row["ticket_code"] for row in response.json()["waiting"]]

            assert await eventually(on_the_board, timeout=40) == [ticket]
        # the board came from Redis over TLS: the keys are there, read with the same trust
        redis = Redis.from_url(secure_servers.redis_url(), ssl_ca_certs=str(
            secure_servers.ca_file))
        try:
            keys = await redis.keys(f"{topic_prefix.rstrip('.')}:*")
        finally:
            await redis.aclose()
        assert keys, "flow and checkin wrote nothing to the TLS Redis"
    finally:
        checkin.stop()
        flow.stop()


def _other_ca(servers: SecureServers) -> Path:
    assert servers.other_ca is not None
    return servers.other_ca


def _wrong(case_id: str, dependency: str, wrong: dict[str, Any], reason: str,
           case: str) -> Any:
    """One misconfiguration: what is wrong, the reason /readyz must give, its report row."""
    checked = f"the service stays unready; /readyz names {dependency} and says: {reason}"
    return pytest.param(dependency, wrong, reason, id=case_id,
                        marks=pytest.mark.reliability(case, checked))


WRONG = [
    _wrong("kafka-password", "kafka", {"kafka_password": "not-the-password"},
           "SASL login refused", "wrong Kafka SCRAM password"),
    _wrong("kafka-ca", "kafka", {"ca_file": _other_ca}, "unable to get local issuer certificate",
           "Kafka's certificate signed by a CA the service does not trust"),
    _wrong("redis-password", "redis", {"redis_password": "not-the-password"},
           "invalid username-password", "wrong Redis password"),
    _wrong("redis-ca", "redis", {"ca_file": _other_ca}, "CERTIFICATE_VERIFY_FAILED",
           "Redis's certificate signed by a CA the service does not trust"),
]


@pytest.mark.parametrize(("dependency", "wrong", "reason"), WRONG)
async def test_a_wrong_secret_or_an_untrusted_ca_keeps_the_service_unready_and_says_why(
    secure_servers: SecureServers, topic_prefix: str, tmp_path: Path,
    dependency: str, wrong: dict[str, Any], reason: str,
) -> None:
    overrides = {key: value(secure_servers) if callable(value) else value
                 for key, value in wrong.items()}
    if dependency == "kafka":  # Redis right, so the service gets as far as Kafka
        env = {**service_env(secure_servers, topic_prefix, **overrides),
               "CLINICFLOW_REDIS_CA_FILE": str(secure_servers.ca_file)}
    else:
        env = service_env(secure_servers, topic_prefix, **overrides)
    log = tmp_path / "checkin.log"
    service = ServiceProcess("checkin", env, log)
    service.start()
    try:
        async with httpx.AsyncClient() as client:
            async def readyz() -> dict[str, Any]:
                assert service.process is not None and service.process.poll() is None, (
                    f"checkin exited: {log.read_text()[-3000:]}")
                try:
                    response = await client.get(f"{service.url}/readyz", timeout=5)
                except httpx.HTTPError:
                    return {}
                assert response.status_code == 503, response.text
                return dict(response.json()["checks"])

            async def explained() -> Any:
                checks = await readyz()
                return checks if reason in checks.get(dependency, "") else None

            first = await eventually(explained, timeout=60, interval=0.3)
            assert first[dependency].startswith("unreachable"), first
            # it keeps trying (a fixed secret or CA on the server side is picked up) and
            # stays unready meanwhile, still saying why
            retried = f"{dependency} not reachable, retrying"
            await eventually(lambda: log.read_text().count(retried) >= 2, timeout=30)
            assert reason in (await readyz())[dependency]
            healthz = await client.get(f"{service.url}/healthz", timeout=5)
            assert healthz.status_code == 200  # alive, answering, not hung
        secrets = [value for value in overrides.values() if isinstance(value, str)]
        secrets += [secure_servers.kafka_password, secure_servers.redis_password]
        assert not any(secret in log.read_text() for secret in secrets), \
            "a password was written to the log"
    finally:
        service.stop()


@pytest.mark.reliability(
    "production mode with plaintext Kafka",
    "the service refuses to start and names CLINICFLOW_KAFKA_SECURITY_PROTOCOL",
)
def test_production_without_kafka_security_refuses_to_start(
    secure_servers: SecureServers, topic_prefix: str,
) -> None:
    env = {**service_env(secure_servers, topic_prefix),
           "CLINICFLOW_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    env.pop("CLINICFLOW_KAFKA_SSL_CAFILE")
    result = subprocess.run([sys.executable, "-m", "tools.cli", "run", "flow", "--port", "1"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0
    assert "refusing to start in production" in result.stderr
    assert "CLINICFLOW_KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in result.stderr


@pytest.mark.reliability(
    "TLS settings that cannot work (missing CA file, CA file for a plain redis:// URL)",
    "settings are refused at start with the variable named",
)
def test_tls_settings_that_cannot_work_are_refused_naming_the_variable(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(ValueError, match="CLINICFLOW_REDIS_CA_FILE: cannot read"):
        CommonSettings(redis_url="rediss://:pw@127.0.0.1:6380/0", redis_ca_file=missing)
    with pytest.raises(ValueError, match="CLINICFLOW_KAFKA_SSL_CAFILE: cannot read"):
        CommonSettings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=missing)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="not rediss://"):
        CommonSettings(redis_url="redis://:pw@127.0.0.1:6379/0", redis_ca_file=str(ca))
    with pytest.raises(ValueError, match="not SASL_SSL or SSL"):
        CommonSettings(kafka_ssl_cafile=str(ca))
    assert CommonSettings(redis_url="rediss://:pw@127.0.0.1:6380/0", redis_ca_file=str(ca)
                          ).redis_tls_options() == {"ssl_ca_certs": str(ca)}
