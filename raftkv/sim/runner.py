"""Run many seeds, in parallel processes, and summarise them.

Seeds are independent, so they spread over worker processes; each result is small (the trace is
kept only for failures). Results come back in completion order; the summary sorts them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raftkv.core import RaftCore

from .replica import CoreFactory
from .simulation import SimConfig, SimResult, run_seed

Result = TypeVar("Result")


def _run(job: tuple[int, SimConfig, CoreFactory]) -> SimResult:
    seed, cfg, factory = job
    result = run_seed(seed, cfg, factory)
    if result.ok:
        result.trace = []
    return result


def map_seeds(run: Callable[[Any], Result], jobs: list[Any], workers: int | None, chunksize: int) -> Iterator[Result]:
    """`run` over `jobs`, spread over worker processes (one per core by default), results in
    completion order: seeds are independent, and each result is small."""
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        yield from map(run, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap_unordered(run, jobs, chunksize=chunksize)


def run_many(
    seeds: Iterable[int],
    configs: Iterable[SimConfig],
    core_factory: CoreFactory = RaftCore,
    workers: int | None = None,
) -> Iterator[SimResult]:
    yield from map_seeds(_run, [(seed, cfg, core_factory) for seed in seeds for cfg in configs], workers, 8)


@dataclass
class Summary:
    runs: int = 0
    failures: list[SimResult] = field(default_factory=list)
    operations: int = 0
    unknown_operations: int = 0
    elections: int = 0
    membership_changes: int = 0
    faults: int = 0
    elapsed_s: float = 0.0

    def add(self, r: SimResult) -> None:
        self.runs += 1
        self.operations += r.operations
        self.unknown_operations += r.unknown_operations
        self.elections += r.elections
        self.membership_changes += r.membership_changes
        self.faults += len(r.faults)
        if not r.ok:
            self.failures.append(r)

    def line(self) -> str:
        rate = self.runs / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{self.runs} runs, {len(self.failures)} failed, {self.operations} client operations "
            f"({self.unknown_operations} unknown outcomes), {self.elections} elections, "
            f"{self.membership_changes} membership changes, {self.faults} faults, "
            f"{self.elapsed_s:.1f} s ({rate:.1f} runs/s)"
        )


def summarise(results: Iterable[SimResult], on_result: Callable[[SimResult], None] | None = None) -> Summary:
    summary = Summary()
    start = time.perf_counter()
    for r in results:
        summary.add(r)
        if on_result:
            on_result(r)
    summary.elapsed_s = time.perf_counter() - start
    summary.failures.sort(key=lambda r: (r.seed, r.config.nodes))
    return summary
