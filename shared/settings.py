"""Settings read from the environment (``CLINICFLOW_`` prefix), one class per service.

Safe defaults for local use; ``CLINICFLOW_ENV=production`` refuses to start with
default or missing secrets (style.md, convention 11).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.clinics import ClinicDirectory

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
    kafka_ssl_cafile: str | None = Field(
        default=None, description="PEM file of the CA(s) that signed the brokers' "
        "certificates (default: the system's trust store)")
    topic_prefix: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_ca_file: str | None = Field(
        default=None, description="PEM file of the CA(s) that signed Redis's certificate, "
        "for a rediss:// URL (default: the system's trust store)")
    redis_prefix: str = "cf"
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    host: str = "127.0.0.1"
    credentials: str | None = Field(
        default=None,
        description='JSON list of {"name","role","clinics":[..],"token" or "token_sha256"}',
    )
    max_body_bytes: int = 256 * 1024
    clinics: str | None = Field(
        default=None,
        description='JSON: {"north": {"name", "timezone": "America/Chicago", "providers": '
                    '{"p1": "Dr. Okafor"}, "rooms": {"r1": "Room 1"}}} (shared/clinics.py)')
    default_timezone: str = Field(
        default="UTC", description="IANA zone of a clinic not in CLINICFLOW_CLINICS")
    clock_warp: str | None = Field(
        default=None, description="a simulated clock instead of the wall clock: "
        "'<sim origin ISO>@<wall origin epoch seconds>x<speed>' (shared/clock.py WarpClock; "
        "`clinicflow up --day` sets it); refused in production")

    @field_validator("clock_warp")
    @classmethod
    def _clock_warp_parses(cls, value: str | None) -> str | None:
        if value:
            from shared.clock import WarpClock

            try:
                WarpClock.parse(value)
            except ValueError as exc:
                raise ValueError(f"CLINICFLOW_CLOCK_WARP: {exc}") from None
        return value or None

    @model_validator(mode="after")
    def _clinics_parse(self) -> CommonSettings:
        self.clinic_directory()  # refuses to start with a bad zone or shape, saying where
        return self

    def clinic_directory(self) -> ClinicDirectory:
        """The configured clinics (zones, names of providers and rooms)."""
        return ClinicDirectory.parse(self.clinics, self.default_timezone)

    @field_validator("kafka_ssl_cafile", "redis_ca_file")
    @classmethod
    def _ca_file_readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            name = f"CLINICFLOW_{(info.field_name or '').upper()}"
            try:
                with open(value, "rb") as handle:
                    handle.read(1)
            except OSError as exc:
                raise ValueError(f"{name}: cannot read {value!r}: {exc.strerror}") from None
        return value

    @model_validator(mode="after")
    def _transport_consistent(self) -> CommonSettings:
        if self.redis_ca_file and not self.redis_url.startswith("rediss://"):
            raise ValueError("CLINICFLOW_REDIS_CA_FILE is set but CLINICFLOW_REDIS_URL is not "
                             "rediss:// (TLS): use rediss://:password@host:port/db")
        if self.kafka_ssl_cafile and self.kafka_security_protocol not in ("SASL_SSL", "SSL"):
            raise ValueError("CLINICFLOW_KAFKA_SSL_CAFILE is set but "
                             "CLINICFLOW_KAFKA_SECURITY_PROTOCOL is "
                             f"{self.kafka_security_protocol}, not SASL_SSL or SSL")
        return self

    def redis_tls_options(self) -> dict[str, str]:
        """Keyword arguments for ``Redis.from_url``: the private CA of a rediss:// URL."""
        return {"ssl_ca_certs": self.redis_ca_file} if self.redis_ca_file else {}

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
        if self.clock_warp:
            problems.append("CLINICFLOW_CLOCK_WARP is set (a simulated clock)")
        problems.extend(self._kafka_production_problems())
        problems.extend(self.production_problems())
        if problems:
            raise InsecureConfiguration(
                "refusing to start in production: " + "; ".join(problems)
            )
        return self

    def production_problems(self) -> list[str]:
        """Service-specific secrets that must be set in production (override)."""
        return []

    def _kafka_production_problems(self) -> list[str]:
        """Production events cross the network encrypted and authenticated: SASL_SSL
        with a username and a password."""
        if self.kafka_security_protocol != "SASL_SSL":
            return [f"CLINICFLOW_KAFKA_SECURITY_PROTOCOL is {self.kafka_security_protocol} "
                    "(production needs SASL_SSL: TLS and a SASL login)"]
        missing = [name for name, value in (
            ("CLINICFLOW_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
            ("CLINICFLOW_KAFKA_SASL_PASSWORD", self.kafka_sasl_password
             and self.kafka_sasl_password.get_secret_value())) if not value]
        return [f"{name} is not set" for name in missing]


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
    flow_session_timeout_ms: int = Field(
        default=10_000, ge=1000,
        description="how soon a dead flow instance's partitions move to a live one")
    flow_tick_seconds: float = 20.0
    flow_publish_estimates: bool = True
    flow_sse_max_per_credential: int = 20
    flow_sse_max_total: int = 500
    flow_overdue_limits: str = Field(
        default="{}",
        description='JSON minutes before a nurse-station row turns overdue: {"default": '
        '{"waiting": 10, "roomed": 15, "in_room": 40}, "clinics": {"north": {"waiting": 5}}}; '
        "waiting counts from the appointment (arrival for walk-ins), roomed from rooming "
        "until the provider comes in, in_room from rooming",
    )
    flow_nurse_alerts_url: str | None = Field(
        default=None,
        description="base URL of the notifications service (http://127.0.0.1:8003): the "
        "nurse station also shows its room-ready alerts, the operations page how right the "
        "told waits were today; that service must allow this one's origin in "
        "CLINICFLOW_NOTIFICATIONS_CORS_ORIGINS",
    )

    @field_validator("flow_overdue_limits")
    @classmethod
    def _overdue_limits_parse(cls, value: str) -> str:
        _overdue_limits(value, None)  # a ValueError names what is wrong
        return value

    def overdue_limits_for(self, clinic_id: str) -> dict[str, float]:
        """Minutes per status (waiting, roomed, in_room) before a row is overdue."""
        return _overdue_limits(self.flow_overdue_limits, clinic_id)


OVERDUE_DEFAULTS: dict[str, float] = {"waiting": 10, "roomed": 15, "in_room": 40}


def _overdue_limits(raw: str, clinic_id: str | None) -> dict[str, float]:
    name = "CLINICFLOW_FLOW_OVERDUE_LIMITS"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict) or set(parsed) - {"default", "clinics"}:
        raise ValueError(f'{name} must be an object with "default" and/or "clinics"')
    clinics = parsed.get("clinics", {})
    if not isinstance(clinics, dict):
        raise ValueError(f'{name}: "clinics" must map clinic ids to limits')
    tables = {"default": parsed.get("default", {}),
              **{f"clinics.{c}": v for c, v in clinics.items()}}
    for where, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"{name}: {where} must be an object of minutes")
        for status, minutes in table.items():
            if status not in OVERDUE_DEFAULTS:
                raise ValueError(f"{name}: {where}.{status} is not one of "
                                 f"{', '.join(OVERDUE_DEFAULTS)}")
            if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0:
                raise ValueError(f"{name}: {where}.{status} must be a positive number of minutes")
    return {**OVERDUE_DEFAULTS, **parsed.get("default", {}), **clinics.get(clinic_id, {})}


