"""Deliberately broken node drivers, each breaking one of the two promises a Raft store lives by,
to prove tests/test_driver_sim.py bites.

Each is a DiskPump that overrides one seam, and a function that installs it in place of the real
pump for the length of a test (through pytest's monkeypatch), as tests/buggy_storage.py patches the
storage. Nothing here is importable from the package.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from raftkv.node import group
from raftkv.node.persist import DiskPump


class SendsBeforeFsync(DiskPump):
    """Sends each Ready's held messages (votes, append acknowledgements) as soon as it takes the
    batch, and only then writes and fsyncs it: the labels the core put on them are ignored."""

    async def _write_batch(self) -> None:
        for rd in self._unsynced:
            if rd.messages:
                self._send(rd.messages)
                rd.messages = []
        await super()._write_batch()


class NeverFsyncs(DiskPump):
    """Writes each batch and sends its messages in the right order, but never fsyncs: what the
    votes and acknowledgements vouch for sits only in memory (or the page cache)."""

    def _sync_now(self) -> bool:
        return False


def sends_before_fsync(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(group, "DiskPump", SendsBeforeFsync)


def never_fsyncs(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(group, "DiskPump", NeverFsyncs)


BUGS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "sends-before-fsync": sends_before_fsync,
    "never-fsyncs": never_fsyncs,
}
