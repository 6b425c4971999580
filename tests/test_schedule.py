"""The daemon's schedule: crontab weekday numbers mean what cron means (0 = Sunday)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.combining import OrTrigger

from sync_worker.schedule import cron_weekdays, trigger_for


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1", "mon"),
        ("6", "sat"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0,6", "sat,sun"),
        ("5-7", "fri,sat,sun"),
        ("*/2", "tue,thu,sat,sun"),
        ("1-5/2", "mon,wed,fri"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
        ("SUN,wed", "wed,sun"),
    ],
)
def test_cron_weekdays_become_names(field: str, names: str) -> None:
    assert cron_weekdays(field) == names


@pytest.mark.parametrize("field", ["8", "x", "5-1", "*/0"])
def test_bad_weekdays_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match="weekday"):
        cron_weekdays(field)


def fire_times(expression: str, start: datetime, count: int) -> list[datetime]:
    trigger = trigger_for(300, expression, timezone=UTC)
    times: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        assert nxt is not None
        times.append(nxt)
        previous, now = nxt, nxt + timedelta(seconds=1)
    return times


def test_sunday_zero_fires_on_sundays_only() -> None:
    # 2026-11-25 is a Wednesday.
    times = fire_times("0 9 * * 0", datetime(2026, 11, 25, tzinfo=UTC), 3)
    assert [t.strftime("%a %H:%M") for t in times] == ["Sun 09:00"] * 3
    assert times[0].date().isoformat() == "2026-11-29"


def test_weekdays_one_to_five_skip_the_weekend() -> None:
    times = fire_times("30 6 * * 1-5", datetime(2026, 11, 27, 7, tzinfo=UTC), 3)
    assert [t.strftime("%a") for t in times] == ["Mon", "Tue", "Wed"]


def test_day_and_weekday_together_fire_on_either_as_cron_does() -> None:
    trigger = trigger_for(300, "0 0 1 * 1", timezone=UTC)
    assert isinstance(trigger, OrTrigger)
    times = fire_times("0 0 1 * 1", datetime(2026, 11, 25, tzinfo=UTC), 3)
    # Monday 30 Nov, Tuesday 1 Dec (the 1st), Monday 7 Dec.
    assert [t.date().isoformat() for t in times] == ["2026-11-30", "2026-12-01", "2026-12-07"]


def test_no_cron_means_a_fixed_interval() -> None:
    start = datetime(2026, 11, 25, tzinfo=UTC)
    trigger = trigger_for(300, "", timezone=UTC)
    first = trigger.get_next_fire_time(None, start)
    assert first is not None
    second = trigger.get_next_fire_time(first, first)
    assert second is not None
    assert second - first == timedelta(seconds=300)
