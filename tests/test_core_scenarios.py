"""The Raft paper, told as scenarios against the pure core: one claim per test.

Each test drives a small cluster by hand through raftkv.sim.harness.Harness (you decide every
tick, every delivery, every drop, every crash) and its docstring names the section of the Raft
paper ("In Search of an Understandable Consensus Algorithm", extended version) or of Ongaro's
thesis ("Consensus: Bridging Theory and Practice") whose claim it demonstrates. Every Ready
passes through the same Replica and SafetyMonitor the randomized simulator uses, so each story
is also checked against the safety properties of the paper's figure 3 at every step.

Vocabulary used below:
- `h.elect(n)`     n times out and the network delivers everything until the election settles;
- `run(h, ticks)`  time passes on every live node and the network delivers after each tick;
- `h.isolate(n)`, `h.cut(a, b)`, `h.heal()`: partitions; `h.crash(n)`, `h.restart(n)`: failures.
"""

from __future__ import annotations

import dataclasses

import pytest
from buggy_cores import CommitsOldTermEntries

from raftkv.core import (
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    DurableState,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ProgressState,
    ProposalDroppedError,
    RaftCore,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadMode,
    Ready,
    Role,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from raftkv.sim.harness import Harness
from raftkv.sim.invariants import InvariantViolation
from raftkv.sim.replica import Replica, encode_command

ELECTION_TICKS = 10  # the harness's default election_timeout_ticks
HEARTBEAT_TICKS = 1  # the core's default heartbeat_interval_ticks


# ---- small helpers that keep the stories short ---------------------------------------------------


def run(h: Harness, ticks: int) -> None:
    """Let `ticks` ticks of time pass on every live node, the network delivering after each one."""
    for _ in range(ticks):
        h.tick_all()
        h.stabilize()


def run_until(h: Harness, done, max_ticks: int = 10 * ELECTION_TICKS) -> int:
    """Like run(), stopping as soon as `done()` holds; returns the ticks it took."""
    for ticks in range(1, max_ticks + 1):
        run(h, 1)
        if done():
            return ticks
    raise AssertionError(f"not done after {max_ticks} ticks")


def in_flight(h: Harness, kind: type[Message], src: str | None = None, dst: str | None = None) -> list:
    return [m for m in h.in_flight if isinstance(m, kind) and src in (None, m.src) and dst in (None, m.dst)]


def stabilize_watching(h: Harness, wanted) -> list[Message]:
    """Deliver everything until quiet; returns the messages satisfying `wanted` that went by."""
    seen: list[Message] = []
    while True:
        seen += [m for m in h.in_flight if wanted(m)]
        if not h.deliver():
            return seen


def committed(h: Harness, node: str) -> int:
    return h.core(node).log.committed


def the_leader(h: Harness) -> str:
    leaders = h.leaders()
    assert len(leaders) == 1, f"expected exactly one leader, found {leaders}"
    return leaders[0]


def entry_data(index: int, term: int) -> bytes:
    """The command stored at (index, term) in hand-made logs: equal (index, term), equal data."""
    return encode_command(f"e{index}t{term}", "write", "k", f"{index}/{term}")


def boot_with_log(h: Harness, node: str, terms: list[int], term: int, commit: int) -> None:
    """Restart `node` from a hand-made disk: a log whose entry i has term terms[i-1]."""
    entries = [Entry(t, i, EntryKind.NORMAL, entry_data(i, t)) for i, t in enumerate(terms, start=1)]
    h.replicas[node].durable = DurableState(HardState(term, None, commit), None, entries)
    h.restart(node)
    h.process(node)  # apply what the disk says is committed


def add_replica(h: Harness, node: str) -> None:
    """Boot a brand-new server that knows only the founding configuration, as a joining process does."""
    config = dataclasses.replace(h.replicas[h.ids[0]].config, node_id=node)
    h.replicas[node] = Replica(config, 7)
    h.ids.append(node)
    h.applied[node] = []
    h.read_results[node] = []


def change(h: Harness, leader: str, kind: ConfChangeKind, node: str) -> None:
    h.act(leader, lambda c: c.propose_conf_change(ConfChange(kind, node)))


# ==== 1. leader election (Raft 5.2) ===============================================================


def test_split_vote_elects_nobody_and_a_later_term_elects_exactly_one():
    """Raft 5.2: when two candidates split the votes, nobody wins that term; each times out
    again and the randomized election timeouts make a repeat unlikely, so a later term elects
    exactly one leader. (Four servers, so two candidates can get two votes each.)"""
    h = Harness(("n1", "n2", "n3", "n4"), pre_vote=False)
    h.timeout("n1")
    h.timeout("n2")
    assert h.role("n1") is h.role("n2") is Role.CANDIDATE
    h.deliver(src="n1", dst="n3")  # n3 hears n1 first and votes for it...
    h.deliver(src="n2", dst="n4")  # ...n4 hears n2 first and votes for it
    h.stabilize()
    assert h.leaders() == []
    assert all(h.core(n).term == 1 for n in h.ids)
    assert 1 not in h.monitor.leaders_by_term

    # Time passes for everyone; the first randomized timeout to fire starts term 2 alone.
    run_until(h, lambda: bool(h.leaders()))
    leader = the_leader(h)
    assert h.core(leader).term == 2
    assert h.monitor.leaders_by_term == {2: leader}
    assert all(h.core(n).leader_id == leader for n in h.ids)


def test_a_campaign_says_why_it_began():
    """What a learner reads in the feed: a pre-vote round begins at a timeout, the election after it
    because the pre-vote was won (not a second timeout), and a transfer's because it was told to."""
    said: list[str] = []
    h = Harness(pre_vote=True, listener=lambda e: said.append(e.describe()) if e.kind == "campaign" else None)
    h.timeout("n1")
    h.stabilize()
    assert said == ["n1 timed out in term 0 and asked for pre-votes",
                    "n1 won its pre-vote in term 1 and asked for votes"]
    h.act("n1", lambda c: c.transfer_leadership("n2"))
    h.stabilize()
    assert said[-1] == "n2 was told to take over (leadership transfer) in term 2 and asked for votes"


def test_a_node_with_a_stale_log_cannot_win_an_election():
    """Raft 5.4.1: a voter refuses a candidate whose log is less up-to-date than its own (last
    term, then length), so a server missing committed entries cannot become leader; the
    up-to-date server wins instead."""
    refusals: list[str] = []
    h = Harness(pre_vote=False, listener=lambda e: refusals.append(e.describe())
                if e.kind == "vote" and not e.granted else None)
    h.elect("n1")
    h.isolate("n3")
    h.propose("n1", "a", "b", "c")
    h.stabilize()
    assert committed(h, "n1") == 4 and h.log_terms("n3") == [1]

    h.crash("n1")
    h.heal()
    h.expire_leases()
    h.timeout("n3")
    assert h.role("n3") is Role.CANDIDATE and h.core("n3").term == 2
    h.stabilize()
    assert h.leaders() == []  # n2 refused: its log [1,1,1,1] beats n3's [1]
    assert h.core("n2").voted_for is None
    assert refusals == ["n2 refused its vote to n3 for term 2 (its log is more up to date: it ends at term 1, "
                        "index 4; the candidate's at term 1, index 1)"]  # the feed says which rule refused it

    h.timeout("n2")
    h.stabilize()
    assert h.leaders() == ["n2"]
    assert h.log_terms("n3") == h.log_terms("n2") == [1, 1, 1, 1, 3]
    assert h.values("n3") == {"k": "c"}


# ==== 2. the commit rule: figure 8 (Raft 5.4.2) ===================================================


# Three servers a, b, c play the paper's S1, S2 (standing for the majority S2-S4) and S5. One entry
# per AppendRequest (max_entries_per_append=1) lets panel (c) stop after X alone reached b.


def figure_8_a(h: Harness) -> None:
    """(a) a leads term 1 (after its no-op) and appends X at index 2; a crashes before X leaves."""
    h.elect("a")
    h.propose("a", "X")
    h.drop(src="a")
    h.crash("a")


def figure_8_b(h: Harness) -> None:
    """(b) c wins term 2 with b's vote and appends its no-op at index 2, which reaches only c;
    then c crashes too."""
    h.expire_leases()
    h.timeout("c")
    for _ in range(4):  # pre-vote request and response, vote request and response
        h.deliver()
    h.drop(src="c")
    h.crash("c")


def figure_8_c_a_leads_term_3(h: Harness) -> None:
    """(c) a restarts and wins term 3 (its first campaign only teaches it that term 2 exists) and
    appends its no-op at index 3."""
    h.restart("a")
    h.expire_leases()
    h.timeout("a")
    h.deliver()
    h.deliver()
    h.timeout("a")
    for _ in range(4):
        h.deliver()


def figure_8_c_x_reaches_b(h: Harness) -> None:
    """(c) continued: a walks b's log back to index 1 and sends X (term 1) alone. X is now on a
    majority, a and b, but a must NOT count it as committed: it is not from a's current term."""
    for _ in range(2):
        h.deliver(dst="b")
        h.deliver(dst="a")


def figure_8_d(h: Harness) -> None:
    """(d) a crashes before its term-3 entry reaches b. c restarts and wins term 4 with b's vote
    (c's last term 2 beats b's last term 1), then overwrites X on b with its term-2 entry."""
    h.drop(src="a")
    h.crash("a")
    h.restart("c")
    h.expire_leases()
    h.timeout("c")
    h.stabilize()
    h.timeout("c")
    h.stabilize()


def test_figure_8_with_the_commit_rule_broken_the_monitor_catches_a_leader_completeness_violation():
    """Raft 5.4.2, figure 8: a core that counts replicas of X in panel (c) commits and applies it;
    panel (d)'s leader then lacks a committed entry, which breaks Leader Completeness (figure 3),
    and the SafetyMonitor says so."""
    h = Harness(("a", "b", "c"), core_factory=CommitsOldTermEntries, max_entries_per_append=1)
    figure_8_a(h)
    figure_8_b(h)
    figure_8_c_a_leads_term_3(h)
    figure_8_c_x_reaches_b(h)
    assert committed(h, "a") == 2 and h.values("a") == {"k": "X"}  # the bug
    with pytest.raises(InvariantViolation, match="Leader Completeness"):
        figure_8_d(h)


def test_figure_8_e_a_current_term_entry_on_a_majority_commits_everything_before_it():
    """Raft 5.4.2, figure 8 (e): once the leader has replicated an entry of its *own* term to a
    majority, that entry and every entry before it (X) are committed, and no server that lacks
    them (c) can be elected any more."""
    h = Harness(("a", "b", "c"), max_entries_per_append=1)
    figure_8_a(h)
    figure_8_b(h)
    figure_8_c_a_leads_term_3(h)
    h.stabilize()  # (e) this time a's term-3 no-op reaches b as well
    assert h.log_terms("b") == [1, 1, 3] and committed(h, "a") == 3
    assert h.values("a") == {"k": "X"}

    h.crash("a")
    h.restart("c")
    h.expire_leases()
    for _ in range(3):
        h.timeout("c")
        h.stabilize()
        assert h.role("c") is not Role.LEADER  # b refuses: c's last term 2 < b's last term 3
    h.timeout("b")
    h.stabilize()
    assert h.leaders() == ["b"]
    assert h.log_terms("c") == [1, 1, 3, h.core("b").term]
    assert h.values("c") == {"k": "X"}


# ==== 3. terms (Raft 5.1) =========================================================================


def test_a_leader_steps_down_when_it_sees_a_higher_term():
    """Raft 5.1 (and figure 2, "Rules for Servers"): a server that sees a larger term in any
    message adopts it and, if it was leader, reverts to follower."""
    h = Harness()
    h.elect("n1")
    h.isolate("n1")  # n1 keeps believing it leads term 1...
    h.elect("n2")  # ...while the majority moves on to term 2
    assert h.leaders() == ["n1", "n2"]
    assert (h.core("n1").term, h.core("n2").term) == (1, 2)

    h.heal()
    h.tick("n1")  # n1's heartbeat, stamped with term 1
    h.deliver(kind=HeartbeatRequest)
    stale_answers = in_flight(h, AppendResponse, dst="n1")
    assert stale_answers and all(m.term == 2 and not m.success for m in stale_answers)
    h.deliver(dst="n1")
    assert h.role("n1") is Role.FOLLOWER and h.core("n1").term == 2
    assert h.leaders() == ["n2"]


# ==== 4. disruptive servers: pre-vote (thesis 9.6) ================================================


def test_without_pre_vote_a_rejoining_partitioned_node_inflates_its_term_and_deposes_the_leader():
    """Thesis 9.6, the problem pre-vote solves: without it (and without check-quorum's leader
    stickiness) the cut-off server raises its term at every timeout; when it returns, its term
    forces the healthy leader to step down, even though it cannot win itself."""
    h = Harness(pre_vote=False, check_quorum=False)
    h.elect("n1")
    h.isolate("n3")
    run(h, 5 * ELECTION_TICKS)
    assert h.core("n3").term > 3  # one more term per timeout while cut off
    h.propose("n1", "a")  # n3 also misses an entry, so it cannot win either
    h.stabilize()

    inflated = h.core("n3").term
    h.heal()
    run_until(h, lambda: h.role("n1") is not Role.LEADER)
    assert h.core("n1").term >= inflated  # the healthy leader was deposed
    run_until(h, lambda: bool(h.leaders()))
    assert the_leader(h) != "n3" and h.core(the_leader(h)).term > inflated
    assert len(h.monitor.leaders_by_term) >= 2


# ==== 5. check-quorum (thesis 6.2): told as a trace in tests/interaction/check-quorum.txt =========


# ==== 6. leadership transfer (thesis 3.10) ========================================================


def test_a_transfer_to_an_unreachable_node_is_abandoned_after_an_election_timeout():
    """Thesis 3.10: if the transfer does not complete within an election timeout, the leader
    aborts it and resumes accepting client requests."""
    h = Harness()
    h.elect("n1")
    h.isolate("n3")
    h.act("n1", lambda c: c.transfer_leadership("n3"))
    run(h, ELECTION_TICKS - 1)
    with pytest.raises(ProposalDroppedError):
        h.propose("n1", "refused")
    run(h, 1)
    assert h.core("n1").transfer_target is None
    assert h.leaders() == ["n1"] and h.core("n1").term == 1
    h.propose("n1", "accepted")
    h.stabilize()
    assert h.values("n2") == {"k": "accepted"}


def test_campaign_now_on_an_up_to_date_follower_makes_it_leader():
    """Thesis 3.10 (the "force election" button): campaign_now starts an election at once, like a
    TimeoutNow; voters set their leader lease aside, and a follower whose log is up to date wins."""
    h = Harness()
    h.elect("n1")
    h.act("n2", RaftCore.campaign_now)
    h.stabilize()
    assert h.leaders() == ["n2"] and h.core("n2").term == 2
    assert all(h.core(n).leader_id == "n2" for n in h.ids)


def test_campaign_now_on_a_follower_with_a_stale_log_loses():
    """Raft 5.4.1 still applies to a forced election: a stale follower's campaign raises the term
    but gets no votes, and an up-to-date server leads the next term."""
    h = Harness()
    h.elect("n1")
    h.cut("n1", "n3")
    h.propose("n1", "a")
    h.stabilize()
    h.heal()
    h.act("n3", RaftCore.campaign_now)
    h.stabilize()
    assert "n3" not in h.leaders()
    run_until(h, lambda: bool(h.leaders()))
    assert the_leader(h) in ("n1", "n2") and h.values("n3") == {"k": "a"}


# ==== 7. snapshots (Raft 7) =======================================================================


def test_a_node_restarts_from_its_snapshot_and_log():
    """Raft 7: a snapshot plus the log after it is the durable state; a server that crashes after
    compacting rebuilds its state machine from them alone."""
    h = Harness(snapshot_every=4)
    h.elect("n1")
    for i in range(10):
        h.propose("n1", str(i), key=f"k{i % 2}")
    h.stabilize()
    before = h.values("n2")
    assert h.replicas["n2"].durable.snapshot is not None

    h.crash("n2")
    h.restart("n2")
    h.process("n2")
    assert h.values("n2") == before == {"k0": "8", "k1": "9"}
    assert h.core("n2").log.first_index() > 1

    for n in ("n1", "n3"):  # the whole cluster, too
        h.crash(n)
        h.restart(n)
    h.elect("n3")
    h.propose("n3", "after", key="k0")
    h.stabilize()
    assert all(h.values(n) == {"k0": "after", "k1": "9"} for n in h.ids)


# ==== 8. membership changes (thesis 4) ============================================================


def test_a_learner_receives_the_log_but_neither_votes_nor_counts_for_commit():
    """Thesis 4.2.1: a new server first joins as a non-voting member, catching up without
    affecting availability; it never campaigns and the leader does not count it for commit."""
    h = Harness()
    h.elect("n1")
    h.propose("n1", "a")
    add_replica(h, "n4")
    change(h, "n1", ConfChangeKind.ADD_LEARNER, "n4")
    h.stabilize()
    assert h.core("n4").conf.learners == ("n4",)
    assert h.log_terms("n4") == h.log_terms("n1") and h.values("n4") == {"k": "a"}

    run(h, 3 * ELECTION_TICKS)
    h.expire_leases()
    h.tick("n4", 3 * ELECTION_TICKS)  # n4 hears nothing for a long time, and still does not campaign
    assert h.role("n4") is Role.FOLLOWER and not in_flight(h, VoteRequest)
    h.expire_leases()
    h.timeout("n2")
    assert not in_flight(h, VoteRequest, dst="n4")  # nor is it asked for a vote
    h.stabilize()

    leader = the_leader(h)
    followers = [n for n in ("n1", "n2", "n3") if n != leader]
    for n in followers:
        h.crash(n)
    before = committed(h, leader)
    h.propose(leader, "b")
    h.stabilize()
    assert h.log_terms("n4") == h.log_terms(leader)  # the learner stores it...
    assert committed(h, leader) == before  # ...but leader + learner are no majority of 3 voters


def test_a_leader_that_removes_itself_steps_down_once_the_removal_commits():
    """Thesis 4.2.2: a leader removed from the configuration keeps managing the cluster (without
    counting itself) until the change commits, then steps down; the rest elect a new leader."""
    h = Harness()
    h.elect("n1")
    change(h, "n1", ConfChangeKind.REMOVE, "n1")
    assert h.role("n1") is Role.LEADER  # still leads while the change is uncommitted
    h.stabilize()
    assert h.role("n1") is Role.FOLLOWER
    assert all(h.core(n).conf.voters == ("n2", "n3") for n in h.ids)

    run_until(h, lambda: bool(h.leaders()))
    new = the_leader(h)
    assert new in ("n2", "n3") and h.core(new).term > 1
    assert h.role("n1") is Role.FOLLOWER and h.core("n1").term == 1  # no longer a voter: never campaigns
    h.propose(new, "a")
    h.stabilize()
    assert h.values("n2") == h.values("n3") == {"k": "a"}


def test_a_second_membership_change_is_refused_while_one_is_pending():
    """Thesis 4.1: the leader starts a new change only after the previous one committed, so two
    changes never overlap (which could let two disjoint majorities form)."""
    h = Harness()
    h.elect("n1")
    add_replica(h, "n4")
    change(h, "n1", ConfChangeKind.ADD_LEARNER, "n4")
    with pytest.raises(ProposalDroppedError, match="in progress"):
        change(h, "n1", ConfChangeKind.REMOVE, "n3")
    h.stabilize()
    change(h, "n1", ConfChangeKind.REMOVE, "n3")  # accepted once the first one committed
    h.stabilize()
    assert h.core("n1").conf.voters == ("n1", "n2")


def test_a_new_leader_refuses_a_membership_change_before_committing_an_entry_of_its_term():
    """Thesis 4.1 and its errata (raft-dev, 2015): a new leader must commit an entry of its own
    term before starting a membership change, or a change appended by an earlier leader could be
    lost while the new one takes effect."""
    h = Harness()
    h.elect("n1")
    h.expire_leases()
    h.timeout("n2")
    while h.role("n2") is not Role.LEADER:  # elect n2, but hold back its no-op's acknowledgements
        assert h.deliver(kind=VoteRequest) + h.deliver(kind=VoteResponse)
    with pytest.raises(ProposalDroppedError, match="has not committed"):
        change(h, "n2", ConfChangeKind.REMOVE, "n1")
    h.stabilize()
    change(h, "n2", ConfChangeKind.REMOVE, "n1")
    h.stabilize()
    assert h.core("n2").conf.voters == ("n2", "n3")


# ==== 9. linearizable reads (thesis 6.4) ==========================================================


def test_reads_arriving_during_a_round_share_the_next_round():
    """Thesis 6.4 (batching): one heartbeat round can confirm any number of reads; reads that
    arrive while a round is in flight all wait for the next one, so ten reads cost two rounds."""
    h = Harness()
    h.elect("n1")
    h.act("n1", lambda c: c.read_index(b"r0"))  # starts round 1
    for i in range(1, 10):
        h.act("n1", lambda c, i=i: c.read_index(b"r%d" % i))  # queue up behind it
    heartbeats = stabilize_watching(h, lambda m: isinstance(m, HeartbeatRequest))
    assert sorted(m.read_round for m in heartbeats) == [1, 2]  # two rounds, each to one follower
    assert sorted(ctx for ctx, _, ok in h.read_results["n1"] if ok) == [b"r%d" % i for i in range(10)]


def first_read_round(h: Harness) -> tuple[str, str]:
    """Elect n1 of three and confirm its read b"a": the follower its round asked (one of two), and
    the other."""
    h.elect("n1")
    h.act("n1", lambda c: c.read_index(b"a"))
    (asked,) = {m.dst for m in h.matching(src="n1", kind=HeartbeatRequest)}
    h.stabilize()
    return asked, ({"n2", "n3"} - {asked}).pop()


def test_a_read_round_asks_a_majority_and_first_who_answered_first():
    """A round needs a majority's answers, not everyone's: the leader asks one follower of two
    (two of four in a cluster of five), the one that answered the newest round first."""
    h = Harness()
    asked, other = first_read_round(h)
    h.act("n1", lambda c: c.read_index(b"b"))
    assert [m.dst for m in h.matching(src="n1", kind=HeartbeatRequest)] == [asked]  # round 2, the same follower...
    h.tick("n1", HEARTBEAT_TICKS)  # ...and carried by a periodic heartbeat to both
    h.deliver(src="n1", dst=other, kind=HeartbeatRequest)
    h.deliver(src=other, dst="n1")  # the other follower answers round 2 first...
    h.stabilize()
    h.act("n1", lambda c: c.read_index(b"c"))
    assert [m.dst for m in h.matching(src="n1", kind=HeartbeatRequest)] == [other]  # ...so it is asked next
    h.stabilize()
    assert [ctx for ctx, _, ok in h.read_results["n1"] if ok] == [b"a", b"b", b"c"]

    five = Harness(ids=("n1", "n2", "n3", "n4", "n5"))
    five.elect("n1")
    five.act("n1", lambda c: c.read_index(b"r"))
    assert len({m.dst for m in five.matching(src="n1", kind=HeartbeatRequest)}) == 2
    five.stabilize()
    assert five.read_results["n1"] == [(b"r", 1, True)]


def test_a_read_round_whose_follower_went_quiet_completes_at_the_next_heartbeat():
    """The periodic heartbeats go to every follower and carry the latest round: if the follower a
    round asked is cut off, the other one answers for it one heartbeat interval later, and is the
    one asked from then on."""
    h = Harness()
    asked, other = first_read_round(h)
    h.cut("n1", asked)
    h.act("n1", lambda c: c.read_index(b"b"))
    h.stabilize()
    assert [ctx for ctx, _, _ in h.read_results["n1"]] == [b"a"]  # the round waits on the cut follower
    h.tick("n1", HEARTBEAT_TICKS)
    h.stabilize()
    assert h.read_results["n1"][-1] == (b"b", 1, True)
    h.act("n1", lambda c: c.read_index(b"c"))
    assert [m.dst for m in h.matching(src="n1", kind=HeartbeatRequest)] == [other]
    h.stabilize()
    assert h.read_results["n1"][-1] == (b"c", 1, True)


def test_a_follower_that_makes_a_majority_with_the_leader_reads_without_a_round():
    """Of three nodes, the leader and the follower that asks are a majority: the leader answers at
    once, and the follower accepting the answer in the same term is the second acknowledgement.
    Of five, a round still asks others."""
    h = Harness()
    h.elect("n1")
    h.act("n2", lambda c: c.read_index(b"r"))
    rounds = stabilize_watching(h, lambda m: isinstance(m, HeartbeatRequest))
    assert rounds == [] and h.read_results["n2"] == [(b"r", 1, True)]

    five = Harness(ids=("n1", "n2", "n3", "n4", "n5"))
    five.elect("n1")
    five.act("n2", lambda c: c.read_index(b"r"))
    rounds = stabilize_watching(five, lambda m: isinstance(m, HeartbeatRequest))
    assert {m.read_round for m in rounds} == {1} and five.read_results["n2"] == [(b"r", 1, True)]


def test_a_follower_that_moved_to_a_later_term_drops_the_answer_to_its_read():
    """The answer without a round is safe only because the follower accepts it in the term it
    asked in: one that has since voted in a later term (so a later leader may have been elected
    without the old leader) drops it, and its read is never confirmed."""
    h = Harness()
    h.elect("n1")
    h.act("n2", lambda c: c.read_index(b"r"))
    h.deliver(src="n2", dst="n1", kind=ReadIndexRequest)  # n1 answers at once...
    (answer,) = h.matching(src="n1", dst="n2", kind=ReadIndexResponse)
    h.drop(src="n1", dst="n2", kind=ReadIndexResponse)  # ...and the answer is delayed
    h.isolate("n1")
    h.expire_leases()
    h.elect("n3")  # n2 votes for n3 in term 2
    h.propose("n3", "new")
    h.stabilize()
    h.heal()
    h.in_flight.append(answer)
    assert h.deliver(src="n1", dst="n2", kind=ReadIndexResponse) == 1
    assert h.read_results["n2"] == []


def test_a_partitioned_leader_cannot_confirm_a_read():
    """Thesis 6.4: a deposed leader that does not know it yet must not serve reads; cut off from
    the majority it never completes a heartbeat round, and the read fails when it steps down."""
    h = Harness()
    h.elect("n1")
    h.isolate("n1")
    h.act("n1", lambda c: c.read_index(b"stale?"))
    h.elect("n2")
    h.propose("n2", "new")
    h.stabilize()
    assert h.read_results["n1"] == []
    run_until(h, lambda: h.role("n1") is not Role.LEADER)  # check-quorum
    assert h.read_results["n1"] == [(b"stale?", 1, False)]


def test_a_new_leader_answers_reads_only_after_its_no_op_commits():
    """Thesis 6.4 step 1: a new leader does not know the latest commit index until it commits an
    entry of its own term, so a read waits for the no-op."""
    h = Harness()
    h.elect("n1")
    h.propose("n1", "a")
    h.stabilize()
    h.expire_leases()
    h.timeout("n2")
    while h.role("n2") is not Role.LEADER:
        assert h.deliver(kind=VoteRequest) + h.deliver(kind=VoteResponse)
    h.act("n2", lambda c: c.read_index(b"r"))
    h.deliver(kind=HeartbeatRequest)
    h.deliver(kind=HeartbeatResponse)
    assert h.read_results["n2"] == []
    h.stabilize()
    assert h.read_results["n2"] == [(b"r", 3, True)]


def test_lease_reads_are_answered_at_once():
    """Thesis 6.4.1 (leases): with check-quorum's leader stickiness, a leader that heard from a
    majority within an election timeout answers without a heartbeat round, trading safety under
    clock drift for latency."""
    h = Harness(read_mode=ReadMode.LEADER_LEASE)
    h.elect("n1")
    h.act("n1", lambda c: c.read_index(b"r"))
    assert h.read_results["n1"] == [(b"r", 1, True)]
    assert not in_flight(h, HeartbeatRequest)


def test_a_lease_expires_one_election_timeout_after_the_majority_last_answered():
    """Thesis 6.4.1: a follower that heard from the leader refuses other candidates for one election
    timeout, so the leader may skip the heartbeat round only within that time of the majority's last
    answer. Check-quorum is not enough: it steps down only at its next check, up to two election
    timeouts later, while the majority may already have elected a leader that accepted writes."""
    h = Harness(read_mode=ReadMode.LEADER_LEASE)
    h.elect("n1")
    h.propose("n1", "old")
    run(h, 1)  # every follower has just answered n1
    h.isolate("n1")
    h.tick("n1", ELECTION_TICKS - 1)  # an election timeout passes, n1's clock a little behind...
    h.expire_leases()  # ...the followers' leases run out...
    h.elect("n2")  # ...and they elect n2, which commits a write
    h.propose("n2", "new")
    h.stabilize()
    assert h.values("n2") == {"k": "new"}
    assert h.leaders() == ["n1", "n2"]  # n1's check-quorum has not noticed yet

    h.act("n1", lambda c: c.read_index(b"stale?"))
    assert h.read_results["n1"] == []  # the lease has run out; n1 falls back to a heartbeat round
    assert len(in_flight(h, HeartbeatRequest, src="n1")) == 1  # (asking one follower: a majority with n1)
    run_until(h, lambda: h.role("n1") is not Role.LEADER)
    assert h.read_results["n1"] == [(b"stale?", 2, False)]


def test_no_lease_reads_during_a_leadership_transfer():
    """Thesis 3.10 and 6.4.1: TimeoutNow lets the target win past the voters' leases, so once a
    transfer has started the leader's lease proves nothing: here the target wins and accepts a
    write while the old leader, cut off, still believes it leads. Its read takes a heartbeat
    round instead, which never completes."""
    h = Harness(read_mode=ReadMode.LEADER_LEASE)
    h.elect("n1")
    h.propose("n1", "old")
    h.stabilize()
    h.act("n1", lambda c: c.transfer_leadership("n3"))
    h.deliver(kind=TimeoutNow)
    h.isolate("n1")
    h.stabilize()
    h.propose("n3", "new")
    h.stabilize()
    assert h.leaders() == ["n1", "n3"] and h.values("n3") == {"k": "new"}

    h.act("n1", lambda c: c.read_index(b"stale?"))
    assert h.read_results["n1"] == [] and in_flight(h, HeartbeatRequest, src="n1")
    run_until(h, lambda: h.role("n1") is not Role.LEADER)
    assert h.read_results["n1"] == [(b"stale?", 2, False)]


# ==== 10. log replication (Raft 5.3) ==============================================================

# The leader's log and follower (f)'s log in the paper's figure 7, with every run of entries after
# the first three made `k` times longer.
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_F = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]


