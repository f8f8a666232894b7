"""`autotune` tells users when fewer GPUs or another batch would train the budget sooner."""

import re
import subprocess
import sys

from cost_models.catalog_clusters import cluster_preset
from cost_models.catalog_sizes import model_from_size
from cost_models.specs import Precision
from tuner.alternatives import candidate_counts, faster_gpu_counts, other_batch, train_days
from tuner.search import exhaustive_best
from tuner.space import Space


def _space(gpus: int) -> Space:
    return Space(model=model_from_size("500b"), cluster=cluster_preset("dgx-h100"),
                 num_gpus=gpus, global_batch_range=(384, 640), precision=Precision.BF16)


def test_candidate_counts_are_whole_multiples_just_below_the_request():
    counts = candidate_counts(10000)
    assert counts == sorted(counts) and 9984 in counts
    assert all(9000 <= c < 10000 and c % 64 == 0 for c in counts)


def test_reported_alternatives_really_train_sooner():
    space, budget = _space(10000), 1e13
    best = exhaustive_best(space, 0.05)
    base_days = train_days(budget, best.tokens_per_s)
    alts = faster_gpu_counts(space, 0.05, budget, best)
    assert alts, "10,000 = 2^4 * 5^4 GPUs should leave room for a better count"
    for alt in alts:
        assert alt.num_gpus < 10000 and alt.days < base_days
        assert alt.best.plan.num_gpus == alt.num_gpus
    batch = other_batch(space, 0.05, budget, best)
    assert batch is None or batch[2] < base_days


def test_the_command_prints_them():
    proc = subprocess.run([sys.executable, "-m", "tuner", "--model", "500b", "--gpus", "10000"],
                          capture_output=True, text=True, check=True)
    assert "Fewer GPUs would train sooner" in proc.stdout
    days = [float(d) for d in re.findall(r"\(([\d.]+)x sooner\)", proc.stdout)]
    assert days and all(d > 1 for d in days)
