"""The linearizability checker: one claim per test, on histories small enough to read.

Times are invented units. `op(...)` builds a completed operation on key "x" unless told
otherwise; `unknown(...)` one whose reply was lost.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import pytest

from raftkv.check import (
    Operation,
    Verdict,
    check_history,
    history_from_json,
    history_to_json,
    load_history,
    save_history,
)


def op(
    client: int,
    kind: str,
    start: float,
    end: float,
    *,
    value: Any = None,
    expected: Any = None,
    result: Any = None,
    key: str = "x",
) -> Operation:
    return Operation(
        client=client,
        kind=kind,
        key=key,
        invoke_time=start,
        complete_time=end,  # type: ignore[arg-type]
        value=value,
        expected=expected,
        result=result,
    )


def unknown(
    client: int, kind: str, start: float, *, value: Any = None, expected: Any = None, key: str = "x"
) -> Operation:
    return Operation(
        client=client,
        kind=kind,
        key=key,
        invoke_time=start,
        complete_time=None,  # type: ignore[arg-type]
        outcome="unknown",
        value=value,
        expected=expected,
    )


def linearizable(*ops: Operation) -> bool:
    return check_history(ops).ok


# --- reads and writes ---------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert linearizable()


def test_read_of_absent_key_sees_none() -> None:
    assert linearizable(op(1, "read", 0, 1, result=None))


def test_stale_read_after_completed_write_is_illegal() -> None:
    assert not linearizable(
        op(1, "write", 0, 1, value="a"),
        op(2, "write", 2, 3, value="b"),
        op(3, "read", 4, 5, result="a"),
    )


@pytest.mark.parametrize("seen", [None, "a"])
def test_read_concurrent_with_write_may_see_old_or_new(seen: str | None) -> None:
    assert linearizable(
        op(1, "write", 0, 10, value="a"),
        op(2, "read", 2, 3, result=seen),
    )


def test_read_of_value_never_written_is_illegal() -> None:
    result = check_history([op(1, "write", 0, 1, value="a"), op(2, "read", 2, 3, result="zzz")])
    assert result.verdict is Verdict.ILLEGAL
    assert '"zzz"' in result.explain()  # the explanation names the impossible value


def test_reads_cannot_flip_back_to_an_older_value() -> None:
    # Two writes overlap each other, so either order is possible, but once one client has seen
    # "b" after "a", a later read cannot see "a" again.
    assert not linearizable(
        op(1, "write", 0, 5, value="a"),
        op(2, "write", 0, 5, value="b"),
        op(3, "read", 6, 7, result="a"),
        op(3, "read", 8, 9, result="b"),
        op(3, "read", 10, 11, result="a"),
    )


def test_real_time_order_is_respected() -> None:
    # Write "b" is invoked after write "a" completed, so "a" cannot be the final value.
    sequential = [op(1, "write", 0, 1, value="a"), op(2, "write", 2, 3, value="b")]
    assert not linearizable(*sequential, op(3, "read", 4, 5, result="a"))
    # When the two writes overlap, either can be last.
    overlapping = [op(1, "write", 0, 3, value="a"), op(2, "write", 1, 2, value="b")]
    assert linearizable(*overlapping, op(3, "read", 4, 5, result="a"))


def test_touching_intervals_count_as_concurrent() -> None:
    # The read is invoked at the very instant the write completes: coarse client clocks cannot
    # order them, so the read may still see the old value.
    assert linearizable(op(1, "write", 0, 1, value="a"), op(2, "read", 1, 2, result=None))


# --- unknown and failed outcomes -----------------------------------------------------------------


def test_unknown_write_that_is_later_observed_is_fine() -> None:
    assert linearizable(unknown(1, "write", 0, value="a"), op(2, "read", 5, 6, result="a"))


def test_unknown_write_never_observed_is_fine() -> None:
    assert linearizable(unknown(1, "write", 0, value="a"), op(2, "read", 5, 6, result=None))


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    assert not linearizable(op(2, "read", 0, 1, result="a"), unknown(1, "write", 5, value="a"))


def test_unknown_write_takes_effect_at_most_once() -> None:
    # Seen, overwritten, then seen again: that would need the lost write to happen twice.
    assert not linearizable(
        unknown(1, "write", 0, value="a"),
        op(2, "read", 1, 2, result="a"),
        op(2, "write", 3, 4, value="b"),
        op(2, "read", 5, 6, result="a"),
    )


def test_failed_operations_are_ignored() -> None:
    failed = Operation(client=1, kind="write", key="x", invoke_time=0, complete_time=1, outcome="fail", value="a")
    assert linearizable(failed, op(2, "read", 2, 3, result=None))
    assert not linearizable(failed, op(2, "read", 2, 3, result="a"))


# --- compare-and-set and delete ------------------------------------------------------------------


def test_two_cas_from_the_same_expected_value_cannot_both_succeed() -> None:
    assert not linearizable(
        op(1, "write", 0, 1, value=0),
        op(2, "cas", 2, 5, expected=0, value=1, result=True),
        op(3, "cas", 2, 5, expected=0, value=2, result=True),
    )


def test_concurrent_cas_one_wins_one_fails() -> None:
    assert linearizable(
        op(1, "write", 0, 1, value=0),
        op(2, "cas", 2, 5, expected=0, value=1, result=True),
        op(3, "cas", 2, 5, expected=0, value=2, result=False),
        op(1, "read", 6, 7, result=1),
    )


def test_failed_cas_is_an_observation() -> None:
    # A cas that failed saw a value other than its expected one; with the value certainly 0,
    # failing to swap from 0 is impossible.
    assert not linearizable(
        op(1, "write", 0, 1, value=0),
        op(2, "cas", 2, 3, expected=0, value=1, result=False),
    )


def test_cas_expecting_none_means_create_if_absent() -> None:
    assert linearizable(op(1, "cas", 0, 1, expected=None, value="a", result=True), op(2, "read", 2, 3, result="a"))
    assert not linearizable(op(1, "write", 0, 1, value="a"), op(2, "cas", 2, 3, expected=None, value="b", result=True))


def test_unknown_cas_may_have_swapped() -> None:
    assert linearizable(
        op(1, "write", 0, 1, value=0),
        unknown(2, "cas", 2, expected=0, value=1),
        op(3, "read", 5, 6, result=1),
    )


def test_delete_then_read_sees_none() -> None:
    assert linearizable(op(1, "write", 0, 1, value="a"), op(1, "delete", 2, 3), op(2, "read", 4, 5, result=None))
    assert not linearizable(op(1, "write", 0, 1, value="a"), op(1, "delete", 2, 3), op(2, "read", 4, 5, result="a"))


def test_delete_result_says_whether_the_key_existed() -> None:
    assert not linearizable(op(1, "delete", 0, 1, result=True))  # nothing to delete
    assert linearizable(op(1, "delete", 0, 1, result=False))  # a 404 on an absent key


def test_values_are_compared_as_json() -> None:
    assert linearizable(
        op(1, "write", 0, 1, value={"b": [1, 2], "a": None}), op(2, "read", 2, 3, result={"a": None, "b": [1, 2]})
    )


# --- keys, verdicts and explanations -------------------------------------------------------------


def test_keys_are_checked_independently() -> None:
    result = check_history(
        [
            op(1, "write", 0, 1, value="a", key="good"),
            op(2, "read", 2, 3, result="a", key="good"),
            op(1, "write", 0, 1, value="a", key="bad"),
            op(1, "write", 2, 3, value="b", key="bad"),
            op(2, "read", 4, 5, result="a", key="bad"),
        ]
    )
    assert not result.ok
    assert result.keys["good"].verdict is Verdict.OK
    assert result.keys["bad"].verdict is Verdict.ILLEGAL


def test_stale_read_is_explained_by_the_write_that_overwrote_its_value() -> None:
    history = [
        op(1, "write", 0, 1, value="a"),
        op(2, "write", 2, 3, value="b"),
        op(3, "read", 4, 5, result="a"),
    ]
    key_result = check_history(history).keys["x"]
    assert key_result.verdict is Verdict.ILLEGAL and key_result.unplaced == (2,)
    assert key_result.steps == 0  # caught before any search
    text = key_result.explanation
    assert 'op #2 needs the value "a"' in text
    assert "the last one, #0, by #1" in text and '#1 client 2 write "b" [2, 3]' in text


def test_explanation_shows_the_longest_prefix_and_the_ops_that_cannot_go_next() -> None:
    # A stale read that no quick check catches: the writes overlap, so it takes the search.
    history = [
        op(1, "write", 0, 10, value="a"),
        op(2, "write", 0, 10, value="b"),
        op(3, "read", 1, 2, result="a"),
        op(3, "read", 3, 4, result="b"),
        op(3, "read", 5, 6, result="a"),
    ]
    key_result = check_history(history).keys["x"]
    assert key_result.longest_prefix == (0, 2)
    assert key_result.unplaced == (3, 1)
    text = key_result.explanation
    assert 'after which the value is "a"' in text
    assert '#3 client 3 read -> "b" [3, 4]: impossible on this value' in text
    assert '#1 client 2 write "b" [0, 10]: would lose "a", which #4 still needs' in text


def test_exhausted_budget_gives_an_unknown_verdict() -> None:
    history = sequential_history(random.Random(1), n_ops=2_000, n_clients=20)
    result = check_history(history, max_steps_per_key=100)
    assert result.verdict is Verdict.UNKNOWN and not result.ok
    assert "unknown verdict (budget exceeded" in result.explain()
    assert check_history(history, timeout_s=0).verdict is Verdict.UNKNOWN


# --- randomized histories from real sequential executions ----------------------------------------


def sequential_history(
    rng: random.Random, n_ops: int, n_clients: int, unknown_rate: float = 0.05, max_latency: float = 2.0
) -> list[Operation]:
    """Clients issue ops back to back; each op takes effect at a random instant of its interval.

    Replaying the ops in the order of those instants against a dict gives every result, so the
    history is linearizable by construction. Written values are unique. Some ops are lost
    (unknown): half of those took effect, half never did.
    """
    free_at = [rng.uniform(0, 1) for _ in range(n_clients)]
    slots = []
    for i in range(n_ops):
        client = i % n_clients
        start = free_at[client]
        end = start + rng.uniform(0.01, max_latency)
        free_at[client] = end + rng.uniform(0, 0.5)
        slots.append((rng.uniform(start, end), start, end, client))
    slots.sort()
    value: Any = None
    history: list[Operation] = []
    for n, (_, start, end, client) in enumerate(slots):
        lost = rng.random() < unknown_rate
        happened = not lost or rng.random() < 0.5
        r = rng.random()
        new, expected, result = None, None, None
        if r < 0.5:
            kind, result = "read", value
        elif r < 0.8:
            kind, new = "write", {"n": n} if n % 5 == 0 else n
            if happened:
                value = new
        elif r < 0.95:
            kind, new, expected = "cas", n, rng.choice([value, value, n - 1, None])
            result = value == expected
            if happened and result:
                value = new
        else:
            kind = "delete"
            if happened:
                value = None
        if lost:
            history.append(unknown(client, kind, start, value=new, expected=expected))
        else:
            history.append(op(client, kind, start, end, value=new, expected=expected, result=result))
    return history


@pytest.mark.parametrize("seed", range(20))
def test_random_history_from_a_sequential_execution_is_accepted(seed: int) -> None:
    rng = random.Random(seed)
    history = sequential_history(rng, n_ops=rng.randint(10, 300), n_clients=rng.randint(1, 12))
    result = check_history(history)
    assert result.ok, result.explain()


@pytest.mark.parametrize("seed", range(20))
def test_random_history_with_one_read_from_the_future_is_rejected(seed: int) -> None:
    rng = random.Random(seed)
    history = sequential_history(rng, n_ops=300, n_clients=8)
    # Make one completed read return the value of a write invoked after the read completed.
    # Values are unique, so no linearization can explain it.
    reads = [i for i, o in enumerate(history) if o.kind == "read" and o.outcome == "ok"]
    i = rng.choice(reads[: len(reads) // 2])
    later = [o for o in history if o.kind == "write" and o.invoke_time > history[i].complete_time]  # type: ignore[operator]
    history[i] = dataclasses.replace(history[i], result=rng.choice(later).value)
    result = check_history(history)
    assert result.verdict is Verdict.ILLEGAL
    assert i in result.keys["x"].unplaced or f"#{i} " in result.explain()


@pytest.mark.parametrize("seed", range(10))
def test_random_history_with_one_stale_read_is_rejected(seed: int) -> None:
    rng = random.Random(seed)
    history = sequential_history(rng, n_ops=300, n_clients=8, unknown_rate=0)
    # Make one completed read return the value of a write that was already overwritten by a write
    # that completed before the read began.
    for i in rng.sample(range(len(history)), len(history)):
        reader = history[i]
        if reader.kind != "read":
            continue
        writes = [o for o in history if o.kind == "write" and o.complete_time < reader.invoke_time]  # type: ignore[operator]
        if len(writes) >= 2 and writes[-1].invoke_time > writes[-2].complete_time:  # type: ignore[operator]
            history[i] = dataclasses.replace(reader, result=writes[-2].value)
            break
    assert check_history(history).verdict is Verdict.ILLEGAL


def brute_force_linearizable(history: list[Operation]) -> bool:
    """The definition, searched naively: some order of all ok ops and some unknown ops that
    respects real time (an op that completed before another began comes first) and that a
    single register replays with the recorded results."""
    ops = [o for o in history if o.outcome != "fail" and not (o.outcome == "unknown" and o.kind == "read")]
    must = frozenset(i for i, o in enumerate(ops) if o.outcome == "ok")

    def apply(o: Operation, value: Any) -> tuple[bool, Any]:
        if o.kind == "read":
            return o.result == value, value
        if o.kind == "write":
            return True, o.value
        if o.kind == "delete":
            return o.result is None or o.result == (value is not None), None
        if o.outcome == "unknown":
            return True, o.value if value == o.expected else value
        return o.result == (value == o.expected), o.value if o.result else value

    def search(placed: frozenset[int], value: Any) -> bool:
        if must <= placed:
            return True
        deadline = min(ops[i].complete_time for i in must - placed)  # type: ignore[type-var]
        for i, o in enumerate(ops):
            if i not in placed and o.invoke_time <= deadline:  # type: ignore[operator]
                legal, after = apply(o, value)
                if legal and search(placed | {i}, after):
                    return True
        return False

    return search(frozenset(), None)


def small_random_history(rng: random.Random) -> list[Operation]:
    """A few ops with random intervals and results over a tiny set of values: often illegal,
    often ambiguous, which is what exercises the search."""
    values = [None, 1, 2, 3][: rng.randint(2, 4)]
    history = []
    for client in range(rng.randint(1, 7)):
        start = rng.uniform(0, 10)
        kind = rng.choice(["read", "read", "write", "cas", "delete"])
        new = rng.choice(values[1:]) if kind in ("write", "cas") else None
        expected = rng.choice(values) if kind == "cas" else None
        if rng.random() < 0.2:
            history.append(unknown(client, kind, start, value=new, expected=expected))
            continue
        result = {"read": rng.choice(values), "cas": rng.random() < 0.5, "delete": rng.choice([None, True, False])}.get(
            kind
        )
        history.append(op(client, kind, start, start + rng.uniform(0, 4), value=new, expected=expected, result=result))
    return history


def test_verdicts_agree_with_a_brute_force_search_on_small_random_histories() -> None:
    rng = random.Random(2024)
    verdicts = []
    for _ in range(600):
        history = small_random_history(rng)
        expected = brute_force_linearizable(history)
        assert check_history(history).ok == expected, history
        verdicts.append(expected)
    assert 100 < sum(verdicts) < 500  # both kinds of history were tried


def test_large_history_with_many_clients_checks_quickly() -> None:
    # ~2000 ops on one key, 50 clients, up to ~30 in flight at once, 5% lost replies.
    history = sequential_history(random.Random(7), n_ops=2_000, n_clients=50, max_latency=2.0)
    started = time.monotonic()
    result = check_history(history, max_steps_per_key=200_000)
    elapsed = time.monotonic() - started
    assert result.ok, result.explain()
    assert elapsed < 20  # typically well under a second; generous for loaded CI machines


# --- the history format --------------------------------------------------------------------------


def test_json_round_trip(tmp_path: Any) -> None:
    history = [
        op(1, "write", 0.5, 1.25, value={"nested": [1, "two", None]}),
        op("c2", "cas", 1, 2, expected={"nested": [1, "two", None]}, value=3, result=True),
        unknown(3, "delete", 2.5),
        Operation(client=4, kind="read", key="y", invoke_time=3, complete_time=4, outcome="fail"),
    ]
    assert history_from_json(history_to_json(history)) == history
    path = tmp_path / "history.json"
    save_history(path, history)
    assert load_history(path) == history


def test_malformed_operations_are_rejected() -> None:
    with pytest.raises(ValueError):
        Operation(client=1, kind="read", key="x", invoke_time=0, complete_time=None)  # ok needs an end
    with pytest.raises(ValueError):
        Operation(client=1, kind="read", key="x", invoke_time=2, complete_time=1)
    with pytest.raises(ValueError):
        Operation(client=1, kind="cas", key="x", invoke_time=0, complete_time=1, result="yes")
    with pytest.raises(ValueError):
        Operation.from_dict(
            {"client": 1, "kind": "read", "key": "x", "invoke_time": 0, "complete_time": 1, "colour": "red"}
        )