def stretch(terms: list[int], k: int) -> list[int]:
    return terms[:3] + [t for t in terms[3:] for _ in range(k)]


@pytest.mark.parametrize("k", [1, 20], ids=["figure-7", "figure-7-x20"])
def test_fast_back_off_repairs_a_divergent_log_in_one_round_trip_per_term(k):
    """Raft 5.3 (its last paragraphs): a rejecting follower names the term of the conflicting entry
    and the first index it holds for that term, so the leader skips a whole term per round trip:
    follower (f) of figure 7 is repaired after one rejection per divergent term (2), however many
    entries those terms hold."""
    h = Harness(("top", "peer", "f"))
    boot_with_log(h, "top", stretch(FIG7_LEADER, k), term=7, commit=3)
    boot_with_log(h, "peer", stretch(FIG7_LEADER, k), term=7, commit=3)
    boot_with_log(h, "f", stretch(FIG7_F, k), term=3, commit=3)
    divergent = len(stretch(FIG7_F, k)) - 3

    h.timeout("top")
    rejections = stabilize_watching(h, lambda m: isinstance(m, AppendResponse) and m.src == "f" and not m.success)
    assert h.leaders() == ["top"]
    assert [m.conflict_term for m in rejections] == [3, 2]  # one rejection per divergent term...
    assert divergent == 8 * k  # ...not one per entry
    assert h.log_terms("f") == [*stretch(FIG7_LEADER, k), 8]


