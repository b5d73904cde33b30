"""The member nemesis: remove a member (sometimes the leader), stop its process, and later add its
name back as a new member, as etcd's Jepsen test does, while the other faults go on.

Theory of operation
-------------------
Remove (at a plan's start):
  - the victim is a voter: the leader of the moment when the plan says so, else the plan's pick
    among the voters; never one whose removal would leave fewer voters than a majority of the
    size the cluster started with (the plan is then recorded as skipped, and why);
  - `DELETE /members/{id}` through a live member, the leader first, until the cluster says it
    is done. 409 (`pending`: a change is still settling, or a new leader has not committed in its
    term yet) and 503 mean "not done": retried. A timeout or a 504 may have removed it: the
    cluster's list of removed ids settles that. Given up after `REMOVE_WAIT_S` ("not done"; a
    removal that commits later is found and finished by the next plan, or by `heal`);
  - then the node's process is stopped by its pid and its data directory moved aside to
    `removed/<member id>`, kept for inspection (the cluster never takes that id back).
Re-add (at the plan's end, or when the run heals):
  - the name starts again on its old addresses with an empty data directory and `--join`
    through a live member (the leader when known); the node asks the cluster to add it as a
    learner, under a new id. A node that could not join exits (a change pending, no quorum): it
    is started again, through the next member;
  - once the cluster lists it and the leader reports it caught up (it has acknowledged entries
    and lacks at most `CAUGHT_UP_LAG_ENTRIES`: the runbook's "wait for its lagEntries"),
    `POST /members/{id}/promote` until it is a voter (409 `not_caught_up`, `pending`, and 503
    are retried);
  - a learner whose process died (killed, or before it recorded its id: the answer to its join
    came too late) is started again: it resumes as that member, or takes it over.
  Every step starts from what the cluster and the processes say now, so a re-add cut short by
  the run's end is finished by `heal`.

Each step is appended to its fault's record (`details["actions"]`: when, what, on which member,
the outcome, and how often each answer came), so the report shows what was done and what the
cluster answered.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from raftkv.chaos.clusters import ChaosCluster
from raftkv.chaos.connect import RUN_ACCESS, run_session
from raftkv.chaos.membership import MemberInfo, MemberView
from raftkv.chaos.recorder import FaultRecord, Recorder
from raftkv.chaos.workload import call
from raftkv.client import join_token

if TYPE_CHECKING:  # nemesis.py imports this module
    from raftkv.chaos.nemesis import FaultPlan

__all__ = ["MemberChanges"]

# A removal waits out the faults that hold the quorum meanwhile: each window is at most 4 s, but
# several in a row (a crash of every node and its restarts, then a pause, then a kill of the new
# leader) held one for more than 15 s in a test run on a busy machine.
REMOVE_WAIT_S = 30.0
REJOIN_WAIT_S = 30.0  # start, join, catch up, be promoted: seconds on a loaded machine, more under faults
RETRY_S = 0.25
CHANGE_TIMEOUT_S = 8.0  # a change is answered once committed; a node gives up on a proposal after 5 s
CAUGHT_UP_LAG_ENTRIES = 50  # half of what the cluster allows: a promoted voter must not hold commits back


class MemberChanges:
    def __init__(self, cluster: ChaosCluster, view: MemberView, recorder: Recorder,
                 leader_now: Callable[[], str | None], founding_size: int) -> None:
        self.cluster = cluster
        self.view = view
        self.recorder = recorder
        self.leader_now = leader_now
        self.founding_size = founding_size
        self.min_voters = founding_size // 2 + 1
        self.retired: dict[str, FaultRecord] = {}  # slot -> its removal's record, until the name is a voter again
        self._unsettled: dict[str, tuple[str, FaultRecord]] = {}  # slot -> (member id, record): outcome unknown
        self._stopping: dict[str, asyncio.Future] = {}  # slot -> its process being stopped and its data moved

    # ---------------------------------------------------------------- removing ----------------

    async def remove(self, plan: FaultPlan, forget_faults_on: Callable[[str], None]) -> FaultRecord | None:
        """Remove a voter and stop its process; its record (None when nothing was removed)."""
        await self._settle_unknown_removals(forget_faults_on, final=False)
        leader = self.leader_now()
        victim, why_not = self._victim(plan.target_leader, plan.pick, leader)
        details: dict[str, Any] = {"plan": plan.describe(), "leaderAtStart": leader, "actions": []}
        if victim is None:
            record = self.recorder.fault_started("member", "remove: skipped", [], **details)
            record.error = why_not
            self.recorder.fault_ended(record)
            return None
        slot = self._slot(victim)
        assert slot is not None  # _victim picks only members this run runs
        role = " (leader)" if victim.id == leader else ""
        record = self.recorder.fault_started("member", f"remove {victim.id}{role}", [slot], memberId=victim.id,
                                             **details)
        self._unsettled[slot] = (victim.id, record)  # until the cluster answers (the run may end first)
        done, answers = await self._change("DELETE", f"/members/{quote(victim.id, safe='')}",
                                           lambda: victim.id in self.view.removed_ids, REMOVE_WAIT_S)
        self._act(record, "remove", victim.id, "done" if done else "not done", answers)
        if not done:
            record.error = f"{victim.id} was not removed within {REMOVE_WAIT_S:g} s ({_words(answers)})"
            self.recorder.fault_ended(record)
            return None
        del self._unsettled[slot]
        await self._retire(slot, victim.id, record, forget_faults_on)
        return record

    def _victim(self, target_leader: bool, pick: int, leader: str | None) -> tuple[MemberInfo | None, str]:
        voters = self.view.voters()
        if len(voters) - 1 < self.min_voters:
            return None, (f"{len(voters)} voter(s): removing one would leave fewer than {self.min_voters}, a "
                          f"majority of the {self.founding_size} the cluster started with")
        candidates = [m for m in voters if self._slot(m) is not None and self._slot(m) not in self.retired]
        if not candidates:
            return None, "no voter runs in a process this run started"
        chosen = next((m for m in candidates if m.id == leader), None) if target_leader else None
        return chosen or candidates[pick % len(candidates)], ""

    def _slot(self, member: MemberInfo) -> str | None:
        return self.view.slot_of(member.id, self.cluster.urls)

    async def _retire(self, slot: str, member_id: str, record: FaultRecord,
                      forget_faults_on: Callable[[str], None]) -> None:
        self.view.note_removed(member_id)
        self.retired[slot] = record
        forget_faults_on(slot)  # its pause, kill or partition ends with its process
        # Off the event loop (a graceful stop takes a while); kept, so a re-add waits for it even
        # when this coroutine is cancelled meanwhile.
        stopping = self._stopping[slot] = asyncio.ensure_future(asyncio.to_thread(self.cluster.retire, slot,
                                                                                  member_id))
        archive = await asyncio.shield(stopping)
        self._act(record, "stop", member_id, f"process stopped; its data kept in {archive}")

    async def _settle_unknown_removals(self, forget_faults_on: Callable[[str], None], final: bool) -> None:
        """A removal given up on (or cut short) may have committed since: then stop that process, to
        be re-added. `final`: the run is over, so one that did not is recorded as not done for good."""
        if not self._unsettled:
            return
        await self.view.refresh_now()
        for slot, (member_id, record) in sorted(self._unsettled.items()):
            if member_id in self.view.removed_ids:
                del self._unsettled[slot]
                self._act(record, "remove", member_id, "done after all (the cluster lists it as removed)")
                record.end = None  # open again until the name is back
                await self._retire(slot, member_id, record, forget_faults_on)
            elif final:
                del self._unsettled[slot]
                record.error = record.error or f"{member_id} was not removed before the run ended"
                self.recorder.fault_ended(record)

    # ---------------------------------------------------------------- re-adding ---------------

    async def heal(self) -> None:
        """Finish what is left: removals that committed late, and every name still out (a name that
        cannot be re-added stays in `retired`, its record closed with the reason)."""
        await self._settle_unknown_removals(lambda slot: None, final=True)
        for slot in sorted(self.retired):
            if not await self.rejoin(slot):
                self.recorder.fault_ended(self.retired[slot])

    async def rejoin_all(self) -> None:
        for slot in sorted(self.retired):
            await self.rejoin(slot)

    async def rejoin(self, slot: str) -> bool:
        """Add the slot's name back as a new member and promote it; False if not done in time."""
        record = self.retired[slot]
        if slot in self._stopping:
            await self._stopping[slot]
            del self._stopping[slot]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REJOIN_WAIT_S
        answers: Counter[str] = Counter()
        joins = 0
        async with run_session() as session:
            token = await self._join_token(session)
            while loop.time() < deadline:
                await self.view.refresh(session)
                member = self.view.by_name(slot)
                if member is not None and member.voter:
                    self._rejoined(slot, member, record, answers)
                    return True
                if member is None:
                    joins += self._start_joiner(slot, record, joins, answers, token)
                else:
                    await self._toward_voter(session, slot, member, answers)
                await asyncio.sleep(RETRY_S)
            record.error = (f"{slot} was not a voter again within {REJOIN_WAIT_S:g} s ({_words(answers)})"
                            + await self._where_it_stands(session, slot))
        self._act(record, "re-add", slot, "not done", answers)
        return False

    async def _where_it_stands(self, session: aiohttp.ClientSession, slot: str) -> str:
        """The new node's own account, for a re-add that did not finish (a learner that stopped catching up)."""
        status, data, _, _ = await call(session, "GET", f"{self.cluster.urls[slot]}/raft-state", None, CHANGE_TIMEOUT_S)
        if status != 200 or not isinstance(data, dict):
            return f"; {slot} does not answer"
        return (f"; {data.get('nodeId')} had applied index {data.get('lastApplied')} and knew leader "
                f"{data.get('leaderId')} in term {data.get('term')}")

    def _start_joiner(self, slot: str, record: FaultRecord, joins: int, answers: Counter[str],
                      token: str | None) -> int:
        """Start the name as a joining node unless one is already asking; how many were started."""
        if self.cluster.is_running(slot):
            return 0  # starting up, or waiting for the cluster to answer its request to join
        if joins:
            answers[f"join failed: {self.cluster.last_words(slot)}"] += 1
        join_url = self._join_url(joins)
        self.cluster.start_joiner(slot, join_url, token)
        self._act(record, "join", slot, f"started with an empty data directory, joining through {join_url}")
        return 1

    async def _toward_voter(self, session: aiohttp.ClientSession, slot: str, member: MemberInfo,
                            answers: Counter[str]) -> None:
        """The cluster lists the name as a learner: promote it once it has caught up."""
        if not self.cluster.is_running(slot):
            # Killed, or exited before it recorded its id: started again it resumes as that member,
            # or takes over the member added for it (the same name and addresses).
            self.cluster.start(slot)
            answers["started again"] += 1
            return
        if not _caught_up(member):
            answers["catching up"] += 1
            return
        status, data, error = await self._ask(session, "POST", f"/members/{quote(member.id, safe='')}/promote")
        answers[f"promote: {_answer_word(status, data, error)}"] += 1

    def _rejoined(self, slot: str, member: MemberInfo, record: FaultRecord, answers: Counter[str]) -> None:
        self._act(record, "re-add", member.id, "done: a voter", answers)
        record.label += f", re-added as {member.id}"
        record.details["newMemberId"] = member.id
        del self.retired[slot]
        self.recorder.fault_ended(record)

    def _join_url(self, attempt: int) -> str:
        """A member that just answered, knowing a leader; each later attempt the next member's (the
        last may have been cut off since)."""
        order = self._urls_leader_first()
        if self.view.answered_by in order:
            order.remove(self.view.answered_by)
            order.insert(0, self.view.answered_by)
        return order[attempt % len(order)]

    def _urls_leader_first(self) -> list[str]:
        urls = self.view.urls()
        leader = self.leader_now()
        return ([urls[leader]] if leader in urls else []) + [u for i, u in sorted(urls.items()) if i != leader]

    # ---------------------------------------------------------------- asking the cluster ------

    async def _change(self, method: str, path: str, confirmed: Callable[[], bool],
                      wait_s: float) -> tuple[bool, Counter[str]]:
        """Ask for a change until it is done (answered 200, or `confirmed` by the cluster's view)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        answers: Counter[str] = Counter()
        async with run_session() as session:
            while True:
                status, data, error = await self._ask(session, method, path)
                answers[_answer_word(status, data, error)] += 1
                if status == 200:
                    return True, answers
                if await self.view.refresh(session) and confirmed():
                    return True, answers
                if loop.time() > deadline:
                    return False, answers
                await asyncio.sleep(RETRY_S)

    async def _join_token(self, session: aiohttp.ClientSession) -> str | None:
        """The token a joining node asks to be added with, for the run's user (auth on: --secure)."""
        async def ask(method: str, path: str, body: Any) -> tuple[int, Any]:
            status, data, _ = await self._ask(session, method, path, body)
            return status or 0, data

        return await join_token(RUN_ACCESS.get().credentials, ask)

    async def _ask(self, session: aiohttp.ClientSession, method: str, path: str,
                   body: Any = None) -> tuple[int | None, Any, str | None]:
        """One request, to the leader first, then to the next member while none could be reached."""
        for url in self._urls_leader_first():
            status, data, error, maybe_sent = await call(session, method, url + path, body, CHANGE_TIMEOUT_S)
            if status is not None or maybe_sent:
                return status, data, error
        return None, None, "no member could be reached"

    def _act(self, record: FaultRecord, action: str, member: str, outcome: str,
             answers: Counter[str] | None = None) -> None:
        entry: dict[str, Any] = {"t": self.recorder.now(), "action": action, "member": member, "outcome": outcome}
        if answers:
            entry["answers"] = dict(answers)
        record.details.setdefault("actions", []).append(entry)


def _caught_up(member: MemberInfo) -> bool:
    """As the runbook says, a learner is promoted once the leader reports it holds the log: it has
    acknowledged entries, and lacks at most a few (writes keep coming). Without the leader's report
    (another member answered), the cluster's own check decides: 409 not_caught_up is retried."""
    if member.lag_entries is None:
        return True
    return bool(member.match_index) and member.lag_entries <= CAUGHT_UP_LAG_ENTRIES


def _answer_word(status: int | None, data: Any, error: str | None) -> str:
    """An answer in a few words: "200", "409 pending", "503", "no answer (TimeoutError)"."""
    if status is None:
        return f"no answer ({(error or '').split(':')[0]})"
    reason = data.get("reason") if isinstance(data, dict) else None
    return f"{status} {reason}" if reason else str(status)


def _words(answers: Counter[str]) -> str:
    return ", ".join(f"{word} x{n}" for word, n in answers.most_common()) or "no answer"
