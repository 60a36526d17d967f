"""``clinicflow screenshots`` picks the kiosk's patient from the demo's schedule: a booked
appointment with a kiosk code, not arrived, the nearest to now first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tools.screenshots import ScreenshotError, chromium_path, kiosk_candidates

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def row(code: str | None, at: str, status: str = "booked",
        visit: str | None = None) -> dict[str, object]:
    return {"kiosk_code": code, "scheduled_at": at, "status": status, "visit_id": visit}


def test_the_booked_appointments_nearest_to_now_come_first() -> None:
    rows = [
        row("K-LATE", "2026-12-07T12:00:00-05:00"),  # 17:00 UTC: two hours away
        row("K-NEAR", "2026-12-07T09:50:00-05:00"),  # 14:50 UTC: ten minutes ago
        row("K-ARRIVED", "2026-12-07T10:00:00-05:00", "arrived", "v-1"),
        row("K-CANCELLED", "2026-12-07T10:00:00-05:00", "cancelled"),
        row(None, "2026-12-07T10:00:00-05:00"),  # no code: the kiosk cannot take it
        row("K-SOON", "2026-12-07T10:30:00-05:00"),  # 15:30 UTC
    ]
    assert kiosk_candidates(rows, NOW) == ["K-NEAR", "K-SOON", "K-LATE"]


def test_no_chromium_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tools.screenshots.shutil.which", lambda _name: None)
    with pytest.raises(ScreenshotError, match="no Chromium"):
        chromium_path()