def test_log_matching_a_new_leader_makes_every_follower_log_identical_to_its_own():
    """Raft 5.3, figure 7: when the leader at the top comes to power its followers may miss
    entries (a, b), hold extra uncommitted ones (c, d), or both (e, f). The leader forces its log
    on them: each follower's log is cut back to the last entry it shares with the leader and then
    extended, and all logs end identical."""
    followers = {
        "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
        "b": [1, 1, 1, 4],
        "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        "e": [1, 1, 1, 4, 4, 4, 4],
        "f": FIG7_F,
    }
    h = Harness(("top", *followers))
    boot_with_log(h, "top", FIG7_LEADER, term=7, commit=3)
    for node, terms in followers.items():
        boot_with_log(h, node, terms, term=max(terms), commit=3)

    h.timeout("top")  # votes from a, b, e, f (c and d have longer logs and refuse): 5 of 7
    h.stabilize()
    h.tick("top")  # one heartbeat carries the final commit index to everyone
    h.stabilize()
    assert h.leaders() == ["top"] and h.core("top").term == 8
    for node in h.ids:
        assert h.log_terms(node) == [*FIG7_LEADER, 8], node
        assert committed(h, node) == 11
    assert all(h.values(n) == h.values("top") for n in h.ids)


def test_a_follower_that_lost_acknowledged_entries_is_repaired() -> None:
    """Beyond the paper, which assumes stable storage never loses an acknowledged entry: a
    follower restarted with an emptied disk (an operator wiped its data directory) must still
    catch up, instead of the leader trusting its old match index forever."""
    h = Harness(("a", "b", "c"))
    h.elect("a")
    h.propose("a", "x", "y")
    h.stabilize()
    h.crash("c")
    h.replicas["c"].durable = DurableState()  # the data directory is gone
    h.restart("c")
    h.propose("a", "z")
    h.stabilize()
    h.tick_all(3)
    h.stabilize()
    assert h.log_terms("c") == h.log_terms("a")
    assert h.values("c") == h.values("a") == {"k": "z"}



