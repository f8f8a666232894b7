"""Time of one collective on a tiered fabric: the one formula benchmarks are fitted to.

    time_s = steps(collective, n) * latency_s + size_bytes * bus_factor(n) / busbw

(the alpha-beta model in nccl-tests' busbw convention: doc/PERFORMANCE.md defines busbw so
that it is independent of n for ring algorithms; Thakur, Rabenseifner & Gropp 2005 give the
step counts). All arguments may be numpy arrays; they broadcast.

Where a group lands on the topology matters. A group of `group_size` ranks with
`ranks_per_node` of them on each node either stays inside one node (tier 0, NVLink) or spans
nodes. A spanning group moves its bytes through the network tier that holds all its nodes;
the node's network bandwidth (gpus_per_node x the tier's per-GPU bandwidth) is shared by the
groups running on that node at the same time (`groups_per_node`, by default every GPU of the
node is busy: gpus_per_node / ranks_per_node groups), and divided by the tier's
oversubscription. Inside the node the group is capped by the NVLink bus bandwidth.

The algorithms are NCCL's (ring, tree, pipelined broadcast), which is what planning needs.
Benchmarks measured through gloo or MPI are fitted with that library's own algorithms where
they move different bytes (`library="gloo"`, `"mpi"`), so the fitted tiers describe the
fabric, not the library: gloo's broadcast is a binomial tree of whole buffers
(`_gloo_broadcast_s`), MPICH's a scatter and a ring all-gather (`_mpich_broadcast_s`); the
collectives gloo and MPICH run with another's traffic are in RUNS_AS.
"""

from __future__ import annotations

import numpy as np

from bench.records import Collective
from cost_models.specs import ClusterSpec

LIBRARIES = ("nccl", "gloo", "mpi")  # whose algorithms move the bytes; "mpi": the ones the
# suite pins in MPICH (bench.dist.MPICH_ALGORITHMS). Ring all-reduce and all-gather and the
# pairwise all-to-all move NCCL's bytes; RUNS_AS lists the collectives that do not.

# Collectives a library runs with another collective's traffic, by library:
# - gloo: torch's ProcessGroupGloo runs reduce_scatter_tensor as allreduce(input).chunk(n)[rank]
#   (pytorch/pytorch PR 118911: "still 2x communication than a real reduce-scatter"); measured
#   on the emulated fabric it costs 1.05x the all-reduce of the same buffer
#   (results/bench/quiet_host/fabric_2x2_1gbit.jsonl). (gloo's broadcast: _gloo_broadcast_s.)
# - mpi: MPICH's pairwise-exchange reduce-scatter (Thakur, Rabenseifner & Gropp 2005, Sec. 4.3:
#   the long-message algorithm) sends each rank's block for every other rank straight to it,
#   the all-to-all's traffic ((n - k)/n of the buffer leaving each rank's node), not a ring's.
#   (MPICH's long-message broadcast: _mpich_broadcast_s.)
RUNS_AS = {
    "nccl": {},
    "gloo": {Collective.REDUCE_SCATTER: Collective.ALL_REDUCE},
    "mpi": {Collective.REDUCE_SCATTER: Collective.ALL_TO_ALL},
}

_RING_STEP_FACTOR = {  # ring steps per rank, as multiples of (n - 1)
    Collective.ALL_REDUCE: 2.0,
    Collective.ALL_GATHER: 1.0,
    Collective.REDUCE_SCATTER: 1.0,
    Collective.ALL_TO_ALL: 1.0,
    Collective.BROADCAST: 1.0,
}


def bus_factor(collective: Collective, n: np.ndarray) -> np.ndarray:
    """nccl-tests doc/PERFORMANCE.md bus factor, vectorized (send/recv and broadcast: 1)."""
    n = np.asarray(n, dtype=float)
    if collective == Collective.ALL_REDUCE:
        return 2.0 * (n - 1.0) / n
    if collective in (Collective.SEND_RECV, Collective.BROADCAST):
        return np.ones_like(n)
    return (n - 1.0) / n


def outer_tier_index(cluster: ClusterSpec, nodes: np.ndarray) -> np.ndarray:
    """Index of the innermost tier whose domain holds `nodes` whole nodes (0: one node)."""
    nodes = np.asarray(nodes, dtype=float)
    index = np.zeros(nodes.shape, dtype=int)
    gpn = cluster.gpus_per_node
    for i in range(len(cluster.tiers) - 1, 0, -1):
        domain = cluster.tiers[i - 1].domain_gpus
        index = np.where((nodes > 1) & (nodes * gpn > domain) if i > 1 else nodes > 1,
                         np.maximum(index, i), index)
    return index


def _tier_arrays(cluster: ClusterSpec, collective: Collective, tier: np.ndarray):
    links = [t.link(collective.value) for t in cluster.tiers]
    latency = np.array([lat for lat, _ in links])[tier]
    bandwidth = np.array([bw for _, bw in links])[tier]
    oversub = np.array([t.oversubscription for t in cluster.tiers])[tier]
    return latency, bandwidth, oversub


