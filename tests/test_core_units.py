"""Small table-driven tests of the core's pure pieces: quorum arithmetic, flow control, the log,
ReadIndex batching, membership-change values and Config validation.

The scenarios in test_core_scenarios.py show these parts working together; here each rule is
checked on its own, one row per case, so a failing row names the exact arithmetic that broke.
"""

from __future__ import annotations

import pytest

from raftkv.core import (
    CompactedError,
    ConfChange,
    ConfChangeKind,
    Config,
    ConfState,
    Entry,
    Progress,
    ProgressState,
    RaftLog,
    VoteResult,
    committed_index,
    has_quorum,
    majority,
    vote_result,
)
from raftkv.core.readonly import PendingRead, ReadIndexQueue

V3 = ("n1", "n2", "n3")
V4 = ("n1", "n2", "n3", "n4")
V5 = ("n1", "n2", "n3", "n4", "n5")


def log_of(terms: list[int], offset: int = 0, offset_term: int = 0, data: bytes = b"") -> RaftLog:
    """A log whose entry offset+1+i has term terms[i]."""
    return RaftLog(offset, offset_term, [Entry(t, offset + 1 + i, data=data) for i, t in enumerate(terms)])


def terms_of(log: RaftLog) -> list[int]:
    return [e.term for e in log.entries]


# ==== quorum.py =====================================================================================


@pytest.mark.parametrize(("voters", "need"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority(voters, need):
    assert majority(voters) == need


@pytest.mark.parametrize(
    ("voters", "match", "expected"),
    [
        (V3, {"n1": 5, "n2": 5, "n3": 5}, 5),
        (V3, {"n1": 7, "n2": 5, "n3": 2}, 5),  # the median of three
        (V3, {"n1": 7}, 0),  # absent voters count as 0
        (V3, {"n1": 7, "n2": 6}, 6),
        (V4, {"n1": 9, "n2": 8, "n3": 3, "n4": 1}, 3),  # even sizes need more than half: 3 of 4
        (V5, {"n1": 9, "n2": 8, "n3": 7, "n4": 1, "n5": 0}, 7),
        (V3, {"n1": 1, "n2": 1, "n3": 1, "learner": 99}, 1),  # learners never count
        (("n1",), {"n1": 4}, 4),
        ((), {"n1": 4}, 0),
    ],
)
def test_committed_index_is_the_highest_index_on_a_majority(voters, match, expected):
    assert committed_index(voters, match) == expected


@pytest.mark.parametrize(
    ("voters", "votes", "result"),
    [
        (V3, {"n1": True}, VoteResult.PENDING),
        (V3, {"n1": True, "n2": True}, VoteResult.WON),
        (V3, {"n1": True, "n2": False}, VoteResult.PENDING),
        (V3, {"n1": True, "n2": False, "n3": False}, VoteResult.LOST),
        (V4, {"n1": True, "n2": True}, VoteResult.PENDING),  # a split vote in an even cluster...
        (V4, {"n1": True, "n2": True, "n3": False, "n4": False}, VoteResult.LOST),  # ...is lost
        (V5, {"n1": True, "n2": True, "n3": True}, VoteResult.WON),
        (V5, {"n1": True, "n4": False, "n5": False}, VoteResult.PENDING),
        (V5, {"n1": True, "n3": False, "n4": False, "n5": False}, VoteResult.LOST),
        (V3, {"n1": True, "x": True, "y": True}, VoteResult.PENDING),  # non-voters' votes do not count
        (("n1",), {"n1": True}, VoteResult.WON),
    ],
)
def test_vote_result(voters, votes, result):
    assert vote_result(voters, votes) is result


@pytest.mark.parametrize(
    ("voters", "members", "expected"),
    [
        (V3, {"n1", "n2"}, True),
        (V3, {"n1"}, False),
        (V3, {"n1", "learner", "other"}, False),
        (V4, {"n1", "n2"}, False),
        (V4, {"n1", "n2", "n3"}, True),
        (V5, {"n3", "n4", "n5"}, True),
    ],
)
def test_has_quorum(voters, members, expected):
    assert has_quorum(voters, members) is expected


# ==== progress.py ===================================================================================


def test_a_new_follower_is_probed_one_request_at_a_time():
    pr = Progress(next_index=11, max_inflight=4)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent(10)  # one probe out...
    assert pr.is_paused() and pr.next == 11  # ...and no more until it is answered; next unchanged
    assert pr.maybe_update(7)  # the answer: the logs agree up to 7
    assert (pr.match, pr.next, pr.is_paused()) == (7, 11, False)
    assert not pr.maybe_update(7)  # a duplicate tells nothing new


def test_replicate_pipelines_up_to_max_inflight_requests():
    pr = Progress(next_index=1, max_inflight=3)
    pr.maybe_update(4)
    pr.become_replicate()
    assert (pr.state, pr.next) == (ProgressState.REPLICATE, 5)
    for last in (6, 8, 10):
        assert not pr.is_paused()
        pr.sent(last)
    assert pr.next == 11 and list(pr.inflight) == [6, 8, 10]
    assert pr.is_paused()  # three requests unacknowledged: the window is full
    pr.maybe_update(8)  # acknowledges the first two
    assert list(pr.inflight) == [10] and not pr.is_paused()
    pr.sent(10)  # an empty append (a resend of nothing new) takes no slot
    assert list(pr.inflight) == [10]


@pytest.mark.parametrize(
    ("state", "match", "pending_snapshot", "next_after_probe"),
    [
        (ProgressState.REPLICATE, 4, 0, 5),  # back to just after what is known to match
        (ProgressState.SNAPSHOT, 4, 20, 21),  # the snapshot may have been installed: resume after it
        (ProgressState.SNAPSHOT, 30, 20, 31),  # unless the follower is known to be further along
    ],
)
def test_become_probe(state, match, pending_snapshot, next_after_probe):
    pr = Progress(next_index=50, max_inflight=8)
    pr.match = match
    if state is ProgressState.REPLICATE:
        pr.become_replicate()
        pr.sent(40)
    else:
        pr.become_snapshot(pending_snapshot)
    pr.become_probe()
    assert (pr.state, pr.next, len(pr.inflight), pr.probe_sent) == (ProgressState.PROBE, next_after_probe, 0, False)


def test_snapshot_state_sends_nothing_until_it_resolves():
    pr = Progress(next_index=3, max_inflight=8)
    pr.become_snapshot(20)
    assert pr.state is ProgressState.SNAPSHOT and pr.pending_snapshot == 20
    assert pr.is_paused()
    pr.maybe_update(20)  # the follower acknowledged the snapshot
    assert pr.match == 20 and pr.next == 21
    pr.become_replicate()
    assert (pr.state, pr.next, pr.is_paused()) == (ProgressState.REPLICATE, 21, False)


# ==== log.py ========================================================================================


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (5, 2),  # the compaction point itself: its term is remembered
        (6, 3),
        (8, 4),
        (9, 0),  # past the end
        (100, 0),
        (4, CompactedError),  # before the compaction point
        (0, CompactedError),
    ],
)
def test_term_lookup(index, expected):
    log = log_of([3, 3, 4], offset=5, offset_term=2)
    if expected is CompactedError:
        with pytest.raises(CompactedError):
            log.term(index)
    else:
        assert log.term(index) == expected