def test_a_duplicated_old_rejection_does_not_demote_a_caught_up_follower() -> None:
    """A rejection from when b was behind, delivered again after b caught up, is stale: b stays
    replicating at its match instead of being probed and sent its entries again."""
    h = Harness(("a", "b", "c"))
    h.elect("a")
    h.propose("a", "x", "y", "z")
    h.stabilize()
    leader = h.core("a")
    pr = leader.progress["b"]
    match = pr.match
    assert pr.state is ProgressState.REPLICATE and match == leader.log.last_index()
    old = AppendResponse(src="b", dst="a", term=leader.term, success=False, reject_index=match - 1,
                         conflict_index=match - 1)
    h.act("a", lambda c: c.step(old))
    assert (pr.state, pr.match, pr.next) == (ProgressState.REPLICATE, match, match + 1)

def test_an_answer_to_an_older_term_s_append_changes_nothing() -> None:
    """A leader's AppendRequest from an earlier term, delayed, reaches a follower already in the
    leader's current term; the follower's "stale term" answer (no log comparison at all) must not
    be read as a log rejection. Found by the network-namespace chaos test."""
    h = Harness(("a", "b", "c"))
    h.elect("a")
    h.propose("a", "x")
    h.stabilize()
    leader = h.core("a")
    before = {p: (pr.match, pr.next) for p, pr in leader.progress.items()}
    h.act("a", lambda c: c.step(AppendResponse(src="b", dst="a", term=c.term, success=False)))
    assert h.role("a") is Role.LEADER
    assert {p: (pr.match, pr.next) for p, pr in leader.progress.items()} == before
    h.propose("a", "y")
    h.stabilize()
    assert h.values("b") == {"k": "y"}


