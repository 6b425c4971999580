"""Turns SYNC_INTERVAL_SECONDS or a crontab expression into an APScheduler 3 trigger.

Crontab numbers weekdays 0 (and 7) = Sunday; APScheduler 3's `from_crontab` takes 0 = Monday.
We never hand APScheduler a weekday number: the field is expanded to day names first. When
both day-of-month and weekday are restricted, cron runs on either (OR); APScheduler's cron
trigger would need both (AND), so that case becomes an OrTrigger of the two.
"""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

# Index = crontab weekday number (0 = Sunday).
_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ORDER = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _day_number(token: str) -> int:
    token = token.strip().lower()
    if token in _NAMES:
        return _NAMES.index(token)
    if not token.isdigit() or not 0 <= int(token) <= 7:
        raise ValueError(f"weekday {token!r} is not 0-7 or a day name")
    return int(token) % 7


def cron_weekdays(field: str) -> str:
    """Expands a crontab weekday field into APScheduler day names (pure).

    >>> cron_weekdays("1-5")
    'mon,tue,wed,thu,fri'
    >>> cron_weekdays("0")
    'sun'
    """
    if field.strip() in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError("a weekday step must be 1 or more")
        if body in ("*", "?"):
            first, last = 0, 6
        elif "-" in body:
            start, end = body.split("-", 1)
            first, last = _day_number(start), _day_number(end)
            if end.strip() == "7":
                last = 7  # "5-7" is Friday to Sunday
        else:
            first = _day_number(body)
            last = 6 if step_text else first
        if last < first:
            raise ValueError(f"weekday range {body!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(name for name in _ORDER if _NAMES.index(name) in days)


def trigger_for(
    interval_seconds: int, cron: str = "", timezone: tzinfo | None = None
) -> BaseTrigger:
    """The daemon's trigger: the crontab expression if given, else a fixed interval."""
    if not cron:
        return IntervalTrigger(seconds=interval_seconds, timezone=timezone)
    minute, hour, day, month, weekday = cron.split()
    names = cron_weekdays(weekday)

    def cron_trigger(day_field: str, weekday_field: str) -> CronTrigger:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day_field,
            month=month,
            day_of_week=weekday_field,
            timezone=timezone,
        )

    if day not in ("*", "?") and names != "*":
        return OrTrigger([cron_trigger(day, "*"), cron_trigger("*", names)])
    return cron_trigger(day, names)
