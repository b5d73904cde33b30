"""An asyncio event loop on a virtual clock, and a disk executor that lives on it.

Theory of operation
-------------------
A Raft group reads time only through `loop.time()` and waits only through the loop's timers
(`asyncio.sleep`, `call_later`), so a loop whose clock is virtual drives it unchanged. Asyncio
already computes, at each turn, how long it may sleep until its next timer and hands that timeout to
its selector; `VirtualClockLoop` gives it a selector that does not sleep but moves the clock forward
by the timeout. When callbacks are ready the timeout is 0 and time stands still; when none are,
the clock jumps straight to the next timer. A run is as fast as its callbacks, and the same program
takes the same steps at the same virtual instants every time: timers with equal deadlines leave
the heap in an order fixed by the order they were scheduled in, and no real clock is read.

Work handed to a real thread would finish at a real instant, which no replay can reproduce, so the
disk's blocking work (the leader's fsync, snapshots) runs on the loop through `LoopExecutor`: at
once, or after a virtual delay for a slow disk. `abandon()` is a crash: work not yet done never
happens, as an fsync cut short by a power loss never reaches the platter.

The real selector stays underneath with a zero timeout, so `call_soon_threadsafe` (which
`run_in_executor` uses to hand results back) still wakes the loop; with nothing ready and no timer
at all, the loop waits on it for real, since only another thread could still make progress.

Programs that keep the loop busy without ever waiting (two nodes bouncing a message back and forth
on links without latency) would stop time forever, so after `spin_limit` turns at one instant the
loop raises `VirtualClockStalled`: on a real clock that is a hot loop burning a core.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

__all__ = ["SPIN_LIMIT", "LoopExecutor", "VirtualClockLoop", "VirtualClockStalled", "run_virtual"]

T = TypeVar("T")

SPIN_LIMIT = 10_000  # loop turns at one virtual instant; the busiest instants of a simulation take ~50


class VirtualClockStalled(RuntimeError):
    """The loop kept running callbacks without ever letting virtual time pass."""


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0


class _TimeTravellingSelector(selectors.DefaultSelector):
    """Polls for real without waiting; a wait for a timer is a jump of the virtual clock instead."""

    def __init__(self, clock: _Clock, spin_limit: int) -> None:
        super().__init__()
        self._clock = clock
        self._spin_limit = spin_limit
        self._turns_at_this_instant = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            self._turns_at_this_instant += 1
            if self._turns_at_this_instant > self._spin_limit:
                self._turns_at_this_instant = 0  # a fresh budget for cleaning up
                raise VirtualClockStalled(f"{self._spin_limit} loop turns at t={self._clock.now_s:.6f} s "
                                          "without time passing")
            return events
        self._turns_at_this_instant = 0
        if timeout is None:
            return super().select(None)  # no timer at all: only another thread can wake us
        self._clock.now_s += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` starts at 0 and advances only when the loop would sleep."""

    def __init__(self, spin_limit: int = SPIN_LIMIT) -> None:
        self._clock = _Clock()
        super().__init__(_TimeTravellingSelector(self._clock, spin_limit))

    def time(self) -> float:
        return self._clock.now_s


class LoopExecutor(Executor):
    """Runs each job on the running loop after `delay_s` of virtual time (at once when 0): a disk
    thread whose speed the simulation chooses. `abandon()` drops the jobs not yet run."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._waiting: dict[Future[Any], asyncio.TimerHandle] = {}

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        if self.delay_s <= 0:
            _run(future, fn, args, kwargs)
            return future

        def finish() -> None:
            del self._waiting[future]
            _run(future, fn, args, kwargs)

        self._waiting[future] = asyncio.get_running_loop().call_later(self.delay_s, finish)
        return future

    def abandon(self) -> None:
        """The process died: what was still to run never runs, and nobody waits for it."""
        for future, handle in self._waiting.items():
            handle.cancel()
            future.cancel()
        self._waiting.clear()


def _run(future: Future[T], fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # handed to the awaiting task, as a thread pool does
        future.set_exception(e)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a fresh VirtualClockLoop: run `main` to completion, cancel what is left."""
    loop = VirtualClockLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
