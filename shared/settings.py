"""Settings read from the environment (``CLINICFLOW_`` prefix), one class per service.

Safe defaults for local use; ``CLINICFLOW_ENV=production`` refuses to start with
default or missing secrets (style.md, convention 11).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["front_desk", "kiosk", "nurse", "billing", "manager", "screen"]
ROLES: tuple[Role, ...] = ("front_desk", "kiosk", "nurse", "billing", "manager", "screen")


class Credential(BaseModel):
    """One bearer token: who holds it, their role, the clinics it opens (``*``: all)."""

    name: str
    role: Role
    clinics: list[str] = Field(default_factory=lambda: ["*"])
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def allows_clinic(self, clinic_id: str) -> bool:
        return "*" in self.clinics or clinic_id in self.clinics


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a bearer token is kept."""
    return hashlib.sha256(token.encode()).hexdigest()


# Development credentials: well known, refused in production.
DEV_TOKENS: dict[Role, str] = {role: f"dev-{role.replace('_', '-')}" for role in ROLES}


def dev_credentials() -> list[Credential]:
    return [
        Credential(name=f"dev {role}", role=role, token_sha256=hash_token(token))
        for role, token in DEV_TOKENS.items()
    ]


class InsecureConfiguration(RuntimeError):
    """Production mode with default or missing secrets."""


class CommonSettings(BaseSettings):
    """What every service reads. Environment variables: ``CLINICFLOW_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CLINICFLOW_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = (
        "PLAINTEXT"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    topic_prefix: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "cf"
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    host: str = "127.0.0.1"
    credentials: str | None = Field(
        default=None,
        description='JSON list of {"name","role","clinics":[..],"token" or "token_sha256"}',
    )
    max_body_bytes: int = 256 * 1024

    @field_validator("credentials")
    @classmethod
    def _credentials_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_credentials(value)
        return value

    def credential_list(self) -> list[Credential]:
        """The configured credentials, or the development set when none are given."""
        if self.credentials:
            return parse_credentials(self.credentials)
        return dev_credentials()

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> CommonSettings:
        if self.env != "production":
            return self
        problems: list[str] = []
        if not self.credentials:
            problems.append("CLINICFLOW_CREDENTIALS is not set (development tokens are refused)")
        else:
            dev_hashes = {hash_token(t) for t in DEV_TOKENS.values()}
            if any(c.token_sha256 in dev_hashes for c in parse_credentials(self.credentials)):
                problems.append("CLINICFLOW_CREDENTIALS contains a development token")
        if "@" not in self.redis_url and "password=" not in self.redis_url:
            problems.append("CLINICFLOW_REDIS_URL has no password")
        problems.extend(self.production_problems())
        if problems:
            raise InsecureConfiguration(
                "refusing to start in production: " + "; ".join(problems)
            )
        return self

    def production_problems(self) -> list[str]:
        """Service-specific secrets that must be set in production (override)."""
        return []


def parse_credentials(raw: str) -> list[Credential]:
    """Parse ``CLINICFLOW_CREDENTIALS``; plaintext tokens are hashed at once."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"CLINICFLOW_CREDENTIALS is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ValueError("CLINICFLOW_CREDENTIALS must be a JSON list")
    credentials = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"CLINICFLOW_CREDENTIALS[{index}] must be an object")
        item = dict(item)
        token = item.pop("token", None)
        if token is not None:
            if len(str(token)) < 16 and not str(token).startswith("dev-"):
                raise ValueError(f"CLINICFLOW_CREDENTIALS[{index}]: token shorter than 16")
            item["token_sha256"] = hash_token(str(token))
        credentials.append(Credential.model_validate(item))
    return credentials


class FlowSettings(CommonSettings):
    flow_port: int = 8002
    flow_group_id: str = "flow"
    flow_batch_max: int = 2000
    flow_batch_timeout_ms: int = 20
    flow_checkpoint_seconds: float = 1.0
    flow_tick_seconds: float = 20.0
    flow_publish_estimates: bool = True
    flow_sse_max_per_credential: int = 20
    flow_sse_max_total: int = 500


class CheckinSettings(CommonSettings):
    checkin_port: int = 8001
    checkin_no_show_after_minutes: int = 30
    checkin_lookup_rate_per_minute: int = 20


class NotificationsSettings(CommonSettings):
    notifications_port: int = 8003
    notifications_group_id: str = "notifications"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_sender: str = "clinic@example.invalid"
    sms_gateway_url: str | None = None
    sms_hmac_secret: SecretStr = SecretStr("dev-sms-secret")
    paging_webhook_url: str | None = None

    def production_problems(self) -> list[str]:
        if self.sms_hmac_secret.get_secret_value() == "dev-sms-secret":
            return ["CLINICFLOW_SMS_HMAC_SECRET is the development default"]
        return []


class BillingSettings(CommonSettings):
    billing_port: int = 8004
    billing_group_id: str = "billing"
    fee_schedule_path: str | None = None
