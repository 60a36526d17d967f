"""Fixtures the integration tests share beyond the session's stack (tests/conftest.py)."""

from tests.integration.notifications_support import notifications_env, smtp_server
from tests.integration.services_support import clinic_services

__all__ = ["clinic_services", "notifications_env", "smtp_server"]
