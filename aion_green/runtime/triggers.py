"""The fire times of a schedule: cron expressions and fixed intervals.

A trigger answers one question, ``next_after(t)``: the first fire time
strictly after the aware datetime ``t``, as an aware UTC datetime. Both are
pure functions of their inputs, so a schedule that asks them again on
replay gets the same answers.

Cron expressions have the five classic fields, evaluated in UTC unless a
``timezone`` (an IANA name, through :mod:`zoneinfo`) is given::

    minute  hour  day-of-month  month  day-of-week
    0-59    0-23  1-31          1-12   0-7 (0 and 7 are Sunday)

Each field is ``*`` or a comma list of ``n``, ``a-b``, ``*/s``, ``a-b/s``
or ``a/s`` (from ``a`` to the field's end, every ``s``); months and days of
the week may be named (``JAN``, ``MON-FRI``, any case). The macros
``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
(``@midnight``) and ``@hourly`` stand for their usual expressions. As in
Vixie cron, when both day fields are restricted (neither starts with
``*``) a day matches if *either* does: ``0 0 1 * MON`` is the first of the
month and every Monday.

Local times in a timezone: a time that a daylight-saving change skips fires
at the same offset as before the change (02:30 on a night when clocks jump
from 02:00 to 03:00 fires at 03:30); a time that happens twice fires once,
the first time.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aion_green.core.errors import ConfigurationError

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
# (name, low, high, names whose index + offset is the value)
_FIELDS = (("minute", 0, 59, (), 0), ("hour", 0, 23, (), 0), ("day-of-month", 1, 31, (), 0),
           ("month", 1, 12, _MONTHS, 1), ("day-of-week", 0, 7, _DAYS, 0))
# A search that finds nothing in this many years never will ("0 0 30 2 *");
# eight covers February 29 across a century that is not a leap year.
_SEARCH_YEARS = 9
_MINUTE = timedelta(minutes=1)


class Cron:
    """A five-field cron expression: ``aion.Cron("*/15 9-17 * * MON-FRI")``.

    Raises :class:`aion.ConfigurationError` naming the field, the value
    and what it accepts."""

    def __init__(self, expression: str, timezone: Optional[str] = None) -> None:
        if not isinstance(expression, str):
            raise ConfigurationError(f"a cron expression is a string such as '0 * * * *', "
                                     f"got {expression!r}")
        self.expression = expression
        self.timezone = timezone
        self._zone = _zone(timezone)
        text = _MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise ConfigurationError(
                f"cron expression {expression!r} has {len(parts)} field(s); it needs 5: minute hour "
                f"day-of-month month day-of-week (e.g. '30 2 * * MON-FRI'), or one of "
                f"{', '.join(_MACROS)}")
        sets = [_parse_field(expression, part, *spec) for part, spec in zip(parts, _FIELDS)]
        self.minutes, self.hours, self.days, self.months, dow = sets
        self.weekdays = frozenset(d % 7 for d in dow)
        # Vixie cron: both day fields restricted means either may match.
        self._dom_star = parts[2].startswith("*")
        self._dow_star = parts[4].startswith("*")
        self.next_after(datetime(2000, 1, 1, tzinfo=_UTC))  # one that never fires is refused now

    def _day_ok(self, t: datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self._dom_star or self._dow_star:
            return dom and dow
        return dom or dow

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (aware), in UTC."""
        zone = self._zone
        t = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) + _MINUTE
        limit = t.year + _SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += _MINUTE
            else:
                at = t.replace(tzinfo=zone).astimezone(_UTC)
                if at > after:  # a repeated local hour can map before ``after``
                    return at
                t += _MINUTE
        raise ConfigurationError(f"cron expression {self.expression!r} never fires (no match within "
                                 f"{_SEARCH_YEARS} years of {after.isoformat()}); check its day and "
                                 "month fields")

    def __repr__(self) -> str:
        zone = "" if self.timezone is None else f", timezone={self.timezone!r}"
        return f"Cron({self.expression!r}{zone})"


class Interval:
    """Every ``every`` from ``anchor``: fires at ``anchor + k * every``, k >= 0."""

    def __init__(self, every: timedelta, anchor: datetime) -> None:
        self.every = every
        self.anchor = anchor

    def next_after(self, after: datetime) -> datetime:
        if after < self.anchor:
            return self.anchor
        return self.anchor + ((after - self.anchor) // self.every + 1) * self.every

    def __repr__(self) -> str:
        return f"Interval({self.every!r}, anchor={self.anchor.isoformat()})"


_UTC = timezone.utc


def _zone(name: Optional[str]) -> Union[ZoneInfo, timezone]:
    if name is None:
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"unknown timezone {name!r}; give an IANA name such as "
                                 "'Europe/Paris' or 'UTC' (install tzdata where the system has none)"
                                 ) from None


def _parse_field(expression: str, text: str, name: str, low: int, high: int,
                 names: tuple[str, ...], offset: int) -> frozenset[int]:
    def fail(why: str) -> ConfigurationError:
        named = f", or names {names[0]}-{names[-1]}" if names else ""
        return ConfigurationError(
            f"cron expression {expression!r}: {name} field {text!r}: {why}; it takes *, n, a-b, "
            f"*/step, a-b/step or comma lists of them, with values {low}-{high}{named}")

    def value(token: str) -> int:
        upper = token.upper()
        if upper in names:
            return names.index(upper) + offset
        if not token.isdigit():
            raise fail(f"{token!r} is not a number")
        number = int(token)
        if not low <= number <= high:
            raise fail(f"{number} is out of range")
        return number

    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise fail(f"step {step_text!r} is not a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = value(a), value(b)
            if first > last:
                raise fail(f"range {span!r} runs backwards (wrap-around ranges are not supported; "
                           "list two ranges instead)")
        else:
            first = value(span)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)