class CheckinSettings(CommonSettings):
    checkin_port: int = 8001
    checkin_group_id: str = "checkin"
    checkin_session_timeout_ms: int = Field(
        default=10_000, ge=1000,
        description="how soon a dead check-in instance's partitions move to a live one")
    checkin_no_show_after_minutes: int = Field(default=30, ge=1)
    checkin_no_show_check_seconds: float = Field(
        default=60.0, ge=0, description="how often the no-show sweep runs (0: never; tests "
        "call its tick themselves)")
    checkin_late_after_minutes: int = Field(default=10, ge=0)
    checkin_lookup_rate_per_minute: int = Field(default=20, ge=1)
    checkin_lookup_misses_per_minute: int = Field(default=5, ge=1)
    checkin_timezone: str | None = Field(
        default=None, description="older setting, read by check-in only: IANA zone of the "
        "day of a clinic that CLINICFLOW_CLINICS gives none (unset: "
        "CLINICFLOW_DEFAULT_TIMEZONE); a zone in CLINICFLOW_CLINICS wins; check-in warns at "
        "start when it differs from CLINICFLOW_DEFAULT_TIMEZONE (the other services' zone)"
    )
    checkin_visit_types: str = Field(
        default="{}", description='JSON {"code": "visit_type"}: appointment-type codes (FHIR, '
        "CSV, walk-ins; any case) and the visit type they become, over the default map of "
        "HL7 v2 table 0276 and common codes (services/checkin/README.md)",
    )
    checkin_barrier_timeout_seconds: float = Field(
        default=5.0, gt=0, description="how long a cancel waits for checkin's projection to "
        "hold the clinic's floor partition up to its end before answering 503",
    )
    checkin_identity_secret: SecretStr = Field(
        default=SecretStr("dev-checkin-identity-secret"),
        description="HMAC key for the kiosk's date-of-birth + initials check (min 16 chars)",
    )
    checkin_hl7_port: int = Field(
        default=0, ge=0, le=65535, description="port of the HL7 v2 MLLP listener on "
        "CLINICFLOW_CHECKIN_HL7_HOST (0: no listener)")
    checkin_hl7_host: str = Field(default="127.0.0.1", description="address the MLLP "
                                  "listener binds (loopback unless a deployment opens it)")
    checkin_hl7_max_message_bytes: int = Field(
        default=1024 * 1024, ge=4096, description="a larger HL7 message is answered AR "
        "unread (its bytes are skipped, never held)")
    checkin_feeds: str = Field(
        default="{}", description='JSON {"SENDING_FACILITY": {"clinic": "north", '
        '"providers": {...}, "rooms": {...}, "visit_types": {...}}}: which clinic each EHR '
        "feed (HL7 MSH-4, FHIR source) writes to and its code maps "
        "(docs/interfaces.md)")
    # a day's FHIR Bundle for a large clinic is bigger than the common 256 KiB
    max_body_bytes: int = 1024 * 1024

    @field_validator("checkin_feeds")
    @classmethod
    def _feeds_parse(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"CLINICFLOW_CHECKIN_FEEDS is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError('CLINICFLOW_CHECKIN_FEEDS must be an object: {"GENHOS": '
                             '{"clinic": "north"}}')
        return value

    @field_validator("checkin_timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"CLINICFLOW_CHECKIN_TIMEZONE {value!r} is not an IANA zone") from None
        return value

    @field_validator("checkin_visit_types")
    @classmethod
    def _visit_types_parse(cls, value: str) -> str:
        name = "CLINICFLOW_CHECKIN_VISIT_TYPES"
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f'{name} must be an object: {{"FOLLOWUP": "follow_up"}}')
        for code, visit_type in parsed.items():
            if not isinstance(visit_type, str) or not 1 <= len(visit_type.strip()) <= 40:
                raise ValueError(f"{name}[{code!r}] must be a visit type of 1 to 40 characters")
        return value

    def checkin_visit_type_map(self) -> dict[str, str]:
        """The deployment's own appointment-type codes (over checkin's default map)."""
        parsed: dict[str, str] = json.loads(self.checkin_visit_types)
        return parsed

    def clinic_directory(self) -> ClinicDirectory:
        """The configured clinics; a clinic not in CLINICFLOW_CLINICS lives in
        CLINICFLOW_CHECKIN_TIMEZONE when it is set, else CLINICFLOW_DEFAULT_TIMEZONE."""
        return ClinicDirectory.parse(self.clinics,
                                     self.checkin_timezone or self.default_timezone)

    def zone_warning(self) -> str | None:
        """What to warn of at start when CLINICFLOW_CHECKIN_TIMEZONE (read by check-in
        only) puts a clinic CLINICFLOW_CLINICS gives no zone elsewhere than
        CLINICFLOW_DEFAULT_TIMEZONE, where flow, notifications and billing put it: its
        days, quiet hours and receipts would be cut at other midnights than check-in's."""
        from zoneinfo import ZoneInfo

        if self.checkin_timezone is None or \
                ZoneInfo(self.checkin_timezone).key == ZoneInfo(self.default_timezone).key:
            return None
        unzoned = "" if not self.clinics else ", ".join(sorted(
            set(json.loads(self.clinics)) - _clinics_with_a_zone(self.clinics)))
        if self.clinics and not unzoned:
            return None  # every clinic served has its zone in CLINICFLOW_CLINICS
        which = f"clinics {unzoned}" if unzoned else "every clinic"
        return (f"CLINICFLOW_CHECKIN_TIMEZONE is {self.checkin_timezone} but "
                f"CLINICFLOW_DEFAULT_TIMEZONE is {self.default_timezone}: check-in puts "
                f"{which} in {self.checkin_timezone}, the other services in "
                f"{self.default_timezone}; give each clinic its timezone in "
                "CLINICFLOW_CLINICS (or set CLINICFLOW_DEFAULT_TIMEZONE, which every "
                "service reads)")

    def production_problems(self) -> list[str]:
        secret = self.checkin_identity_secret.get_secret_value()
        if secret == "dev-checkin-identity-secret":
            return ["CLINICFLOW_CHECKIN_IDENTITY_SECRET is the development default"]
        if len(secret) < 16:
            return ["CLINICFLOW_CHECKIN_IDENTITY_SECRET is shorter than 16 characters"]
        return []