def test_index_bookkeeping():
    log = log_of([3, 3, 4], offset=5, offset_term=2)
    assert (log.first_index(), log.last_index(), log.last_term()) == (6, 8, 4)
    assert (log.committed, log.applied, log.stable) == (5, 5, 8)
    empty = RaftLog(5, 2)
    assert (empty.first_index(), empty.last_index(), empty.last_term()) == (6, 5, 2)


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [(0, 0, True), (1, 1, True), (3, 2, True), (3, 1, False), (4, 0, True), (5, 0, True), (4, 2, False)],
)
def test_matches(index, term, expected):
    """`matches` is the AppendEntries consistency check (Raft 5.3): 0 past the end is 'no entry'."""
    assert log_of([1, 1, 2]).matches(index, term) is expected


def test_matches_is_false_for_compacted_indexes():
    assert not log_of([3], offset=5, offset_term=2).matches(4, 2)


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [
        (3, 2, True),  # identical
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (1, 3, True),  # higher last term wins even when shorter (Raft 5.4.1)
        (9, 1, False),  # lower last term loses even when longer
    ],
)
def test_is_up_to_date(last_index, last_term, up_to_date):
    assert log_of([1, 1, 2]).is_up_to_date(last_index, last_term) is up_to_date


@pytest.mark.parametrize(
    ("before", "appended_at", "appended_terms", "after", "stable"),
    [
        ([1, 1], 3, [1, 2], [1, 1, 1, 2], 2),  # plain append
        ([1, 1, 2, 2], 3, [3], [1, 1, 3], 2),  # a conflicting suffix is cut off
        ([1, 1, 2, 2], 1, [5], [5], 0),  # everything replaced
    ],
)
def test_append_truncates_what_it_replaces(before, appended_at, appended_terms, after, stable):
    log = log_of(before)
    log.append([Entry(t, appended_at + i) for i, t in enumerate(appended_terms)])
    assert terms_of(log) == after
    assert log.stable == stable  # the rewritten part must be written to disk again


def test_append_never_truncates_a_committed_entry_or_leaves_a_gap():
    log = log_of([1, 1, 2])
    log.commit_to(2)
    with pytest.raises(AssertionError, match="committed"):
        log.append([Entry(3, 2)])
    with pytest.raises(AssertionError, match="gap"):
        log.append([Entry(3, 5)])


