"""Every command answers a bad flag with one line on stderr and exit code 2 (no usage dump,
no traceback)."""

import pytest

from tests.bench.conftest import run_module

MODULES = ["bench", "bench.gemm", "bench.kernels", "bench.step", "bench.megatron_step",
           "bench.plot", "bench.overhead", "cost_models.fit", "cost_models.kernel_fit",
           "tuner", "tuner.launch", "tuner.slurm_gen"]


@pytest.mark.parametrize("module", MODULES)
def test_unknown_flag_is_one_line(module):
    done = run_module(module, "--no-such-flag")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in done.stderr
