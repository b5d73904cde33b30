"""The rule that makes requests coming one per loop iteration (etcd's gRPC calls) share rounds."""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.node.gathering import Gathering

GATHER_S = 0.003


@dataclass
class Request:
    gathered: bool


def test_after_a_round_of_several_gathered_requests_the_next_waits_until_gather_s_after_it() -> None:
    gathering = Gathering()
    gathering.started(10.0, [Request(True), Request(True)])
    assert gathering.due(10.001, [Request(True)], GATHER_S) == 10.0 + GATHER_S
    assert gathering.due(10.0 + GATHER_S, [Request(True)], GATHER_S) is None, "the wait is over"


def test_a_request_of_another_source_ends_the_wait() -> None:
    gathering = Gathering()
    gathering.started(10.0, [Request(True), Request(True), Request(False)])
    assert gathering.due(10.001, [Request(True), Request(False)], GATHER_S) is None


def test_after_a_round_of_one_gathered_request_a_lone_client_never_waits() -> None:
    gathering = Gathering()
    gathering.started(10.0, [Request(True), Request(False)])
    assert gathering.due(10.001, [Request(True)], GATHER_S) is None
    assert Gathering().due(0.001, [Request(True)], GATHER_S) is None, "before any round"