def test_unstable_entries_and_stable_to():
    log = log_of([1, 1])
    log.append([Entry(2, 3), Entry(2, 4)])
    assert [e.index for e in log.unstable()] == [3, 4]
    log.stable_to(3)
    assert [e.index for e in log.unstable()] == [4]
    log.stable_to(99)  # never past the end
    assert log.stable == 4 and log.unstable() == []


@pytest.mark.parametrize(
    ("committed", "applied", "max_count", "indexes"),
    [(4, 0, 100, [1, 2, 3, 4]), (4, 2, 100, [3, 4]), (4, 0, 3, [1, 2, 3]), (2, 2, 100, [])],
)
def test_committed_to_apply(committed, applied, max_count, indexes):
    log = log_of([1, 1, 1, 1, 1])
    log.commit_to(committed)
    log.applied = applied
    assert [e.index for e in log.committed_to_apply(max_count)] == indexes


@pytest.mark.parametrize(
    ("lo", "max_count", "max_bytes", "indexes"),
    [
        (1, 10, 1000, [1, 2, 3, 4]),
        (2, 2, 1000, [2, 3]),  # count limit
        (1, 10, 25, [1, 2]),  # byte limit: 10 bytes each, stop before exceeding 25
        (3, 10, 1, [3]),  # but always at least one entry
        (5, 10, 1000, []),
    ],
)
def test_slice_limits(lo, max_count, max_bytes, indexes):
    log = log_of([1, 1, 1, 1], data=b"x" * 10)
    assert [e.index for e in log.slice(lo, max_count, max_bytes)] == indexes


def test_slice_of_compacted_entries_raises():
    with pytest.raises(CompactedError):
        log_of([1], offset=5, offset_term=1).slice(5, 10, 1000)


def test_compact_keeps_the_term_of_the_compaction_point():
    log = log_of([1, 1, 2, 2, 3])
    log.commit_to(4)
    log.applied = 4
    log.compact(3)
    assert (log.offset, log.offset_term, log.first_index(), terms_of(log)) == (3, 2, 4, [2, 3])
    assert log.term(3) == 2 and log.matches(3, 2)
    log.compact(2)  # going backwards is a no-op
    assert log.offset == 3
    with pytest.raises(AssertionError, match="not yet applied"):
        log.compact(5)


@pytest.mark.parametrize(
    ("snapshot_index", "snapshot_term", "remaining_terms"),
    [
        (3, 2, [2, 3]),  # Raft 7: the log agrees with the snapshot: keep what follows it
        (3, 9, []),  # it disagrees: discard the whole log
        (8, 3, []),  # the snapshot is past our log: discard it
    ],
)
def test_restore_from_a_snapshot(snapshot_index, snapshot_term, remaining_terms):
    log = log_of([1, 1, 2, 2, 3])
    log.commit_to(2)
    log.restore(snapshot_index, snapshot_term)
    assert (log.offset, log.offset_term) == (snapshot_index, snapshot_term)
    assert terms_of(log) == remaining_terms
    assert log.committed == log.applied == snapshot_index
    assert log.last_index() == snapshot_index + len(remaining_terms)


@pytest.mark.parametrize(
    ("terms", "committed", "index", "first"),
    [
        ([1, 2, 2, 2, 3], 0, 4, 2),  # walk back to the first entry of term 2
        ([1, 2, 2, 2, 3], 0, 5, 5),
        ([1, 2, 2, 2, 3], 2, 4, 3),  # never below the commit point (it cannot conflict)
        ([2, 2, 2], 0, 3, 1),
    ],
)
def test_first_index_of_term_is_the_conflict_hint(terms, committed, index, first):
    log = log_of(terms)
    log.commit_to(committed)
    assert log.first_index_of_term(index) == first


@pytest.mark.parametrize(("term", "last"), [(1, 1), (2, 4), (3, 5), (4, 0), (0, 0)])
def test_last_index_of_term(term, last):
    assert log_of([1, 2, 2, 2, 3]).last_index_of_term(term) == last


# ==== readonly.py ===================================================================================


def read(ctx: bytes) -> PendingRead:
    return PendingRead(ctx, 7, "n1")


def test_reads_queued_during_a_round_share_the_next_round():
    q = ReadIndexQueue()
    q.add(read(b"a"))
    assert q.start_round() == 1
    q.add(read(b"b"))
    q.add(read(b"c"))
    assert q.start_round() is None  # one round in flight at a time
    assert len(q) == 3

    confirmed = q.ack("n2", 1, "n1", V3)  # n1 + n2: a majority of three
    assert [r.ctx for r in confirmed] == [b"a"]
    assert q.start_round() == 2
    assert q.start_round() is None
    assert [r.ctx for r in q.ack("n3", 2, "n1", V3)] == [b"b", b"c"]
    assert len(q) == 0 and q.start_round() is None  # nothing waits: no round


