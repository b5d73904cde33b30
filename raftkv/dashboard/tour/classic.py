"""The seed's four demos: leader election, leader failure, a network partition, consistency under failures.

Without a supervisor (a remote cluster), "crash the leader" becomes "cut the leader off", which
shows the same failover, and the caption says which one happened. Catch-up is judged from applied
indexes, never from a node's KV preview (a status carries only its first 50 keys).
"""

from __future__ import annotations

from .runner import Tour, TourFailed

KEY = "saldo_cuenta_123"


async def election(t: Tour) -> None:
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    follower = t.followers(leader)[0]
    await t.show(f"{before}Each node is a follower (circle), a candidate (diamond) or the leader (hexagon with a "
                 "crown). A follower's outer ring is its election timer: the leader's heartbeats refill it. "
                 f"{leader} leads term {term}. Next: we press Force election on {follower}. While a leader is alive "
                 f"the others would refuse {follower} their votes (they heard a leader lately), so the button asks "
                 f"{leader} to hand over: it sends {follower} TimeoutNow (a diamond on the link), and {follower} "
                 "asks for votes at once, in a new, higher term.")
    t.doing(f"forcing an election on {follower}…")
    await t.controls.force_election(follower)
    new_leader, new_term = await t.agreed_leader(above_term=term)
    await t.show(f"{new_leader} won term {new_term}: a majority voted for it. Each node votes at most once per term, "
                 "so there can never be two leaders in one term (the safety panel checks this live). An election "
                 "nobody asked for, started by a follower's timer running out, is the next tour's.")


async def failover(t: Tour) -> None:
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    how_next = "crash it (kill -9)" if t.controls.supervisor is not None else "cut it off from its peers"
    await t.show(f"{before}{leader} leads term {term}. Next: we {how_next}.")
    others = {v for v in t.voters() if v != leader}
    t.doing(f"making {leader} fail…")
    how = await t.crash_or_cut(leader)
    t.doing("the followers stop hearing heartbeats: watch their election timers run out…")
    new_leader, new_term = await t.agreed_leader(others, above_term=term)
    await t.show(f"{leader} was {how}. {new_leader} timed out first, asked for votes and won term {new_term}. Two of "
                 f"three nodes are a majority, so the cluster goes on by itself. Next: {leader} comes back.")
    t.doing(f"bringing {leader} back…")
    how_back = await t.bring_back(leader)
    await t.wait(f"{leader} to follow again", lambda: t.role(leader)[0] == "follower" and t.leader())
    await t.show(f"{how_back}; {leader} heard the leader of term {new_term} and follows it, catching up on what it "
                 "missed.")


async def partition(t: Tour) -> None:
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    await t.show(f"{before}{leader} leads term {term}. Next: we cut it off from its peers, in both directions; its "
                 "messages burst where the network drops them.")
    others = {v for v in t.voters() if v != leader}
    t.doing(f"cutting {leader} off…")
    await t.controls.isolate(leader)
    new_leader, new_term = await t.agreed_leader(others, above_term=term)
    await t.wait(f"{leader} to step down", lambda: t.role(leader)[0] != "leader")
    await t.show(f"The majority side elected {new_leader} in term {new_term}. {leader}, alone, cannot commit "
                 "anything: without a majority no write is acknowledged (consistency over availability). It noticed "
                 "it lost contact with a majority and stepped down (check-quorum). Next: heal the network.")
    alone_term = t.role(leader)[1]
    t.doing("healing the network…")
    await t.controls.heal()
    await t.wait("the whole cluster to agree on one leader", lambda: t.leader())
    # What pre-vote did is seen in the term the isolated node kept, whatever it did after the heal
    # (it may hear the leader before its next timeout and never ask at all).
    kept = (f"its term stayed {alone_term} while it was alone, below the majority's {new_term}: its timeouts "
            "only asked for pre-votes, which change no term, and nobody could answer them"
            if alone_term < new_term else f"its term is {alone_term}")
    await t.show(f"Healed. {leader} comes back without disrupting the leader: {kept}. So it cannot depose "
                 f"{new_leader} with a higher term; it follows and catches up.")


async def consistency(t: Tour) -> None:
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    await t.show(f"{before}{leader} leads term {term}. Next: PUT {KEY} = 1000 through it.")
    t.doing(f"writing {KEY} = 1000…")
    first = await _put(t, leader, 1000)
    how_next = "crash" if t.controls.supervisor is not None else "cut off"
    await t.show(f"PUT {KEY} = 1000 through {leader}: acknowledged at revision {first}, only once a majority had it "
                 f"on disk. Next: we {how_next} {leader}.")
    others = {v for v in t.voters() if v != leader}
    t.doing(f"making {leader} fail…")
    how = await t.crash_or_cut(leader)
    new_leader, _ = await t.agreed_leader(others, above_term=term)
    await t.show(f"{leader} was {how}; {new_leader} took over. Next: PUT {KEY} = 1500 through {new_leader}.")
    t.doing(f"writing {KEY} = 1500…")
    second = await _put(t, new_leader, 1500)
    written_at = int((await t.ask_state(new_leader))["lastApplied"])  # a write is answered once applied
    values = {node: await _get(t, node) for node in sorted(others)}
    await t.show(f"PUT {KEY} = 1500 through {new_leader}: revision {second}. A linearizable GET through every node "
                 "still in the majority: " + ", ".join(f"{n} → {v}" for n, v in values.items())
                 + f". Next: {leader} comes back.")
    t.doing(f"bringing {leader} back…")
    await t.bring_back(leader)
    await t.wait(f"{leader} to apply the log up to index {written_at}",
                 lambda: int(t.status(leader).get("lastApplied", 0)) >= written_at and t.states().get(leader), 20.0)
    own = await _get(t, leader, stale=True)
    await t.show(f"{leader} is back and has applied the log up to index {written_at}: its own copy says {KEY} = {own} "
                 "(a stale read, from its store alone). The acknowledged write was never lost.")


async def _put(t: Tour, node: str, value: int) -> int:
    r = await t.controls.kv({"op": "put", "key": KEY, "value": value, "node": node})
    if r["status"] != 200:
        raise TourFailed(f"PUT {KEY} through {node} answered {r['status']}: {r['body']}")
    return int(r["revision"])


async def _get(t: Tour, node: str, stale: bool = False) -> object:
    r = await t.controls.kv({"op": "get", "key": KEY, "node": node, "stale": stale})
    if r["status"] != 200 or not isinstance(r["body"], dict):
        return f"HTTP {r['status']}"
    return r["body"].get("value")
