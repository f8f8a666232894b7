"""tuner.slurm_env without a Slurm: variables as Slurm sets them, and malformed ones."""

from __future__ import annotations

import pytest

from tuner.slurm_env import (
    Allocation,
    SlurmEnvError,
    current_allocation,
    expand_hostlist,
    gpus_from_env,
)

JOB = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2"}


def test_no_allocation_outside_a_job():
    assert current_allocation({"PATH": "/usr/bin"}) is None


@pytest.mark.parametrize("env, gpus", [
    ({"SLURM_GPUS_ON_NODE": "8"}, 8),
    ({"SLURM_GPUS_PER_NODE": "4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "h100:4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "gpu:h100:2(S:0-1)"}, 2),
    ({"SLURM_JOB_GPUS": "0,1,2"}, 3),
    ({"SLURM_GPUS_ON_NODE": "0", "SLURM_JOB_GPUS": "0,1"}, 0),
    ({}, None),
])
def test_gpus_per_node_from_the_job_variables(env, gpus):
    assert gpus_from_env(env) == gpus


def test_allocation_from_variables_of_a_two_node_job():
    alloc = current_allocation(JOB | {"SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS": "16"},
                               ask_scontrol=False)
    assert alloc == Allocation(job_id="77", num_nodes=2, gpus_per_node=8,
                               nodes=("gpu07", "gpu08"), tasks=16)
    assert (alloc.num_gpus, alloc.master_addr) == (16, "gpu07")


def test_allocation_without_gpu_variables_and_without_scontrol_has_no_gpus():
    assert current_allocation(JOB, ask_scontrol=False).gpus_per_node == 0


@pytest.mark.parametrize("env, message", [
    ({"SLURM_JOB_ID": "1"}, "SLURM_JOB_NODELIST is not set"),
    (JOB | {"SLURM_JOB_NUM_NODES": "3"}, "names 2 hosts"),
    (JOB | {"SLURM_GPUS_ON_NODE": "eight"}, "not a non-negative integer"),
    (JOB | {"SLURM_GPUS_PER_NODE": "gpu:h100"}, "cannot read a GPU count"),
    (JOB | {"SLURM_JOB_NODELIST": "gpu[08-07]"}, "LO <= HI"),
])
def test_malformed_variables_are_one_clear_error(env, message):
    with pytest.raises(SlurmEnvError, match=message):
        current_allocation(env, ask_scontrol=False)


@pytest.mark.parametrize("hostlist", ["n[1-2", "n]1[", "x[1-2]-ib", "a,,b", "n[a-b]"])
def test_invalid_hostlists_are_refused(hostlist):
    with pytest.raises(SlurmEnvError, match="invalid Slurm host list"):
        expand_hostlist(hostlist)
