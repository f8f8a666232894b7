"""Time lost to failures: at 10,000 GPUs a job is interrupted every few hours.

Expected wall time = productive time / goodput, with checkpoints every tau (Young 1974, "A
first order approximation to the optimum checkpoint interval", CACM 17(9)):

    tau = sqrt(2 * checkpoint_s * mtbf_s)
    waste = checkpoint_s / tau + (tau / 2 + restart_s) / mtbf_s      (first order)
    goodput = 1 - waste

Inputs, each with its source:
- failure rate per GPU: Llama 3 (arXiv:2407.21783 Sec. 3.3.4) saw 419 unexpected
  interruptions in 54 days of pre-training on 16,384 H100 GPUs: 1 per 50,700 GPU-hours;
- checkpoint: the model state (16-bit weights + fp32 master weights and Adam moments, 14 bytes
  per parameter) written at STORAGE_BYTES_PER_S; Llama 3's storage sustained 2 TB/s
  (same section, Tectonic);
- restart: ASSUMPTION 10 minutes to reschedule, reload the checkpoint and warm up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GPU_HOURS_PER_FAILURE = 54 * 24 * 16384 / 419  # Llama 3: ~50,700 GPU-hours per failure
CHECKPOINT_BYTES_PER_PARAM = 14  # bf16 weights 2 + fp32 master 4 + Adam m 4 + v 4
STORAGE_BYTES_PER_S = 2e12  # Llama 3 Tectonic, sustained
RESTART_S = 600.0  # ASSUMPTION


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodput:
    job_mtbf_s: float
    checkpoint_s: float
    checkpoint_interval_s: float
    goodput: float  # fraction of wall time that trains


def goodput(num_gpus: int, num_params: float) -> Goodput:
    mtbf_s = GPU_HOURS_PER_FAILURE / num_gpus * 3600.0
    checkpoint_s = num_params * CHECKPOINT_BYTES_PER_PARAM / STORAGE_BYTES_PER_S
    tau = math.sqrt(2.0 * checkpoint_s * mtbf_s)
    waste = checkpoint_s / tau + (tau / 2.0 + RESTART_S) / mtbf_s
    return Goodput(job_mtbf_s=mtbf_s, checkpoint_s=checkpoint_s, checkpoint_interval_s=tau,
                   goodput=max(1.0 - waste, 0.0))
