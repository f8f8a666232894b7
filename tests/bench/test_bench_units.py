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


def _config(*argv: str):
    from bench.__main__ import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["all_reduce", *argv]))


@pytest.mark.parametrize("argv, words", [
    (["-f", "nan"], "finite step factor -f (nan) > 1"),
    (["-f", "inf"], "finite step factor -f (inf) > 1"),
    (["-f", "1"], "step factor -f (1.0) > 1"),
    (["-f", "1.0000001"], "use a larger -f"),
    (["--timeout", "nan"], "--timeout nan must be a finite number of seconds > 0"),
    (["--timeout", "inf"], "--timeout inf must be a finite"),
    (["--timeout", "0"], "--timeout 0 must be"),
    (["-d", ""], "--dtype is empty"),
    (["-d", ","], "--dtype is empty"),
    (["--layout", ""], "--layout is empty"),
    (["-g", ""], "give a comma list of group sizes >= 0"),
    (["-g", "-2"], "give a comma list of group sizes >= 0"),
])
def test_meaningless_numbers_and_empty_lists_are_refused(argv, words):
    from bench.__main__ import UsageError

    with pytest.raises(UsageError) as raised:
        _config(*argv)
    assert words in str(raised.value)


def test_nccl_is_refused_where_no_gpu_is_visible(monkeypatch):
    torch = pytest.importorskip("torch")
    from bench.dist import BackendUnavailable, check_backend

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(BackendUnavailable, match="needs CUDA GPUs and none is visible"):
        check_backend("nccl")
    check_backend("gloo")


def _header(*argv: str) -> dict:
    from bench.__main__ import build_parser, header_args
    from bench.records import make_header

    args = build_parser().parse_args(["all_reduce", "-b", "8", "-e", "64", *argv])
    return make_header(command="test", backend="gloo", world_size=1, args=header_args(args))


def test_output_folder_is_named_as_a_folder(tmp_path):
    from bench.__main__ import UsageError, open_results

    for resume in (False, True):
        with pytest.raises(UsageError, match="is a directory; name a results file"):
            open_results(str(tmp_path), resume, _header())


@pytest.mark.parametrize("argv, words", [
    (["-e", "128"], "sizes (-b/-e/-f) 8,16,32,64, this run has 8,16,32,64,128"),
    (["-d", "float32,int32"], "--dtype float32, this run has float32,int32"),
    (["-n", "3"], "--iters 20, this run has 3"),
    (["--one-group"], "--one-group False, this run has True"),
])
def test_resume_with_other_sweep_settings_is_refused(tmp_path, argv, words):
    from bench.__main__ import UsageError, open_results
    from bench.records import ResultsWriter

    path = tmp_path / "r.jsonl"
    ResultsWriter(path, _header()).close()
    before = path.read_text()
    with pytest.raises(UsageError) as raised:
        open_results(str(path), True, _header(*argv))
    assert f"cannot resume {path}: it was measured with {words}" in str(raised.value)
    assert path.read_text() == before
    writer, done = open_results(str(path), True, _header("--timeout", "30"))  # may change
    writer.close()
    assert done == set()
