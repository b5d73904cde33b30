"""Added network latency without `tc netem`: hold packets in an NFQUEUE, release them later.

Theory of operation
-------------------
The kernel here has no sch_netem (NETNS.md), but iptables' NFQUEUE target works: a rule in a
node namespace's OUTPUT chain hands each matching packet to a user-space queue, and the packet
waits in the kernel until a program says ACCEPT (or DROP) for its id. This module is that
program, speaking nfnetlink_queue directly over a netlink socket (no C library needed):

    bind queue N (NFQNL_MSG_CONFIG, copy mode META: we only need the packet id)
    for each NFQNL_MSG_PACKET: schedule ACCEPT at arrival + delay (+ uniform jitter)

Verdicts may be given in any order, so jitter can reorder packets, as on a real network. The
rule is installed with `--queue-bypass`, so if this process dies the packets flow undelayed
rather than being dropped. It runs inside the node's namespace (netlink is per namespace):

    ip netns exec rkv<tag>-n2 python raftkv/chaos/delayer.py --queue 0 --delay-ms 80 --jitter-ms 40

`install_rules` / `remove_rules` add or remove the iptables rule for node-to-node traffic only
(clients keep an undelayed path, as with the nft cuts).
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time

__all__ = ["install_rules", "main", "remove_rules"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
MAX_HELD_PACKETS = 10_000  # bounded: beyond this, packets are released at once


def _nlmsg(msg_type: int, queue: int, attrs: bytes, seq: int) -> bytes:
    nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)  # nfgenmsg: family, version, res_id (big endian)
    body = nfgen + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, NLM_F_REQUEST, seq, 0) + body


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids of every NFQNL_MSG_PACKET in one netlink read."""
    ids = []
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = offset + 20  # netlink header (16) + nfgenmsg (4)
            while a + 4 <= offset + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def run_delayer(queue: int, delay_ms: float, jitter_ms: float, seed: int | None = None) -> None:
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    seq = 1
    cmd = _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
    params = _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META) + b"\0\0\0")
    sock.send(_nlmsg(NFQNL_MSG_CONFIG, queue, cmd + params, seq))
    print("ready", flush=True)  # Lab.add_latency waits for this before installing its rules
    held: list[tuple[float, int]] = []
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            data = sock.recv(65536)
            now = time.monotonic()
            for packet_id in _packet_ids(data):
                delay_s = max(0.0, (delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000)
                heapq.heappush(held, (now + (0 if len(held) >= MAX_HELD_PACKETS else delay_s), packet_id))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id = heapq.heappop(held)
            seq += 1
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            sock.send(_nlmsg(NFQNL_MSG_VERDICT, queue, verdict, seq))


def _rule(dst: str, queue: int) -> list[str]:
    return ["OUTPUT", "-d", dst, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]


def install_rules(namespace: str, destinations: list[str], queue: int = 0) -> None:
    for dst in destinations:
        subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-t", "mangle", "-A", *_rule(dst, queue)],
                       check=True, capture_output=True, timeout=10)


def remove_rules(namespace: str, destinations: list[str], queue: int = 0) -> None:
    for dst in destinations:
        subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-t", "mangle", "-D", *_rule(dst, queue)],
                       check=False, capture_output=True, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        run_delayer(args.queue, args.delay_ms, args.jitter_ms, args.seed)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"delayer (pid {os.getpid()}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
