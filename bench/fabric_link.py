"""A user-space delaying link for kernels without netem: TAP devices joined by a forwarder.

    python -m bench.fabric_link --delay-us 50 n0:s0 n1:s1

For each pair A:B it creates the TAP devices A and B (in the caller's network namespace;
bench.fabric then moves A into a node namespace as eth0 and attaches B to the bridge) and
copies every frame read from one to the other after holding it for the delay. The TAPs use
virtio-net headers with TSO/checksum offload (TUNSETOFFLOAD), so a frame can carry up to
64 KiB and a 1 Gbit/s stream is only a few thousand frames per second. Rate shaping stays in
the kernel (tc tbf on the TAPs). One frame order per direction (FIFO), so TCP sees no
reordering. It prints "ready" once every device exists and runs until SIGTERM.
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

from bench.fabric import MAX_DELAY_US
from cost_models.cli_args import Parser

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
MAX_FRAME = 65536 + 64  # a TSO frame plus the virtio-net header
IFNAMSIZ = 16  # a device name and its terminating NUL
SPIN_S = 100e-6  # longest sleep while frames wait, so arrivals are read promptly


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI |
                                           IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    return fd


def forward(pairs: list[tuple[int, int]], delay_s: float, stop) -> None:
    """Copy frames a->b and b->a for every pair, each held `delay_s`, until stop()."""
    peer = {}
    for a, b in pairs:
        peer[a], peer[b] = b, a
    queues: dict[int, collections.deque] = {fd: collections.deque() for fd in peer}
    overshoot_s = sleep_overshoot_s()
    poller = select.epoll()
    for fd in peer:
        poller.register(fd, select.EPOLLIN)
    while not stop():
        due = [q[0][0] for q in queues.values() if q]
        wait = max(min(due) - time.monotonic(), 0.0) if due else 0.2
        # epoll waits in whole milliseconds: wait in epoll only for what is past the next
        # millisecond, then sleep the rest (hrtimer, tens of microseconds accurate).
        for fd, _ in poller.poll(wait - 1e-3 if wait > 2e-3 else 0):
            _drain(fd, queues[peer[fd]], time.monotonic() + delay_s)
        if due:
            _wait_until(min(due), overshoot_s)
        _release(queues, time.monotonic())


def sleep_overshoot_s() -> float:
    """How late time.sleep wakes up here (median of a few short sleeps)."""
    late = []
    for _ in range(21):
        start = time.monotonic()
        time.sleep(SPIN_S / 2)
        late.append(time.monotonic() - start - SPIN_S / 2)
    return sorted(late)[10]


def _wait_until(deadline: float, overshoot_s: float) -> None:
    """Sleep at most SPIN_S, waking `overshoot_s` early, then spin the last stretch."""
    left = deadline - time.monotonic()
    if left > overshoot_s:
        time.sleep(min(left - overshoot_s, SPIN_S))
    while SPIN_S > deadline - time.monotonic() > 0:
        pass


def _drain(fd: int, queue: collections.deque, release_at: float) -> None:
    while True:
        try:
            queue.append((release_at, os.read(fd, MAX_FRAME)))
        except BlockingIOError:
            return


def _release(queues: dict[int, collections.deque], now: float) -> None:
    for fd, queue in queues.items():
        while queue and queue[0][0] <= now:
            _, frame = queue.popleft()
            try:
                os.write(fd, frame)
            except (BlockingIOError, OSError):
                pass  # the device is down or full: drop, as a real link would


def _realtime() -> None:
    """Real-time priority (SCHED_FIFO) where allowed, so frames leave on time even when the
    ranks keep every core busy; the forwarder sleeps between frames and spins at most SPIN_S."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.fabric_link", description=__doc__.split("\n\n")[0])
    p.add_argument("--delay-us", type=float, required=True, help="hold per frame, per hop")
    p.add_argument("pairs", nargs="+", help="A:B names of TAP devices to join")
    args = p.parse_args(argv)
    if not 0 <= args.delay_us <= MAX_DELAY_US:
        p.error(f"--delay-us takes microseconds 0..{MAX_DELAY_US:.0f}")
    names = [name for pair in args.pairs for name in pair.split(":")]
    if any(pair.count(":") != 1 for pair in args.pairs) or not all(
            0 < len(name) < IFNAMSIZ for name in names) or len(set(names)) < len(names):
        p.error(f"pairs are A:B, distinct device names of 1..{IFNAMSIZ - 1} characters")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    fds = []
    for pair in args.pairs:
        a, b = pair.split(":")
        fds.append((open_tap(a), open_tap(b)))
    _realtime()
    print("ready", flush=True)
    forward(fds, args.delay_us * 1e-6, lambda: bool(stopping))
    return 0


if __name__ == "__main__":
    sys.exit(main())
