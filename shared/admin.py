"""``clinicflow topics create|list``: create every declared topic (shared/topics.py)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.kafka import aiokafka_security_kwargs
from shared.settings import CommonSettings
from shared.topics import ALL_TOPICS, topic_name


async def ensure_topics(
    bootstrap: str,
    prefix: str = "",
    replication_factor: int = 1,
    settings: CommonSettings | None = None,
    attempts: int = 30,
) -> list[str]:
    """Create every declared topic that does not exist yet; returns the names created."""
    security = aiokafka_security_kwargs(settings) if settings is not None else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
    for attempt in range(attempts):
        try:
            await admin.start()
            break
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(topic_name(spec, prefix), spec.partitions, replication_factor,
                     topic_configs=spec.topic_config())
            for spec in ALL_TOPICS
            if topic_name(spec, prefix) not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in wanted]
    finally:
        await admin.close()


def _create(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    created = asyncio.run(ensure_topics(bootstrap, settings.topic_prefix,
                                        args.replication_factor, settings))
    for name in created:
        print(f"created {name}")
    print(f"{len(ALL_TOPICS)} topics in place on {bootstrap}")
    return 0


def _list(_args: argparse.Namespace) -> int:
    for spec in ALL_TOPICS:
        retention = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms // 86_400_000}d"
        print(f"{spec.name:32} partitions={spec.partitions:<3} retention={retention:8} "
              f"{spec.description}")
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("topics", help="create or list clinicflow's Kafka topics")
    sub = parser.add_subparsers(dest="topics_command", required=True)
    create = sub.add_parser("create", help="create every declared topic that is missing")
    create.add_argument("--bootstrap", help="Kafka bootstrap (default CLINICFLOW_KAFKA_BOOTSTRAP)")
    create.add_argument("--replication-factor", type=int, default=1)
    create.set_defaults(func=_create)
    listing = sub.add_parser("list", help="the declared topics and their settings")
    listing.set_defaults(func=_list)
