"""Bounds of numeric settings, checked before any work starts; an error names the setting."""

from __future__ import annotations

import math

from .errors import MaedetError


def within(value: float, low: float | None = None, high: float | None = None) -> bool:
    """`low <= value <= high` (an open side when None) for a finite value; ints of any size."""
    return (isinstance(value, int) or math.isfinite(value)) and (low is None or value >= low) and \
        (high is None or value <= high)


def check_range(value: float | None, setting: str, low: float | None = None, high: float | None = None) -> None:
    """Refuse `value` (None passes: unset) outside [low, high], naming `setting`."""
    if value is None or within(value, low, high):
        return
    bound = f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"in {low:g}..{high:g}"
    raise MaedetError(f"must be {bound}, got {value}", setting)
