"""Replacing a dead machine while writes flow: crash a voter for good, remove it, add a fresh node as
a learner, let it catch up, promote it. Needs the supervisor (it starts a new node process)."""

from __future__ import annotations

from raftkv.node.members import PROMOTE_MAX_LAG_ENTRIES

from ..load import MAX_SECONDS
from ..words import unacknowledged_words
from .runner import Tour

REPLACE_WRITERS = 4  # the load that runs through the whole demo


async def replace(t: Tour) -> None:
    t.need_supervisor("starts a new node process")
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    started_load = not t.load.running
    if started_load:
        t.load.start(REPLACE_WRITERS, MAX_SECONDS)
    victim = t.followers(leader)[0]
    await t.show(f"{before}{leader} leads term {term}. Writes flow through the whole demo: {REPLACE_WRITERS} writers "
                 f"keep writing through every member (the load panel counts them). Next: {victim}'s machine dies "
                 "for good.")
    t.doing(f"crashing {victim}…")
    voters = t.voters()
    await t.controls.process(victim, "crash")
    await t.show(f"{victim} crashed (kill -9; it will not come back). {len(voters) - 1} of {len(voters)} voters are "
                 "left: still a majority, so writes go on, but one more failure would stop the cluster. Next: remove "
                 f"{victim} from the configuration.")
    t.doing(f"removing {victim}…")
    await t.membership.remove(victim)
    await t.wait(f"the leader's configuration without {victim}", lambda: victim not in t.voters(True))
    await t.show(f"{victim} is removed: the voters are now {', '.join(t.voters())}, and a commit needs a majority of "
                 f"those. {victim}'s data directory stays on disk, unused. Next: a fresh node joins.")
    t.doing("starting a new node…")
    new = (await t.membership.add(promote=False))["node"]
    t.doing(f"{new} joined as a learner; waiting for it to catch up…")
    match, last = await t.wait(f"{new} to catch up", lambda: _caught_up(t, new), 30.0)
    await t.show(f"{new} joined as a learner (the pentagon): it received the log (or a snapshot first, had the log "
                 "been compacted) without a vote, so it could not hold up a commit while it caught up. It holds "
                 f"entry {match} of the leader's {last}. Next: promote it to voter.")
    t.doing(f"promoting {new}…")
    await t.membership.promote(new)
    await t.wait(f"the leader's configuration with {new} a voter", lambda: new in t.voters())
    if not started_load:
        await t.show(f"{new} is a voter now: {len(t.voters())} voters again, so the cluster can lose a machine once "
                     "more.")
        return
    await t.show(f"{new} is a voter now: {len(t.voters())} voters again, so the cluster can lose a machine once more. "
                 "Next: stop the writes and count them.")
    done = await t.load.stop()
    failed = (f"; not acknowledged: {unacknowledged_words(done['errors'])} (a write sent to a dead machine gets "
              "no answer)"
              if done["errors"] else "")
    await t.show(f"{done['ok']} writes were acknowledged while the machine was replaced{failed}.")


def _caught_up(t: Tour, node: str) -> tuple[int, int] | None:
    """(its match index, the leader's last index) once the leader sees `node` nearly caught up."""
    link = t.hub.links.get(node)
    leader = next((s for s in t.states().values() if s.get("state") == "leader"), None)
    peer = next((p for p in (leader or {}).get("peers") or () if link and p["id"] == link.raft_id), None)
    if peer is None or "lagEntries" not in peer or peer["lagEntries"] > PROMOTE_MAX_LAG_ENTRIES:
        return None
    return peer["matchIndex"], leader["logLength"]
