"""Fixtures the integration tests share beyond the session's stack (tests/conftest.py)."""

from tests.integration.notifications_support import notifications_env, smtp_server
from tests.integration.services_support import all_services, clinic_services

__all__ = ["all_services", "clinic_services", "notifications_env", "smtp_server"]