def test_a_leader_sends_its_entries_before_its_fsync_but_counts_itself_only_once_durable():
    """Raft thesis 10.2.1: the leader writes in parallel with its followers, and "committed"
    still means on a majority's disks: one follower's ack alone is not a majority of three."""
    h = Harness()
    h.elect("n1")
    c = h.core("n1")
    before = c.log.committed
    c.propose([encode_command("op", "write", "k", "x")])
    rd = c.ready()
    last = rd.entries[-1]
    assert any(isinstance(m, AppendRequest) for m in rd.early_messages)
    c.step(AppendResponse(src="n2", dst="n1", term=c.term, success=True, match_index=last.index))
    assert c.log.committed == before, "committed with the leader's own copy not yet on disk"
    c.advance(rd)
    c.on_persisted(last.index, last.term)
    assert c.log.committed == last.index


def test_a_vote_waits_for_the_fsync_of_the_term_and_vote_it_promises():
    h = Harness()
    h.elect("n1")
    h.expire_leases()
    c = h.core("n3")
    term = c.term + 1
    c.step(VoteRequest(src="n2", dst="n3", term=term, last_log_index=c.log.last_index(),
                       last_log_term=c.log.last_term()))
    rd = c.ready()
    assert rd.hard_state is not None and rd.hard_state.term == term
    assert not rd.early_messages, "a message left before the new term and vote were on disk"
    assert any(isinstance(m, VoteResponse) for m in rd.messages)


