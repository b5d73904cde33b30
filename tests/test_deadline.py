"""A connection's deadline (raftkv/api/deadline.py): one timer, moved only when a deadline comes
earlier; an action runs when due, never before, and never once cleared or replaced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftkv.api.deadline import Deadline


class Ran:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def action(self, name: str) -> Any:
        return lambda: self.at.setdefault(name, asyncio.get_running_loop().time())


async def test_an_action_runs_when_due_and_not_before() -> None:
    loop, ran, deadline = asyncio.get_running_loop(), Ran(), Deadline()
    start = loop.time()
    deadline.set(0.05, ran.action("a"))
    assert deadline.armed
    await asyncio.sleep(0.02)
    assert ran.at == {}
    await asyncio.sleep(0.1)
    assert ran.at["a"] >= start + 0.05 and not deadline.armed


async def test_a_deadline_set_again_later_replaces_the_first() -> None:
    loop, ran, deadline = asyncio.get_running_loop(), Ran(), Deadline()
    deadline.set(0.05, ran.action("first"))
    await asyncio.sleep(0.03)
    later = loop.time() + 0.1
    deadline.set(0.1, ran.action("second"))
    await asyncio.sleep(0.05)  # past the first's deadline: its timer fired and found the second
    assert ran.at == {}
    await asyncio.sleep(0.15)
    assert list(ran.at) == ["second"] and ran.at["second"] >= later


async def test_a_deadline_set_earlier_moves_the_timer() -> None:
    loop, ran, deadline = asyncio.get_running_loop(), Ran(), Deadline()
    start = loop.time()
    deadline.set(10, ran.action("idle"))
    deadline.set(0.02, ran.action("head"))
    await asyncio.sleep(0.1)
    assert list(ran.at) == ["head"] and start + 0.02 <= ran.at["head"] < start + 5


@pytest.mark.parametrize("end", ["clear", "cancel"])
async def test_a_cleared_or_cancelled_deadline_runs_nothing(end: str) -> None:
    ran, deadline = Ran(), Deadline()
    deadline.set(0.02, ran.action("a"))
    getattr(deadline, end)()
    assert not deadline.armed
    await asyncio.sleep(0.06)
    assert ran.at == {}


async def test_an_action_may_set_the_next_deadline() -> None:
    ran, deadline = Ran(), Deadline()
    deadline.set(0.01, lambda: deadline.set(0.01, ran.action("next")))
    await asyncio.sleep(0.1)
    assert list(ran.at) == ["next"]


async def test_steady_traffic_makes_no_timer_per_request() -> None:
    """A keep-alive connection's requests: the head's deadline, cleared, then the idle timeout."""
    loop, ran, deadline = asyncio.get_running_loop(), Ran(), Deadline()
    timers = 0
    call_at = loop.call_at

    def counted(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(when, callback, *args)

    loop.call_at = counted  # type: ignore[method-assign]
    try:
        for _ in range(1000):
            deadline.set(5, ran.action("head"))
            deadline.clear()
            deadline.set(30, ran.action("idle"))
    finally:
        del loop.call_at  # type: ignore[method-assign]
    assert timers == 1 and ran.at == {}
    deadline.cancel()
