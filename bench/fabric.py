"""Emulated cluster fabric: N nodes as Linux network namespaces, R ranks each.

    python -m bench.fabric --nodes 2 --ranks-per-node 2 --rate 1gbit -- \\
        all_reduce -b 1K -e 16M -f 4 --backend gloo -o results/bench/fabric.jsonl

Layout: one switch namespace holding a bridge; each node namespace holds `eth0` (a veth whose
peer is a bridge port), address 10.77.0.<node+1>/24, no default route, so nothing it carries
can leave the namespaces. Ranks of one node talk over the node's own address (local delivery,
unshaped: the fast tier); ranks of different nodes cross the bridge, and every link is shaped
in both directions with tc tbf (the node's NIC, full duplex). Each rank runs in its node's
namespace with its own UTS namespace whose host name is the node's, so the benchmark groups
ranks into nodes by host name exactly as on a cluster.

Latency (--delay-us, one way between nodes): netem where the kernel has it (probed at start);
otherwise a user-space link (bench.fabric_link): each node's eth0 is a TAP device whose frames
a forwarder process in the switch namespace holds for half the delay on each of the two hops
(node -> bridge -> node). Rate shaping stays in the kernel (tbf) either way.

Backends: gloo (each rank started here, one per node namespace slot), or MPI with
`--backend mpi` among the benchmark arguments: one MPMD `mpiexec` whose every rank starts
inside its node's namespace. MPICH's fork launcher puts all ranks on this host, so MPICH
would join them by shared memory; MPIR_CVAR_NOLOCAL makes every pair talk through the
namespaces' network instead (ranks of one node over that node's own address, unshaped, as
gloo's do).

Teardown runs in `finally` and on SIGINT/SIGTERM: rank processes are killed and every
namespace deleted (their veths and bridge go with them). `--cleanup` removes namespaces left
by a run that was killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from cost_models.cli_args import Parser

PREFIX = "ptfab"
SUBNET = "10.77.0"
EXIT_USAGE = 2
MAX_NODES = 200  # one address each in SUBNET.0/24
MAX_RANKS_PER_NODE = 1024  # every rank is a process on this host
RATES_BITS_PER_S = (1e3, 1e12)  # tbf's queue limit (8 bursts of 1 ms) must fit in 32 bits
MAX_DELAY_US = 1e6  # a second each way: beyond any fabric, and every message waits for it


class FabricError(RuntimeError):
    """The fabric cannot be built or a command inside it failed; the message says which."""


def parse_rate(text: str) -> float | None:
    """'1gbit', '500mbit', '2.5gbit' -> bits per second; 'none' -> None (unshaped)."""
    if text.lower() == "none":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg])bit", text.lower())
    if not match:
        raise ValueError(f"--rate {text!r}: use e.g. 1gbit, 500mbit or none")
    return float(match.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise FabricError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def netem_available() -> bool:
    """Probe: can tc attach netem to a veth in a scratch namespace?"""
    ns = f"{PREFIX}probe{os.getpid()}"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        return sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "p0", "root",
                  "netem", "delay", "10us", check=False).returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FabricSpec:
    nodes: int
    ranks_per_node: int
    rate_bits_per_s: float | None
    delay_us: float | None  # one-way, node to node
    delay_method: str = "none"  # "netem", "user-space link" or "none"

    def describe(self) -> dict:
        link = "TAP devices joined by bench.fabric_link" if self.user_link else "veth pairs"
        return {"nodes": self.nodes, "ranks_per_node": self.ranks_per_node,
                "rate_bits_per_s": self.rate_bits_per_s, "delay_us": self.delay_us,
                "delay_method": self.delay_method,
                "link": f"{link} to one bridge, tc tbf on both directions of each link"}

    @property
    def user_link(self) -> bool:
        return self.delay_method == "user-space link"


class Fabric:
    """Context manager: builds the namespaces on enter, removes everything on exit."""

    def __init__(self, spec: FabricSpec) -> None:
        self.spec = spec
        self.tag = f"{PREFIX}{os.getpid() % 100000}"
        self.switch = f"{self.tag}sw"
        self.namespaces: list[str] = []
        self.forwarder: subprocess.Popen | None = None

    def node_ns(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def __enter__(self) -> Fabric:
        try:
            self._add_ns(self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            if self.spec.user_link:
                self._start_forwarder()
            for i in range(self.spec.nodes):
                self._add_node(i)
        except BaseException:
            self.teardown()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _add_node(self, i: int) -> None:
        ns, port = self.node_ns(i), f"port{i}"
        self._add_ns(ns)
        if self.spec.user_link:  # the forwarder made tap<i> and port<i> in the switch
            sh("ip", "-n", self.switch, "link", "set", f"tap{i}", "netns", ns)
            sh("ip", "-n", ns, "link", "set", f"tap{i}", "name", "eth0")
        else:
            sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
               "eth0", "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        # Datacenter transports (RDMA, NCCL's long-lived sockets) do not restart slow start
        # after each idle gap between collectives; without this TCP would, and a delayed
        # link would look slower than its rate for every message.
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_slow_start_after_idle=0")
        self._shape(ns, "eth0")
        self._shape(self.switch, port)

    def _start_forwarder(self) -> None:
        """bench.fabric_link in the switch namespace: half the delay per hop (2 hops)."""
        pairs = [f"tap{i}:port{i}" for i in range(self.spec.nodes)]
        self.forwarder = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, sys.executable, "-m", "bench.fabric_link",
             "--delay-us", f"{self.spec.delay_us / 2:g}", *pairs],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.forwarder.stdout.readline()
        if line.strip() != "ready":
            raise FabricError("the user-space link (bench.fabric_link) did not start")

    def _shape(self, ns: str, dev: str) -> None:
        rate = self.spec.rate_bits_per_s
        delay = self.spec.delay_us if self.spec.delay_method == "netem" else None
        tc = ("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev)
        if delay:
            sh(*tc, "root", "handle", "1:", "netem", "delay", f"{delay / 2:g}us",
               "limit", "100000")
        if rate:
            # A small bucket (1 ms of traffic, still above a 64 KiB TSO frame at 1 Gbit/s):
            # a big one lets the first part of every message through at host speed, making
            # mid-size messages look faster than the link. A deep queue (limit) so bulk TCP
            # is paced, not dropped.
            burst = max(int(rate / 8 * 1e-3), 16 * 1024)
            parent = ("parent", "1:") if delay else ("root",)
            sh(*tc, *parent, "tbf", "rate", f"{int(rate)}bit", "burst", str(burst),
               "limit", str(8 * burst + 4 * 1024 * 1024))

    def rank_command(self, node: int, argv: list[str]) -> list[str]:
        """Run argv in node's namespace with the node's own host name."""
        return ["ip", "netns", "exec", self.node_ns(node), "unshare", "--uts", "sh", "-c",
                f'hostname node{node} && exec "$@"', "sh", *argv]

    def teardown(self) -> None:
        if self.forwarder is not None and self.forwarder.poll() is None:
            os.killpg(self.forwarder.pid, signal.SIGTERM)
            try:
                self.forwarder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.forwarder.pid, signal.SIGKILL)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    def __exit__(self, *exc) -> None:
        self.teardown()


_PONG = ("import socket;s=socket.create_server(('{addr}',29400));c=s.accept()[0];"
         "c.setsockopt(6,1,1)\nwhile (d:=c.recv(64)): c.sendall(d)")
_PING = ("import socket,time;c=socket.create_connection(('{addr}',29400),timeout=10);"
         "c.setsockopt(6,1,1);t=[]\nfor _ in range(60):\n s=time.perf_counter();"
         "c.sendall(b'x'*32);c.recv(64);t.append(time.perf_counter()-s)\n"
         "print(sorted(t)[30]*1e6)")


def measure_rtt_us(fabric: Fabric) -> float | None:
    """Median TCP round trip node 0 -> node 1 (60 x 32 B, TCP_NODELAY): the latency the
    emulation really adds, recorded with the results (None with a single node)."""
    if fabric.spec.nodes < 2:
        return None
    addr = fabric.address(1)
    pong = subprocess.Popen(["ip", "netns", "exec", fabric.node_ns(1), sys.executable, "-c",
                             _PONG.format(addr=addr)])
    try:
        for _ in range(50):
            ping = subprocess.run(["ip", "netns", "exec", fabric.node_ns(0), sys.executable,
                                   "-c", _PING.format(addr=addr)], capture_output=True,
                                  text=True, timeout=30)
            if ping.returncode == 0:
                return round(float(ping.stdout), 1)
            time.sleep(0.1)  # the server is not listening yet
        return None
    finally:
        pong.kill()
        pong.wait()


def cleanup_stale() -> list[str]:
    """Delete namespaces named like ours (left by a run killed with SIGKILL)."""
    names = [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines()
             if line.startswith(PREFIX)]
    for ns in names:
        sh("ip", "netns", "del", ns, check=False)
    return names


def prog_name() -> str:
    """How this command was started: the console script or `python -m bench.fabric`."""
    script = "partune-fabric"  # pyproject.toml's [project.scripts]
    return script if os.path.basename(sys.argv[0]) == script else "python -m bench.fabric"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name(), description="Run a benchmark on an emulated multi-node fabric")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--ranks-per-node", type=int, default=2)
    p.add_argument("--rate", default="1gbit", help="inter-node link rate (e.g. 1gbit, none)")
    p.add_argument("--delay-us", type=float, default=None,
                   help="added one-way latency between nodes in us (netem, or a "
                        "user-space link where the kernel has no netem)")
    p.add_argument("--user-link", action="store_true",
                   help="use the user-space delaying link even where netem exists")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument("--cleanup", action="store_true",
                   help="only delete namespaces left behind by a killed run")
    p.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="-- then `python -m bench` arguments (gloo backend, or --backend mpi)")
    return p


def checked_rate(p: Parser, args) -> float | None:
    """The link rate in bits/s (None: unshaped); every bad number among the flags is p.error's
    one line, before anything is probed or built."""
    if not (1 <= args.nodes <= MAX_NODES and 1 <= args.ranks_per_node <= MAX_RANKS_PER_NODE):
        p.error(f"--nodes takes 1..{MAX_NODES}, --ranks-per-node 1..{MAX_RANKS_PER_NODE}")
    try:
        rate = parse_rate(args.rate)
    except ValueError as exc:
        p.error(str(exc))
    low, high = RATES_BITS_PER_S
    if rate is not None and not low <= rate <= high:
        p.error(f"--rate {args.rate}: give 1kbit..1000gbit, or none for an unshaped link")
    if args.delay_us is not None and not 0 <= args.delay_us <= MAX_DELAY_US:
        p.error(f"--delay-us takes microseconds 0..{MAX_DELAY_US:.0f} (one way, between nodes)")
    if not 0 < args.timeout < math.inf:
        p.error("--timeout takes seconds > 0 for the whole run")
    return rate


def check_args(args, rate: float | None) -> FabricSpec:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        raise FabricError("needs root and iproute2 (ip, tc) to create network namespaces")
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if not bench_args:
        raise FabricError("give the benchmark arguments after --, e.g. -- all_reduce -b 1K")
    backend = backend_of(bench_args)
    if backend not in FABRIC_BACKENDS:
        raise FabricError(f"--backend {backend}: the emulated fabric runs "
                          f"{' or '.join(FABRIC_BACKENDS)} (NCCL needs GPUs)")
    if backend == "mpi" and shutil.which("mpiexec") is None:
        raise FabricError("--backend mpi needs mpiexec on PATH (pip install mpich, or your MPI)")
    method = "none"
    if args.delay_us:
        method = "netem" if netem_available() and not args.user_link else "user-space link"
        if method == "user-space link" and not os.path.exists("/dev/net/tun"):
            raise FabricError("--delay-us needs netem or /dev/net/tun; neither is available")
    args.bench_args = bench_args
    return FabricSpec(nodes=args.nodes, ranks_per_node=args.ranks_per_node,
                      rate_bits_per_s=rate, delay_us=args.delay_us, delay_method=method)


FABRIC_BACKENDS = ("gloo", "mpi")
# MPI ranks all start on this host: without NOLOCAL, MPICH would pair them by shared memory
# and no byte would cross the shaped links. UCX (UCX_TLS in every rank's environment) and
# libfabric over TCP on the node's eth0.
MPI_FABRIC_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_NET_DEVICES": "eth0", "FI_PROVIDER": "tcp"}


def backend_of(bench_args: list[str]) -> str:
    """The backend the benchmark arguments name, read by the benchmark's own parser (gloo
    when they name none)."""
    from bench.__main__ import build_parser

    known, _ = build_parser().parse_known_args(bench_args)
    return known.backend or "gloo"


def mpi_command(fabric: Fabric, spec: FabricSpec, bench_args: list[str]) -> list[str]:
    """One MPMD mpiexec: rank r runs `python -m bench ...` inside its node's namespace."""
    command = ["mpiexec"]
    for rank in range(spec.nodes * spec.ranks_per_node):
        node = rank // spec.ranks_per_node
        command += [":"] if rank else []
        command += ["-n", "1", *fabric.rank_command(node, [sys.executable, "-m", "bench",
                                                          *bench_args])]
    return command


