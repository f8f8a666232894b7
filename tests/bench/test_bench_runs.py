"""Real multi-process runs: gloo through bench.launch and torchrun, MPI through mpiexec."""

import shutil
import time

import pytest

from bench.records import BUS_FACTOR, Collective, read_results
from tests.bench.conftest import run_module

ALL = [c.value for c in Collective]


def test_gloo_all_collectives_two_ranks(tmp_path, bench_ranks):
    out = tmp_path / "gloo.jsonl"
    done = bench_ranks(2, "all", "-b", "64", "-e", "4K", "-f", "8", "-n", "3", "-w", "1",
                       "--backend", "gloo", "-d", "float32,bfloat16", "-o", str(out))
    assert done.returncode == 0, done.stderr
    res = read_results(out)
    assert res.problems == ()
    assert res.header["world_size"] == 2 and res.header["backend"] == "gloo"
    assert {m.collective.value for m in res.measurements} == set(ALL)
    assert len(res.measurements) == len(ALL) * 2 * 3  # collectives x dtypes x sizes
    assert all(m.wrong == 0 for m in res.measurements)
    assert "#wrong" in done.stdout and "busbw" in done.stdout
    for m in res.measurements:  # busbw is the nccl-tests formula of the recorded time
        factor = BUS_FACTOR[m.collective](m.group_size)
        assert m.busbw_gbps == pytest.approx(m.size_bytes / (m.time_us_mean * 1e3) * factor)
        assert m.time_us_min <= m.time_us_p50 <= m.time_us_max


def test_torchrun_four_ranks_strided_concurrent_groups(tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "tr.jsonl"
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           "4", "-m", "bench", "all_reduce,send_recv", "-b", "1K", "-e", "4K",
                           "-f", "4", "-n", "2", "-w", "1", "--backend", "gloo", "-g", "2",
                           "--layout", "consecutive,strided", "--p2p", "pairs", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    res = read_results(out)
    assert res.header["launcher"] == "torchrun"
    layouts = {(m.layout, m.num_groups, m.group_size) for m in res.measurements}
    assert layouts == {("consecutive", 2, 2), ("strided", 2, 2)}
    assert all(m.wrong == 0 for m in res.measurements)


@pytest.mark.mpi
def test_mpi_run_through_mpiexec(tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    out = tmp_path / "mpi.jsonl"
    import subprocess
    import sys

    done = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "bench", "all", "-b",
                           "64", "-e", "64K", "-f", "32", "-n", "3", "-w", "1", "--backend",
                           "mpi", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    res = read_results(out)
    assert res.header["backend"] == "mpi" and res.header["launcher"] == "mpiexec"
    assert {m.collective.value for m in res.measurements} == set(ALL)
    assert all(m.wrong == 0 for m in res.measurements)


def test_rank_that_exits_is_named_file_kept_and_resume_finishes(tmp_path, bench_ranks):
    out = tmp_path / "fault.jsonl"
    args = ("all_reduce", "-b", "64", "-e", "16K", "-f", "4", "-n", "2", "-w", "1",
            "--backend", "gloo", "--timeout", "20", "-o", str(out))
    start = time.monotonic()
    failed = bench_ranks(3, *args, env={"PARTUNE_BENCH_FAULT": "2:4:exit"})
    assert time.monotonic() - start < 60
    assert failed.returncode == 2
    assert "rank 2 died" in failed.stderr
    assert "Traceback" not in failed.stderr
    kept = read_results(out)
    assert [m.size_bytes for m in kept.measurements] == [60, 252, 1020]  # 3 | count
    assert any("rank 2 died" in p for p in kept.problems)
    resumed = bench_ranks(3, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = read_results(out)
    assert [m.size_bytes for m in final.measurements] == [60, 252, 1020, 4092, 16380]


def test_rank_that_hangs_is_named_within_the_timeout(tmp_path, bench_ranks):
    out = tmp_path / "hang.jsonl"
    start = time.monotonic()
    done = bench_ranks(2, "all_reduce", "-b", "64", "-e", "1K", "-f", "4", "-n", "2", "-w",
                       "1", "--backend", "gloo", "--timeout", "5", "-o", str(out),
                       env={"PARTUNE_BENCH_FAULT": "1:2:hang"})
    assert time.monotonic() - start < 45
    assert done.returncode == 2
    assert "rank 1 hangs" in done.stderr
    assert len(read_results(out).measurements) == 1


@pytest.mark.parametrize("args, message", [
    (["bogus"], "unknown collective"),
    (["all_reduce", "-b", "lots"], "is not a number"),
    (["all_reduce", "-d", "complex64"], "--dtype"),
    (["all_reduce", "-g", "3"], "must divide the world size"),
    (["all_reduce", "-f", "nan"], "finite step factor -f (nan) > 1"),
    (["all_reduce", "-d", ""], "--dtype is empty"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    done = run_module("bench", *args, "--backend", "gloo", "-o", "/tmp/never.jsonl",
                      env={"MASTER_PORT": "29731"})
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("partune-bench: error: ")


def test_existing_output_needs_resume(tmp_path, bench_ranks):
    out = tmp_path / "x.jsonl"
    out.write_text('{"kind": "header", "schema": 1, "backend": "gloo", "world_size": 1}\n')
    done = run_module("bench", "all_reduce", "-b", "8", "-e", "8", "--backend", "gloo",
                      "-o", str(out), env={"MASTER_PORT": "29732"})
    assert done.returncode == 2 and "--resume" in done.stderr


def test_overhead_tool_times_the_suite_and_both_bare_loops():
    """bench.overhead prints, per size, the suite, the isolated-call and the back-to-back
    loop times and both ratios (the figures are reported from results/bench/, not checked
    here: a 2-core host cannot time to 5%)."""
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    import subprocess
    import sys

    done = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "bench.overhead",
                           "--backend", "mpi", "--sizes", "4K,64K", "--iters", "5",
                           "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [4096, 65536]
    for size, suite, isolated, back2back, r_iso, r_b2b in (map(float, r) for r in rows):
        assert min(suite, isolated, back2back) > 0
        # one round: the median of the rounds' ratios is that round's ratio, up to the
        # printing (times to 0.1 us, a few us each here; ratios to 0.001)
        for ratio, other in ((r_iso, isolated), (r_b2b, back2back)):
            low, high = (suite - 0.05) / (other + 0.05), (suite + 0.05) / (other - 0.05)
            assert low - 0.0005 <= ratio <= high + 0.0005, (suite, other, ratio)


def test_nccl_without_gpus_is_one_line(tmp_path):
    """No CUDA device visible (CUDA_VISIBLE_DEVICES empty hides them on a GPU host too)."""
    pytest.importorskip("torch")
    out = tmp_path / "n.jsonl"
    done = run_module("bench", "all_reduce", "--backend", "nccl", "-o", str(out),
                      env={"CUDA_VISIBLE_DEVICES": "", "MASTER_PORT": "29733"})
    assert done.returncode == 2
    assert done.stderr == ("partune-bench: error: --backend nccl needs CUDA GPUs and none is "
                           "visible here; use --backend gloo or mpi on CPUs\n")
    assert not out.exists()
