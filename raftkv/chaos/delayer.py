"""Added network latency without `tc netem`: hold packets in an NFQUEUE, release them later.

Theory of operation
-------------------
The kernel here has no sch_netem (docs/NETNS.md), but iptables' NFQUEUE target works: a rule in a
node namespace's OUTPUT chain hands each matching packet to a user-space queue, and the packet
waits in the kernel until a program says ACCEPT (or DROP) for its id. This module is that
program, speaking nfnetlink_queue directly over a netlink socket (no C library needed):

    bind queue N, then set copy mode META (NFQNL_MSG_CONFIG; we only need the packet id)
    for each NFQNL_MSG_PACKET: schedule ACCEPT at arrival + delay (+ uniform jitter)

Both config requests ask for an acknowledgement (NLM_F_ACK) and the kernel's NLMSG_ERROR answer
is checked: a bind can fail (the queue is held by another process: EPERM; no CAP_NET_ADMIN), and
without the check the caller would believe latency is in place while `--queue-bypass` lets every
packet through undelayed. "ready" is printed only once both requests succeeded; otherwise the
reason goes to stderr and the exit status is 1.

Verdicts may be given in any order, so jitter can reorder packets, as on a real network. The
rule is installed with `--queue-bypass`, so if this process dies the packets flow undelayed
rather than being dropped. It runs inside the node's namespace (netlink is per namespace):

    ip netns exec rkv<tag>-n2 python raftkv/chaos/delayer.py --queue 0 --delay-ms 80 --jitter-ms 40

`raftkv.chaos.netns.Lab.add_latency` starts it, waits for "ready", and only then adds the
iptables rules (node-to-node traffic only). This file imports nothing of raftkv, so it starts in
milliseconds when run by path.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator

__all__ = ["main", "run_delayer"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
ACK_TIMEOUT_S = 5.0  # the kernel answers config requests at once; bounded anyway
MAX_HELD_PACKETS = 10_000  # bounded: beyond this, packets are released at once


def _nlmsg(msg_type: int, queue: int, attrs: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)  # nfgenmsg: family, version, res_id (big endian)
    body = nfgen + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0) + body


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


def _ack_error(data: bytes, seq: int) -> int | None:
    """The errno (0 = success) of the NLMSG_ERROR answering request `seq` in one netlink read,
    or None when the read holds no answer to it."""
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type, _flags, msg_seq = struct.unpack_from("=IHHI", data, offset)
        if length < 16:
            break
        if msg_type == NLMSG_ERROR and msg_seq == seq and length >= 20:
            return -struct.unpack_from("=i", data, offset + 16)[0]  # struct nlmsgerr: int error (<= 0)
        offset += (length + 3) & ~3
    return None


def _configure(sock: socket.socket, queue: int, seqs: Iterator[int]) -> None:
    """Bind `queue`, then set copy mode META; raise OSError unless the kernel acknowledged both."""
    bind = _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
    params = _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META) + b"\0\0\0")
    _request(sock, queue, bind, next(seqs),
             f"binding NFQUEUE {queue} (another process may hold it, or CAP_NET_ADMIN is missing)")
    _request(sock, queue, params, next(seqs), f"setting the copy mode of NFQUEUE {queue}")


def _request(sock: socket.socket, queue: int, attrs: bytes, seq: int, what: str) -> None:
    """Send one config request with NLM_F_ACK and wait for the kernel's answer to it."""
    deadline = time.monotonic() + ACK_TIMEOUT_S
    sock.send(_nlmsg(NFQNL_MSG_CONFIG, queue, attrs, seq, NLM_F_REQUEST | NLM_F_ACK))
    while True:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise TimeoutError(f"{what}: no answer from the kernel within {ACK_TIMEOUT_S:.0f} s")
        error = _ack_error(sock.recv(65536), seq)
        if error == 0:
            return
        if error is not None:
            raise OSError(error, f"{what}: {os.strerror(error)}")


def run_delayer(queue: int, delay_ms: float, jitter_ms: float, seed: int | None = None) -> None:
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    seqs = itertools.count(1)
    _configure(sock, queue, seqs)
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
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            sock.send(_nlmsg(NFQNL_MSG_VERDICT, queue, verdict, next(seqs)))


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
    except OSError as e:  # Lab.add_latency puts this line in the error it raises
        print(f"delayer (pid {os.getpid()}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
