"""Fixtures the integration tests share beyond the session's stack (tests/conftest.py)."""

from tests.integration.notifications_support import notifications_env, smtp_server

__all__ = ["notifications_env", "smtp_server"]
