"""Secured servers for the transport-security tests: a throwaway certificate authority, a
KRaft broker whose only client listener is SASL_SSL (SCRAM-SHA-512, PEM keystore) and a
redis-server that speaks TLS only and wants a password. All on 127.0.0.1, started by
``SecureServers.start`` and stopped by PID (``stop``); the module-scoped ``secure_servers``
fixture gives one set to a test module.

Certificates come from the ``openssl`` command line (the ``cryptography`` package is not
a dependency); each lives two days and is made fresh for every run.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import aiokafka_security_kwargs
from shared.settings import CommonSettings
from tools.stack import (
    Managed,
    StackError,
    ensure_redis_server,
    free_ports,
    kafka_properties,
    process_start_time,
    start_kafka,
)

KAFKA_USER = "clinicflow"
BROKER_USER = "broker"  # the broker's own inter-broker login
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class Authority:
    """A CA and one server certificate it signed (for 127.0.0.1 and localhost)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    server_pem: Path  # key + certificate chain: Kafka's PEM keystore


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("openssl is not installed: the TLS tests make their certificates "
                         "with it (apt-get install -y openssl)")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise StackError(f"openssl {' '.join(args[:2])} failed:\n{result.stderr}")


def make_authority(directory: Path, name: str = "clinicflow test CA") -> Authority:
    """A fresh CA in ``directory`` and a server certificate signed by it whose names are
    IP 127.0.0.1 and DNS localhost (what clients verify against)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext",
             "-out", "server.pem", cwd=directory)
    key, cert = directory / "server.key", directory / "server.pem"
    bundle = directory / "server-keystore.pem"
    bundle.write_text(key.read_text() + cert.read_text())
    for secret in (key, bundle, directory / "ca.key"):
        secret.chmod(0o600)
    return Authority(directory / "ca.pem", cert, key, bundle)


def secure_kafka_properties(data: Path, port: int, controller_port: int,
                            authority: Authority, broker_password: str) -> str:
    """The loopback node's server.properties with its client listener switched to
    SASL_SSL (SCRAM-SHA-512, PEM keystore); the controller listener stays on loopback."""
    properties: dict[str, str] = {}
    for line in kafka_properties(data, port, controller_port).splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            properties[key] = value
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="{BROKER_USER}" password="{broker_password}";')
    properties.update({
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(authority.server_pem),
        "ssl.truststore.type": "PEM",  # the broker's own client side (inter-broker)
        "ssl.truststore.location": str(authority.ca_cert),
        "ssl.client.auth": "none",
    })
    return "\n".join(f"{key}={value}" for key, value in properties.items()) + "\n"


def start_tls_redis(data: Path, tls_port: int, password: str, authority: Authority) -> Managed:
    """redis-server on 127.0.0.1:``tls_port`` with TLS only (plain port 0) and
    ``requirepass``; the configuration (and so the password) is in a 0600 file."""
    binary = ensure_redis_server()
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "redis.conf"
    conf.write_text("\n".join([
        "bind 127.0.0.1", "port 0", f"tls-port {tls_port}",
        f"tls-cert-file {authority.server_cert}", f"tls-key-file {authority.server_key}",
        f"tls-ca-cert-file {authority.ca_cert}", "tls-auth-clients no",
        f'requirepass "{password}"', f"dir {data}", "appendonly no", 'save ""',
        "daemonize no", "protected-mode yes", f"logfile {data / 'redis.log'}", "",
    ]))
    conf.chmod(0o600)
    output = data / "redis.out"
    with open(output, "ab") as handle:
        process = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                                   stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Managed("redis", process.pid, tls_port, str(conf), data / "redis.log", process,
                   process_start_time(process.pid), output)


@dataclass
class SecureServers:
    """One SASL_SSL broker and one TLS + password Redis, sharing one CA; ``other_ca`` is
    a CA that signed neither (what a client trusting the wrong authority holds)."""

    data: Path
    kafka_password: str = "kafka-secret-4f1e9b2c"
    redis_password: str = "redis-secret-8a7d3e61"
    broker_password: str = "broker-secret-0c5b7a94"
    kafka_port: int = 0
    redis_port: int = 0
    authority: Authority | None = None
    other_ca: Path | None = None
    processes: list[Managed] = field(default_factory=list)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def ca_file(self) -> Path:
        assert self.authority is not None, "start() first"
        return self.authority.ca_cert

    def redis_url(self, password: str | None = None) -> str:
        return f"rediss://:{password or self.redis_password}@127.0.0.1:{self.redis_port}/0"

    def env(self, *, kafka_password: str | None = None, redis_password: str | None = None,
            ca_file: Path | None = None) -> dict[str, str]:
        """What an operator sets to reach these servers (each value overridable to get
        one of them wrong)."""
        ca = str(ca_file or self.ca_file)
        return {
            "CLINICFLOW_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CLINICFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CLINICFLOW_KAFKA_SASL_MECHANISM": MECHANISM,
            "CLINICFLOW_KAFKA_SASL_USERNAME": KAFKA_USER,
            "CLINICFLOW_KAFKA_SASL_PASSWORD": kafka_password or self.kafka_password,
            "CLINICFLOW_KAFKA_SSL_CAFILE": ca,
            "CLINICFLOW_REDIS_URL": self.redis_url(redis_password),
            "CLINICFLOW_REDIS_CA_FILE": ca,
        }

    def settings(self, topic_prefix: str = "") -> CommonSettings:
        return CommonSettings(**{  # type: ignore[arg-type]
            key.removeprefix("CLINICFLOW_").lower(): value for key, value in self.env().items()
        }, topic_prefix=topic_prefix)

    def start(self) -> SecureServers:
        """Make the certificates, start both servers and wait until each answers over
        TLS with its password. On failure, stops what it started and raises StackError."""
        self.authority = make_authority(self.data / "ca")
        self.other_ca = make_authority(self.data / "other-ca", "someone else's CA").ca_cert
        self.kafka_port, controller_port, self.redis_port = free_ports(3)
        try:
            self.processes.append(start_tls_redis(self.data / "redis", self.redis_port,
                                                  self.redis_password, self.authority))
            kafka_data = self.data / "kafka"
            self.processes.append(start_kafka(
                kafka_data, self.kafka_port, controller_port,
                properties=secure_kafka_properties(kafka_data, self.kafka_port,
                                                   controller_port, self.authority,
                                                   self.broker_password),
                format_args=[
                    "--add-scram", f"{MECHANISM}=[name={BROKER_USER},"
                                   f"password={self.broker_password}]",
                    "--add-scram", f"{MECHANISM}=[name={KAFKA_USER},"
                                   f"password={self.kafka_password}]",
                ]))
            asyncio.run(self._wait_ready())
        except BaseException:
            self.stop()
            raise
        return self

    async def _wait_ready(self, timeout: float = 90.0) -> None:
        from redis.asyncio import Redis

        deadline = time.monotonic() + timeout
        settings = self.settings()
        redis_ok = kafka_ok = False
        last = ""
        while time.monotonic() < deadline:
            for managed in self.processes:
                if not managed.alive():
                    raise StackError(f"{managed.name} exited while starting:\n"
                                     f"{managed.tail()}")
            if not redis_ok:
                client = Redis.from_url(self.redis_url(), ssl_ca_certs=str(self.ca_file),
                                        socket_connect_timeout=2, socket_timeout=2)
                try:
                    redis_ok = bool(await client.ping())
                except Exception as exc:
                    last = f"redis: {exc!r}"
                finally:
                    await client.aclose()
            if redis_ok and not kafka_ok:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap,
                                            request_timeout_ms=5000,
                                            **aiokafka_security_kwargs(settings))
                try:  # a SASL_SSL client logs in and reads the metadata
                    await asyncio.wait_for(admin.start(), 10)
                    await asyncio.wait_for(admin.list_topics(), 10)
                    kafka_ok = True
                except Exception as exc:
                    last = f"kafka: {exc!r}"
                finally:
                    await admin.close()
            if redis_ok and kafka_ok:
                return
            await asyncio.sleep(0.3)
        tails = "\n".join(managed.tail() for managed in self.processes)
        raise StackError(f"the secured servers did not answer within {timeout:.0f}s "
                         f"({last}):\n{tails}")

    def stop(self) -> None:
        """Stop both servers (SIGTERM, SIGKILL after a grace period), by their PIDs."""
        for managed in self.processes:
            managed.stop(grace=15)
        self.processes.clear()


@pytest.fixture(scope="module")
def secure_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServers]:
    """A SASL_SSL Kafka and a TLS + password Redis for the tests of one module."""
    servers = SecureServers(tmp_path_factory.mktemp("secure")).start()
    try:
        yield servers
    finally:
        servers.stop()
