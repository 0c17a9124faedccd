"""The one progress-callback shape every long job reports through (search, profile, calibration)."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[int, int, str], None]
"""`progress(done, total, what)`: `done` of `total` steps finished, `what` names the current one."""
