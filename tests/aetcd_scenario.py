"""A scenario for tests/test_etcdctl.py, run in a process of its own: aetcd (an etcd client library
for Python) against one raftkv node's etcd endpoint, given as host:port."""

from __future__ import annotations

import asyncio
import sys

import aetcd


async def scenario(host: str, port: int) -> None:
    async with aetcd.Client(host=host, port=port) as client:
        await client.put(b"py/a", b"1")
        assert (await client.put(b"py/a", b"2", prev_kv=True)).prev_kv.value == b"1"
        assert (await client.get(b"py/a")).value == b"2"
        lease = await client.lease(60)
        await client.put(b"py/leased", b"x", lease=lease)
        assert [kv.key for kv in await client.get_prefix(b"py/")] == [b"py/a", b"py/leased"]
        await lease.revoke()
        assert await client.get(b"py/leased") is None
        ok, _ = await client.transaction(compare=[client.transactions.value(b"py/a") == b"2"],
                                         success=[client.transactions.put(b"py/b", b"3")], failure=[])
        assert ok and (await client.get(b"py/b")).value == b"3"
        assert (await client.delete_prefix(b"py/")).deleted == 2


if __name__ == "__main__":
    endpoint_host, _, endpoint_port = sys.argv[1].rpartition(":")
    asyncio.run(scenario(endpoint_host, int(endpoint_port)))
    print("scenario passed")