def test_a_commit_index_alone_is_recorded_without_an_fsync_of_its_own():
    """Figure 2 keeps commitIndex volatile: a follower that only learns a new commit index writes
    it with its next fsync, while new entries need theirs before the follower acknowledges them."""
    h = Harness()
    h.elect("n1")
    h.propose("n1", "x")
    h.stabilize()
    f = h.core("n2")
    term, last = f.term, f.log.last_index()
    new = Entry(term=term, index=last + 1, data=encode_command("op", "write", "k", "y"))
    f.step(AppendRequest(src="n1", dst="n2", term=term, prev_log_index=last, prev_log_term=term,
                         entries=(new,), commit=last))
    rd = f.ready()
    assert rd.entries == [new] and rd.must_sync()
    assert any(isinstance(m, AppendResponse) for m in rd.messages) and not rd.early_messages
    f.advance(rd)
    f.on_persisted(new.index, new.term)
    f.step(AppendRequest(src="n1", dst="n2", term=term, prev_log_index=new.index, prev_log_term=term,
                         commit=new.index))
    rd = f.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == new.index
    assert rd.committed_entries == [new]
    assert not rd.must_sync(), "a commit index alone cost an fsync"


def test_a_caught_up_follower_is_told_the_commit_index_in_an_append_it_need_not_answer():
    """An answer to an append costs a wake-up on both ends, and at one write at a time the commit
    announcement doubled them: a follower the leader replicates to is told the new commit index
    without being asked to answer (its acknowledgement of the entries says all an answer would);
    entries are always answered. A lost announcement is made good by the next heartbeat, which
    carries the commit index too."""
    h = Harness()
    h.elect("n1")
    h.propose("n1", "x")
    seen = stabilize_watching(h, lambda m: isinstance(m, (AppendRequest, AppendResponse)))
    announced = [m for m in seen if isinstance(m, AppendRequest) and not m.needs_answer]
    assert announced and all(not m.entries for m in announced), seen
    for follower in ("n2", "n3"):
        asked = [m for m in seen if isinstance(m, AppendRequest) and m.dst == follower and m.needs_answer]
        answers = [m for m in seen if isinstance(m, AppendResponse) and m.src == follower]
        assert len(answers) == len(asked), (follower, seen)
        assert h.values(follower) == {"k": "x"}

    h.propose("n1", "y")
    lost: list[Message] = []
    while h.in_flight:
        lost += [m for m in h.in_flight if isinstance(m, AppendRequest) and not m.needs_answer]
        h.in_flight = [m for m in h.in_flight if m not in lost]
        h.deliver()
    assert lost and {h.values(m.dst)["k"] for m in lost} == {"x"}, "the commit of y was announced"
    run_until(h, lambda: h.values("n2") == h.values("n3") == {"k": "y"}, 2 * ELECTION_TICKS)
    assert h.role("n1") is Role.LEADER


