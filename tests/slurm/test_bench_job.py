"""The benchmark suite as a Slurm batch job: srun starts one rank per task (torch gloo, or MPI
through srun --mpi=pmi2), then the job fits a cluster profile to the results file."""

from __future__ import annotations

import math

import pytest

from bench.records import read_results
from cost_models.loaders import load_cluster_profile
from tuner import slurm_gen

pytestmark = pytest.mark.slurm

COLLECTIVES = ("all_reduce", "all_gather")
# -b 8 -e 8M -f 2: up to 8 MB, where the link's bandwidth sets the time even on a busy host
# (ending at 1 MB, host jitter of a few ms sometimes hid it and the fit refused, rightly)
SIZES = [2**k for k in range(3, 24)]


@pytest.mark.parametrize("backend, launcher", [("gloo", "srun"), ("mpi", "mpiexec")])
def test_bench_job_writes_results_and_a_fitted_profile(slurm, tmp_path, backend, launcher):
    results, profile = tmp_path / "raw" / "r.jsonl", tmp_path / "clusters" / "local.json"
    script = tmp_path / "bench.sbatch"
    code = slurm_gen.main([
        "bench", "--ntasks-per-node", "2", "--backend", backend,
        "--collectives", ",".join(COLLECTIVES), "--results", str(results),
        "--profile", str(profile), "--base-cluster", "dgx-h100", "--time", "5",
        "--log-dir", str(tmp_path), "--workdir", str(tmp_path), "-o", str(script),
        "--", "-b", "8", "-e", "8M", "-n", "5", "-w", "1"])
    assert code == 0
    (state,) = slurm.run(str(script), cwd=tmp_path)
    log = (tmp_path / f"bench-{state.job_id}.out").read_text()
    assert state.ok, log

    run = read_results(results)
    assert run.problems == ()
    header = run.header
    assert (header["backend"], header["launcher"]) == (backend, launcher)
    assert (header["world_size"], header["nodes"], header["ranks_per_node"]) == (2, 1, 2)
    assert header["env"]["SLURM_JOB_ID"] == state.job_id
    got = sorted((m.collective.value, m.size_bytes) for m in run.measurements)
    assert got == sorted((c, s) for c in COLLECTIVES for s in SIZES)
    assert all(m.wrong == 0 and m.group_size == 2 and m.time_us_p50 > 0
               for m in run.measurements)

    fitted = load_cluster_profile(profile).cluster
    assert fitted.gpus_per_node == 2 and fitted.gpu.name.startswith("H100")
    inner = fitted.tiers[0]
    assert inner.domain_gpus == 2
    assert math.isfinite(inner.bandwidth_bytes_per_s) and inner.bandwidth_bytes_per_s > 0
    assert 0 < inner.latency_s < 0.1
    assert f"results in {results}, profile in {profile}" in log