class NotificationsSettings(CommonSettings):
    notifications_port: int = 8003
    notifications_group_id: str = "notifications"
    notifications_rules: str = Field(
        default="{}",
        description='JSON: {"default": {rule: value}, "clinics": {"north": {rule: value}}}; '
        "rules and defaults in services/notifications/README.md",
    )
    notifications_batch_max: int = Field(default=500, ge=1)
    notifications_batch_timeout_ms: int = Field(default=20, ge=1)
    notifications_session_timeout_ms: int = Field(
        default=10_000, ge=1000,
        description="how soon a dead notifier's partitions move to a live one")
    notifications_tick_seconds: float = Field(
        default=1.0, ge=0, description="how often the notifier acts on the clock (settled "
        "warnings, windows that ended); 0: never (tests call its tick themselves)")
    notifications_send_concurrency: int = Field(default=8, ge=1)
    notifications_send_timeout_seconds: float = Field(default=10.0, gt=0)
    notifications_max_attempts: int = Field(default=5, ge=1)
    notifications_retry_base_seconds: float = Field(default=2.0, gt=0)
    notifications_retry_max_seconds: float = Field(default=300.0, gt=0)
    notifications_sse_max_total: int = Field(default=200, ge=1)
    notifications_cors_origins: list[str] = Field(default_factory=list)
    notifications_barrier_timeout_seconds: float = Field(
        default=5.0, gt=0, description="how long a contact command naming a visit the "
        "notifier does not know yet waits for it to read the clinic's floor (then 503)")
    smtp_host: str | None = Field(
        default=None, description="the mail server; unset (or empty): e-mail is not "
        "available and contacts by e-mail are refused")
    smtp_port: int = 1025
    smtp_sender: str = "clinic@example.invalid"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    sms_gateway_url: str | None = None
    sms_hmac_secret: SecretStr = SecretStr("dev-sms-secret")
    paging_webhook_url: str | None = None
    paging_hmac_secret: SecretStr = SecretStr("dev-paging-secret")
    notifications_feedback_secret: SecretStr = Field(
        default=SecretStr("dev-feedback-secret"), description="HMAC key of the feedback "
        "links sent after checkout (production refuses the default)")
    notifications_feedback_link_hours: float = Field(
        default=72.0, gt=0, le=24 * 30, description="how long a feedback link stays valid")
    notifications_feedback_retention_days: int = Field(
        default=365, ge=1, le=3650, description="how long patients' feedback answers (and "
        "their free text) are kept")
    notifications_public_url: str = Field(
        default="http://127.0.0.1:8003", description="this service's address as patients "
        "reach it: the feedback links in messages start with it")

    @field_validator("notifications_rules")
    @classmethod
    def _rules_are_a_json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"CLINICFLOW_NOTIFICATIONS_RULES is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError("CLINICFLOW_NOTIFICATIONS_RULES must be a JSON object")
        return value

    @field_validator("smtp_host")
    @classmethod
    def _no_host_is_none(cls, value: str | None) -> str | None:
        return (value or "").strip() or None

    def production_problems(self) -> list[str]:
        problems = []
        if self.sms_hmac_secret.get_secret_value() == "dev-sms-secret":
            problems.append("CLINICFLOW_SMS_HMAC_SECRET is the development default")
        if self.paging_webhook_url and \
                self.paging_hmac_secret.get_secret_value() == "dev-paging-secret":
            problems.append("CLINICFLOW_PAGING_HMAC_SECRET is the development default")
        if self.notifications_feedback_secret.get_secret_value() == "dev-feedback-secret":
            problems.append("CLINICFLOW_NOTIFICATIONS_FEEDBACK_SECRET is the development "
                            "default")
        if urlsplit(self.notifications_public_url).hostname in ("127.0.0.1", "localhost",
                                                                 "::1"):
            problems.append("CLINICFLOW_NOTIFICATIONS_PUBLIC_URL is on loopback: patients "
                            "could not open their feedback links")
        return problems


