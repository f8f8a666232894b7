import pytest

from bench.collectives import element_count, fill, plan_buffers
from bench.groups import LayoutError, make_groups, placement
from bench.records import Collective
from bench.sweep import parse_size, sizes


def test_sizes_follow_nccl_tests_b_e_f():
    assert sizes(8, 64, 2) == [8, 16, 32, 64]
    assert sizes(1 << 10, 1 << 20, 4) == [1024, 4096, 16384, 65536, 262144, 1048576]
    with pytest.raises(ValueError):
        sizes(64, 8, 2)
    assert parse_size("64M") == 64 << 20 and parse_size("8") == 8 and parse_size("1g") == 1 << 30
    with pytest.raises(ValueError):
        parse_size("lots")


def test_groups_consecutive_and_strided():
    assert make_groups(8, 4, "consecutive") == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert make_groups(8, 4, "strided") == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert make_groups(8, 8, "strided") == [tuple(range(8))]
    with pytest.raises(LayoutError, match="must divide"):
        make_groups(6, 4, "strided")


def test_placement_counts_nodes_and_sharing():
    nodes = ["a", "a", "b", "b"]
    strided = make_groups(4, 2, "strided")
    p = placement(strided, nodes)
    assert (p.ranks_per_node, p.nodes, p.groups_per_node) == (1, 2, 2)
    p = placement(make_groups(4, 2, "consecutive"), nodes)
    assert (p.ranks_per_node, p.nodes, p.groups_per_node) == (2, 1, 1)
    p = placement(strided[:1], nodes)  # one group running alone
    assert p.groups_per_node == 1


def test_expected_results_are_exact_small_integers():
    n, count = 4, 8
    for c in Collective:
        counts = element_count(c, count * 4, "float32", n)
        plans = [plan_buffers(c, counts, i, n) for i in range(n)]
        assert all(p.expect_chunks.max() < 256 for p in plans)  # exact in bfloat16
    # reduce-scatter: member i receives the sum over ranks of their chunk i
    rs = plan_buffers(Collective.REDUCE_SCATTER, 8, 1, 4)
    assert rs.expect_chunks[0] == sum(fill(r, 1) for r in range(4))


def test_launcher_detection_torchrun_srun_mpiexec():
    from bench.dist import detect_launch

    tr = detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                        "TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "h0", "MASTER_PORT": "1234"})
    assert (tr.launcher, tr.rank, tr.world_size, tr.local_rank, tr.master_addr,
            tr.master_port) == ("torchrun", 3, 8, 1, "h0", 1234)
    srun = detect_launch({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                          "SLURM_JOB_ID": "4242", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7"})
    assert (srun.launcher, srun.rank, srun.world_size, srun.local_rank) == ("srun", 5, 16, 1)
    assert srun.master_addr == "10.0.0.7" and srun.master_port == 20000 + 4242
    mpich = detect_launch({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "2",
                           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})  # mpiexec inside sbatch
    assert (mpich.launcher, mpich.rank, mpich.world_size) == ("mpiexec", 2, 4)
    ompi = detect_launch({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"})
    assert (ompi.launcher, ompi.rank) == ("mpiexec", 1)
    assert detect_launch({}).launcher == "single"


def test_cli_surface_is_pinned():
    """slurm/bench.sbatch and users call these flags; change them only on purpose."""
    from bench.__main__ import build_parser

    flags = {s for a in build_parser()._actions for s in a.option_strings}
    assert flags == {"-h", "--help", "-b", "--minbytes", "-e", "--maxbytes", "-f",
                     "--stepfactor", "-n", "--iters", "-w", "--warmup-iters", "-d", "--dtype",
                     "--backend", "-g", "--group-size", "--layout", "--one-group", "--p2p",
                     "-c", "--check", "-o", "--output", "--resume", "--timeout"}