@pytest.mark.parametrize(
    ("acks", "confirmed"),
    [
        ([("n2", 1)], []),  # 2 of 5
        ([("n2", 1), ("n3", 1)], [b"a"]),  # 3 of 5
        ([("n2", 1), ("n2", 1)], []),  # a duplicate answer counts once
        ([("n2", 1), ("x", 1)], []),  # a non-voter does not count
    ],
)
def test_a_round_needs_a_majority_of_voters(acks, confirmed):
    q = ReadIndexQueue()
    q.add(read(b"a"))
    q.start_round()
    got = []
    for voter, rnd in acks:
        got += [r.ctx for r in q.ack(voter, rnd, "n1", V5)]
    assert got == confirmed


def test_a_late_answer_to_a_confirmed_round_confirms_nothing_later():
    q = ReadIndexQueue()
    q.add(read(b"a"))
    q.start_round()
    q.ack("n2", 1, "n1", V5)
    q.ack("n3", 1, "n1", V5)  # round 1 confirmed...
    q.add(read(b"b"))
    q.start_round()
    assert q.ack("n2", 1, "n1", V5) == []  # ...and a stale answer to it confirms nothing later
    assert [r.ctx for r in q.ack("n4", 2, "n1", V5)] == []
    assert [r.ctx for r in q.ack("n5", 2, "n1", V5)] == [b"b"]


def test_drain_hands_back_every_waiting_read():
    q = ReadIndexQueue()
    q.add(read(b"a"))
    q.start_round()
    q.add(read(b"b"))
    assert sorted(r.ctx for r in q.drain()) == [b"a", b"b"]
    assert len(q) == 0 and not q.in_flight


# ==== ConfChange and ConfState ======================================================================


@pytest.mark.parametrize("kind", list(ConfChangeKind))
@pytest.mark.parametrize("node", ["n4", "node-with:colon", "ünïcode"])
def test_conf_change_round_trips(kind, node):
    change = ConfChange(kind, node)
    assert ConfChange.decode(change.encode()) == change


def test_conf_change_encoding_is_stable_and_reads_the_old_form():
    change = ConfChange(ConfChangeKind.ADD_LEARNER, "n4", b"member details")
    assert change.encode() == b"\x93\xabadd_learner\xa2n4\xc4\x0emember details"
    assert ConfChange.decode(change.encode()) == change
    assert ConfChange.decode(b"add_learner:n4") == ConfChange(ConfChangeKind.ADD_LEARNER, "n4")  # logged before


@pytest.mark.parametrize(
    ("kind", "node", "voters", "learners"),
    [
        (ConfChangeKind.ADD_LEARNER, "n4", V3, ("n4",)),
        (ConfChangeKind.ADD_VOTER, "n4", (*V3, "n4"), ()),
        (ConfChangeKind.ADD_VOTER, "l1", (*V3, "l1"), ()),  # promotes a learner
        (ConfChangeKind.REMOVE, "n2", ("n1", "n3"), ("l1",)),
        (ConfChangeKind.REMOVE, "l1", V3, ()),
        (ConfChangeKind.REMOVE, "absent", V3, ("l1",)),
        (ConfChangeKind.ADD_LEARNER, "n2", ("n1", "n3"), ("l1", "n2")),  # demotes a voter
    ],
)
def test_conf_change_apply_to(kind, node, voters, learners):
    start = ConfState(V3, ("l1",)) if node != "n4" else ConfState(V3)
    assert ConfChange(kind, node).apply_to(start) == ConfState(voters, learners)


def test_conf_state_members_are_voters_then_learners():
    assert ConfState(("a", "b"), ("c",)).members() == ("a", "b", "c")


# ==== Config ========================================================================================


def test_config_defaults_are_valid():
    c = Config("n1", voters=V3)
    assert c.election_timeout_ticks > c.heartbeat_interval_ticks >= 1
    assert c.pre_vote and c.check_quorum


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"election_timeout_ticks": 1, "heartbeat_interval_ticks": 1}, "must exceed"),
        ({"election_timeout_ticks": 5, "heartbeat_interval_ticks": 5}, "must exceed"),
        ({"election_timeout_ticks": 5, "heartbeat_interval_ticks": 0}, "at least 1"),
        ({"max_inflight_appends": 0}, "flow-control"),
        ({"max_entries_per_append": 0}, "flow-control"),
    ],
)
def test_config_rejects_nonsense(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config("n1", voters=V3, **overrides)


def test_config_is_frozen():
    c = Config("n1", voters=V3)
    with pytest.raises(AttributeError):
        c.election_timeout_ticks = 3  # type: ignore[misc]