def test_a_commit_reaches_a_follower_in_the_append_that_follows_it_not_in_one_of_its_own():
    """The acknowledgement that commits a write and the writes that waited for that commit are
    handled in one turn (the driver holds a leader's writes while its last append is uncommitted),
    so an empty announcement of the commit and the append of the next writes left together, to
    every follower: two messages for one. The append carries the commit index; alone, it goes."""
    h = Harness()
    h.elect("n1")
    h.propose("n1", "x")
    h.stabilize()
    _, y = h.propose("n1", "y")
    h.deliver(src="n1")
    ack = h.matching(src="n2", dst="n1", kind=AppendResponse)
    assert len(ack) == 1 and ack[0].match_index == y
    h.in_flight.remove(ack[0])
    readies: list[Ready] = []
    h.on_ready = lambda node, rd: readies.append(rd)
    z = encode_command("n1-z", "write", "k", "z")
    h.act("n1", lambda c: (c.step(ack[0]), c.propose([z])))
    assert committed(h, "n1") == y
    sent = [m for rd in readies for m in rd.early_messages + rd.messages if isinstance(m, AppendRequest)]
    assert sorted(m.dst for m in sent) == ["n2", "n3"], sent
    assert all(m.commit == y and [e.data for e in m.entries] == [z] and m.needs_answer for m in sent), sent

    h.on_ready = None
    h.stabilize()
    assert h.values("n1") == h.values("n2") == h.values("n3") == {"k": "z"}