def collective_time_s(collective: Collective, size_bytes, group_size, ranks_per_node,
                      cluster: ClusterSpec, groups_per_node=None,
                      library: str = "nccl") -> np.ndarray:
    """Seconds for one `collective` of `size_bytes` (nccl-tests size) over `group_size` ranks.

    `ranks_per_node`: members of the group on each node it touches (<= gpus_per_node).
    `groups_per_node`: groups sharing a node's network at once (default: all GPUs busy).
    `library`: whose algorithms move the bytes (LIBRARIES; planning uses NCCL's).
    A group of one rank costs nothing.
    """
    if library not in LIBRARIES:
        raise ValueError(f"library {library!r} is not one of {', '.join(LIBRARIES)}")
    gloo = library == "gloo"
    n = np.maximum(np.asarray(group_size, dtype=float), 1.0)
    k = np.clip(np.asarray(ranks_per_node, dtype=float), 1.0, n)
    size = np.asarray(size_bytes, dtype=float)
    gpn = float(cluster.gpus_per_node)
    nodes = np.ceil(n / k)
    tier = outer_tier_index(cluster, nodes)
    lat_out, bw_out, oversub = _tier_arrays(cluster, collective, tier)
    lat_in, bw_in = cluster.tiers[0].link(collective.value)
    if groups_per_node is None:
        groups_per_node = gpn / k
    node_net_bw = gpn * bw_out / (np.asarray(groups_per_node, dtype=float) * oversub)
    spans = nodes > 1
    if collective == Collective.BROADCAST and library != "nccl":
        own = _gloo_broadcast_s if gloo else _mpich_broadcast_s
        bw_time, steps = own(size, n, k, spans, bw_in, node_net_bw, lat_in, lat_out)
        return np.where(n > 1, steps + bw_time, 0.0)
    # the bytes moved follow the algorithm that runs; the link stays the call's
    algorithm = RUNS_AS[library].get(collective, collective)
    if algorithm == Collective.ALL_TO_ALL:
        # (n-k)/n of each rank's bytes leave the node, (k-1)/n stay on NVLink.
        net_time = size * (n - k) / n / (node_net_bw / k)
        nvl_time = size * (k - 1) / n / bw_in
        bw_time = np.where(spans, np.maximum(net_time, nvl_time), size * (n - 1) / n / bw_in)
    elif algorithm in (Collective.SEND_RECV, Collective.BROADCAST):
        bw_time = size / np.where(spans, np.minimum(bw_in, node_net_bw), bw_in)
    else:
        busbw = np.where(spans, np.minimum(bw_in, node_net_bw), bw_in)
        bw_time = size * bus_factor(algorithm, n) / busbw
    steps = latency_steps(algorithm, n, k, tree=library == "nccl")
    return np.where(n > 1, steps * np.where(spans, lat_out, lat_in) + bw_time, 0.0)


def _gloo_broadcast_s(size, n, k, spans, bw_in, node_net_bw, lat_in, lat_out):
    """(bandwidth seconds, latency seconds) of gloo's binomial-tree broadcast
    (facebookincubator/gloo, gloo/broadcast.cc): ceil(log2 n) rounds; in round r every rank
    that holds the buffer sends all of it to the rank 2^r further on. With the group's ranks
    k to a node in rank order, the first log2(k) rounds stay inside nodes and each later round
    has all k ranks of a node sending a whole buffer across the network at once."""
    rounds = np.ceil(np.log2(n))
    inside = np.where(spans, np.minimum(np.ceil(np.log2(k)), rounds), rounds)
    across = rounds - inside
    per_flow_bw = np.minimum(bw_in, node_net_bw / k)
    bw_time = inside * size / bw_in + across * size / per_flow_bw
    return bw_time, inside * lat_in + across * lat_out


def _mpich_broadcast_s(size, n, k, spans, bw_in, node_net_bw, lat_in, lat_out):
    """(bandwidth seconds, latency seconds) of MPICH's long-message broadcast (Thakur,
    Rabenseifner & Gropp 2005, Sec. 4.1, after Van de Geijn): a binomial scatter, then a
    ring all-gather of the n blocks. The scatter's critical path is the root's: it sends
    half the buffer, then a quarter, ...; with the group's ranks k to a node in rank order
    the first log2(nodes) of those sends cross the network ((n - k)/n of the buffer, one flow
    per node at a time) and the rest stay inside the node ((k - 1)/n). The all-gather is the
    ring's (n - 1)/n. On 2 nodes x 2 ranks the busiest link carries 1.25 buffers, where a
    ring all-reduce's bytes would be 1.5; two strided pairs whose roots share a node, 2."""
    flow_bw = np.where(spans, np.minimum(bw_in, node_net_bw), bw_in)
    net_part = np.where(spans, (n - k) / n, (n - 1) / n)
    nvl_part = np.where(spans, (k - 1) / n, 0.0)
    scatter = size * (net_part / flow_bw + nvl_part / bw_in)
    ring_all_gather = size * bus_factor(Collective.ALL_GATHER, n) / flow_bw
    steps = np.ceil(np.log2(n)) + latency_steps(Collective.ALL_GATHER, n, k)
    return scatter + ring_all_gather, steps * np.where(spans, lat_out, lat_in)


def latency_steps(collective: Collective, n: np.ndarray, k: np.ndarray,
                  tree: bool = True) -> np.ndarray:
    """Latency-bound steps: ring (n-1) multiples, all-reduce min(ring, double binary tree)
    (`tree=False`: ring only, as gloo's ring all-reduce, gloo/allreduce.cc).

    Tree (NCCL 2.4, "Massively Scale Your Deep Learning Training with NCCL 2.4"): up and
    down a binary tree across nodes plus the chain inside a node, 2*((k-1) + log2(nodes)).
    """
    if collective == Collective.SEND_RECV:
        return np.ones_like(np.asarray(n, dtype=float))
    ring = _RING_STEP_FACTOR[collective] * (n - 1.0)
    if collective != Collective.ALL_REDUCE or not tree:
        return ring
    tree_steps = 2.0 * ((k - 1.0) + np.log2(np.maximum(n / k, 1.0)))
    return np.minimum(ring, tree_steps)
