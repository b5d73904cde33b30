"""A connection's deadline, set and cleared with every request for the price of a float.

Theory of operation
-------------------
On a keep-alive connection every request starts its head's deadline, clears it when the request
reaches the API, and starts the idle timeout after the answer. With an event-loop timer for each,
that was two timers made and two cancelled per request, about 4 us of a GET's 30 (bench/PROFILE.md,
seventeenth round). A `Deadline` keeps one timer and moves it only when a deadline comes *earlier*
than the timer. When the timer fires before the deadline that is current then (it was set again,
later, meanwhile), it is set for that one. So an action runs when its deadline is due and not
before, a cleared deadline runs nothing, and under steady traffic the timer fires about once per
timeout instead of being made and cancelled per request.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """At most one pending action, run when its deadline is due unless cleared or set again first."""

    __slots__ = ("_action", "_due", "_loop", "_timer", "_timer_due")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: float | None = None  # the loop's time at which `_action` is due
        self._action: Callable[[], object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf  # when `_timer` fires; never later than `_due`

    @property
    def armed(self) -> bool:
        return self._due is not None

    def set(self, delay_s: float, action: Callable[[], object]) -> None:
        """Run `action` in `delay_s`, in place of whatever was pending."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        due = self._loop.time() + delay_s
        self._due, self._action = due, action
        if due < self._timer_due:
            self._schedule(due)

    def clear(self) -> None:
        """Nothing pending (the timer, if any, stays and finds nothing to do)."""
        self._due = self._action = None

    def cancel(self) -> None:
        """Nothing pending and no timer left: the connection is gone."""
        self.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_due = None, math.inf

    def _schedule(self, due: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = self._loop.call_at(due, self._fire), due

    def _fire(self) -> None:
        self._timer, self._timer_due = None, math.inf
        due, action = self._due, self._action
        if due is None or action is None:
            return
        if self._loop is not None and self._loop.time() < due:  # set again, later, since the timer was
            self._schedule(due)
            return
        self.clear()
        action()