class BillingSettings(CommonSettings):
    billing_port: int = 8004
    billing_group_id: str = Field(
        default="billing", description="floor consumer group; the ledger projection's is "
        "this plus '-ledger'"
    )
    billing_session_timeout_ms: int = Field(
        default=10_000, ge=1000,
        description="how soon a dead billing instance's partitions (of both groups) move "
        "to a live one")
    fee_schedule_path: str | None = Field(
        default=None, description="the clinics' fee schedule (CSV); default: "
        "services/billing/fee_schedule.example.csv"
    )
    billing_timezone: str | None = Field(
        default=None, description="older setting: IANA zone of the business day of a clinic "
        "CLINICFLOW_CLINICS gives no zone (unset: CLINICFLOW_DEFAULT_TIMEZONE); refused at "
        "start when CLINICFLOW_DEFAULT_TIMEZONE is set to another zone"
    )
    billing_clinic_timezones: dict[str, str] = Field(
        default_factory=dict, description='older setting: JSON per clinic, e.g. {"north": '
        '"America/Chicago"}, read for a clinic CLINICFLOW_CLINICS gives no zone; refused at '
        "start when CLINICFLOW_CLINICS names another zone for the clinic"
    )
    billing_batch_max: int = Field(default=500, ge=1)
    billing_batch_timeout_ms: int = Field(default=20, ge=1)
    billing_barrier_timeout_seconds: float = Field(default=30.0, gt=0)
    billing_command_wait_seconds: float = Field(default=5.0, ge=0)
    billing_outbox_relay_seconds: float = Field(
        default=1.0, ge=0, description="how often the outbox relay publishes the consumers' "
        "dead letters; 0: no relay loop (tests call its tick themselves)"
    )

    @field_validator("billing_timezone")
    @classmethod
    def _zone_exists(cls, value: str | None) -> str | None:
        if value is not None:
            _check_zone(value, "CLINICFLOW_BILLING_TIMEZONE")
        return value

    @field_validator("billing_clinic_timezones")
    @classmethod
    def _zones_exist(cls, value: dict[str, str]) -> dict[str, str]:
        for clinic_id, zone in value.items():
            _check_zone(zone, f"CLINICFLOW_BILLING_CLINIC_TIMEZONES[{clinic_id!r}]")
        return value

    @model_validator(mode="after")
    def _billing_zones_agree(self) -> BillingSettings:
        """The older billing zones only fill in what CLINICFLOW_CLINICS and
        CLINICFLOW_DEFAULT_TIMEZONE leave unsaid: naming another zone for the same clinic
        (or as the default) would cut billing's day elsewhere than every other service's,
        so billing refuses to start and says which settings disagree."""
        from zoneinfo import ZoneInfo

        problems = []
        zoned = _clinics_with_a_zone(self.clinics)
        directory = ClinicDirectory.parse(self.clinics, self.default_timezone)
        for clinic_id, zone in sorted(self.billing_clinic_timezones.items()):
            theirs = directory.zone(clinic_id).key
            if clinic_id in zoned and ZoneInfo(zone).key != theirs:
                problems.append(
                    f"CLINICFLOW_BILLING_CLINIC_TIMEZONES[{clinic_id!r}] is {zone} but "
                    f"CLINICFLOW_CLINICS[{clinic_id!r}].timezone is {theirs}")
        if (self.billing_timezone is not None and "default_timezone" in self.model_fields_set
                and ZoneInfo(self.billing_timezone).key != ZoneInfo(self.default_timezone).key):
            problems.append(f"CLINICFLOW_BILLING_TIMEZONE is {self.billing_timezone} but "
                            f"CLINICFLOW_DEFAULT_TIMEZONE is {self.default_timezone}")
        if problems:
            raise ValueError("; ".join(problems) + ": a clinic's zone belongs in "
                             "CLINICFLOW_CLINICS (or CLINICFLOW_DEFAULT_TIMEZONE); remove the "
                             "billing setting that disagrees")
        return self

    def clinic_directory(self) -> ClinicDirectory:
        """The configured clinics, whose zones cut billing's business days and stamp its
        receipts: CLINICFLOW_CLINICS first; for a clinic it gives no zone,
        CLINICFLOW_BILLING_CLINIC_TIMEZONES, then CLINICFLOW_BILLING_TIMEZONE, then
        CLINICFLOW_DEFAULT_TIMEZONE (the older billing settings fill in only)."""
        from dataclasses import replace
        from zoneinfo import ZoneInfo

        from shared.clinics import Clinic

        directory = ClinicDirectory.parse(self.clinics,
                                          self.billing_timezone or self.default_timezone)
        zoned = _clinics_with_a_zone(self.clinics)
        clinics = dict(directory.clinics)
        for clinic_id, zone in self.billing_clinic_timezones.items():
            if clinic_id not in zoned:
                known = clinics.get(clinic_id) or Clinic(clinic_id, directory.default_zone)
                clinics[clinic_id] = replace(known, zone=ZoneInfo(zone))
        return ClinicDirectory(clinics, directory.default_zone)

    def timezone_of(self, clinic_id: str) -> str:
        """The IANA zone whose midnight starts ``clinic_id``'s business day."""
        return self.clinic_directory().zone(clinic_id).key


def _clinics_with_a_zone(raw: str | None) -> set[str]:
    """The clinics CLINICFLOW_CLINICS (already checked) names a zone for."""
    if not raw:
        return set()
    document = json.loads(raw)
    return {clinic_id for clinic_id, entry in document.items()
            if isinstance(entry, dict) and "timezone" in entry}


def _check_zone(name: str, where: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name == "UTC":
        return
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: unknown time zone {name!r}") from None
