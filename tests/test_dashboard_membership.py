"""The dashboard's membership changes go one at a time (raftkv/dashboard/membership.py): a change
asked while another ends waits for it, since the page can show a change done a moment before its
request has its answer; one that would wait longer is a 409 and changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftkv.dashboard import membership
from raftkv.dashboard.controls import ControlError


async def test_a_change_asked_while_another_ends_waits_for_it_and_one_that_would_wait_long_is_409(
        monkeypatch: pytest.MonkeyPatch) -> None:
    unused: Any = None  # _one_change needs neither the hub, the controls nor the lab
    changes = membership.Membership(unused, unused, unused)
    done: list[str] = []

    async def change(name: str, takes_s: float) -> None:
        async with changes._one_change():
            done.append(f"{name} starts")
            await asyncio.sleep(takes_s)
            done.append(f"{name} ends")

    add = asyncio.create_task(change("add", 0.2))
    await asyncio.sleep(0.01)
    await change("remove", 0)
    await add
    assert done == ["add starts", "add ends", "remove starts", "remove ends"]

    monkeypatch.setattr(membership, "CHANGE_WAIT_S", 0.05)
    done.clear()
    add = asyncio.create_task(change("add", 0.5))
    await asyncio.sleep(0.01)
    with pytest.raises(ControlError, match="another membership change is in progress") as refused:
        await change("remove", 0)
    assert refused.value.status == 409
    await add
    assert done == ["add starts", "add ends"]
    await change("remove", 0)  # the lock was not left taken by the refused one
    assert done[-1] == "remove ends"
