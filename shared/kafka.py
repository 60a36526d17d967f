"""Kafka wiring shared by every service: the FastStream broker factory and dead letters.

Delivery choices (design decision 3), set explicitly rather than left to defaults:
producers use ``acks="all"`` with idempotence on; consumers never auto-commit
before the work is safe. Effects are made exactly-once by idempotent consumers
that keep their applied offsets in Redis, not by Kafka transactions.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from base64 import b64encode
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import OutOfOrderSequenceNumber
from faststream import BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from shared.settings import CommonSettings
from shared.topics import DEAD_LETTER, TopicSpec, topic_name


def security_for(settings: CommonSettings) -> BaseSecurity | None:
    """FastStream security object for the configured Kafka protocol (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    use_ssl = protocol in ("SASL_SSL", "SSL")
    if use_ssl:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    user = settings.kafka_sasl_username or ""
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    mechanism = {
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
        "PLAIN": SASLPlaintext,
    }[settings.kafka_sasl_mechanism]
    return mechanism(username=user, password=password, ssl_context=context, use_ssl=use_ssl)


def aiokafka_security_kwargs(settings: CommonSettings) -> dict[str, Any]:
    """The same security settings as keyword arguments for plain aiokafka clients."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SASL_SSL", "SSL"):
        kwargs["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return kwargs


async def kafka_connect_problem(settings: CommonSettings, timeout: float = 5.0) -> str | None:
    """Why a client with these settings cannot log in to the bootstrap brokers, or None.

    aiokafka's bootstrap error says only "Unable to bootstrap"; the reason (a refused
    SCRAM password, a certificate signed by a CA the client does not trust, nothing
    listening) is what an operator needs, so one connection per bootstrap server is
    tried here and its error kept.
    """
    from aiokafka.conn import create_conn

    problems = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout * 1000),
                            **aiokafka_security_kwargs(settings)), timeout)
        except Exception as exc:
            problems.append(f"{server.strip()}: {_reason(exc)}")
            continue
        conn.close()
        return None
    return "; ".join(problems)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message} (is CLINICFLOW_KAFKA_SSL_CAFILE the brokers' CA?)"
    if "SaslAuthenticationFailed" in text or "Authentication failed" in text:
        return (f"SASL login refused: {text} (check CLINICFLOW_KAFKA_SASL_USERNAME, "
                "_PASSWORD and _MECHANISM)")
    return text


# what aiokafka's idempotent producer answers once its sequence and the broker's parted
# (after the broker refused a batch for good, a record too large for its topic say): it
# never recovers by itself (aiokafka issue 1017), every later record to that partition
# fails the same way until the process restarts
PRODUCER_BROKEN = (OutOfOrderSequenceNumber,)


def producer_watch(on_broken: Callable[[BaseException], None]) -> type[BaseMiddleware]:
    """A FastStream middleware that calls ``on_broken`` when a publish fails with
    ``PRODUCER_BROKEN``: awaited (the publish raises) or handed over without waiting (its
    confirmation fails later, ``ServiceRuntime.send``)."""

    def seen(outcome: asyncio.Future[Any]) -> None:
        if not outcome.cancelled() and isinstance(outcome.exception(), PRODUCER_BROKEN):
            on_broken(outcome.exception())  # type: ignore[arg-type]

    class ProducerWatch(BaseMiddleware):
        async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]],
                                cmd: Any) -> Any:
            try:
                result = await call_next(cmd)
            except PRODUCER_BROKEN as exc:
                on_broken(exc)
                raise
            if isinstance(result, asyncio.Future):
                result.add_done_callback(seen)
            return result

    return ProducerWatch


def make_broker(settings: CommonSettings, service: str,
                on_broken: Callable[[BaseException], None] | None = None) -> KafkaBroker:
    """A FastStream Kafka broker with safe producer settings and quiet per-message logging.
    ``on_broken``: told when the producer can no longer publish (``producer_watch``).

    FastStream logs two lines per message by default, which halves throughput:
    its logger is kept at WARNING.
    """
    logger = logging.getLogger(f"clinicflow.{service}.broker")
    logger.setLevel(logging.WARNING)
    return KafkaBroker(
        # FastStream wraps a string in a list, so "a:9092,b:9092" would be one bad host
        [server.strip() for server in settings.kafka_bootstrap.split(",")],
        client_id=f"clinicflow-{service}",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # commands are interactive: a 1 ms linger costs ~1.5 ms per request
        request_timeout_ms=15_000,
        security=security_for(settings),
        logger=logger,
        log_level=logging.DEBUG,
        graceful_timeout=10.0,
        middlewares=() if on_broken is None else (producer_watch(on_broken),),
    )


def session(timeout_ms: int) -> dict[str, Any]:
    """A consumer group member's session options: how soon a dead instance's partitions
    move to a live one (``timeout_ms``), with the heartbeat a third of it, as Kafka
    advises."""
    return {"session_timeout_ms": timeout_ms, "heartbeat_interval_ms": max(100, timeout_ms // 3)}


def topic(spec: TopicSpec, settings: CommonSettings) -> str:
    """The concrete topic name for this deployment (prefix applied)."""
    return topic_name(spec, settings.topic_prefix)


def dead_letter_record(
    *,
    raw: bytes | None,
    reason: str,
    consumer: str,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None = None,
) -> bytes:
    """The JSON record sent to the dead-letter topic: the original bytes and why."""
    text: str | None
    try:
        text = raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        text = None
    document = {
        "reason": reason,
        "consumer": consumer,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "dead_lettered_at": datetime.now(UTC).isoformat(),
        "original": text,
        "original_base64": None if text is not None or raw is None else b64encode(raw).decode(),
    }
    return orjson.dumps(document)


def dead_letter_topic(settings: CommonSettings) -> str:
    return topic(DEAD_LETTER, settings)