def run_on_fabric(spec: FabricSpec, bench_args: list[str], timeout_s: float) -> tuple[int, str]:
    from bench.launch import rank_env, run_ranks

    world = spec.nodes * spec.ranks_per_node
    with Fabric(spec) as fabric:
        described = spec.describe() | {"measured_rtt_us": measure_rtt_us(fabric)}
        extra = {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0",
                 "UCX_TLS": "tcp,self", "PARTUNE_FABRIC": json.dumps(described)}
        if backend_of(bench_args) == "mpi":
            env = {**os.environ, **extra, **MPI_FABRIC_ENV}
            return run_ranks([mpi_command(fabric, spec, bench_args)], [env], timeout_s)
        commands, envs = [], []
        for rank in range(world):
            node, local = divmod(rank, spec.ranks_per_node)
            commands.append(fabric.rank_command(node, [sys.executable, "-m", "bench",
                                                       "--backend", "gloo", *bench_args]))
            envs.append(rank_env(rank, world, local, spec.ranks_per_node, fabric.address(0),
                                 29500, extra))
        return run_ranks(commands, envs, timeout_s)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    rate = checked_rate(p, args)
    try:
        if args.cleanup:
            print(f"removed: {' '.join(cleanup_stale()) or 'nothing'}")
            return 0
        spec = check_args(args, rate)
        code, reason = run_on_fabric(spec, args.bench_args, args.timeout)
    except FabricError as exc:
        code, reason = EXIT_USAGE, str(exc)
    except KeyboardInterrupt:
        code, reason = EXIT_USAGE, "interrupted; the fabric was torn down"
    if code:
        print(f"{p.prog}: error: {reason}", file=sys.stderr)
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
