"""How host and GPU time combine in a layer call (compute.host_bound_time_s) and the fit
that finds the host seconds per layer call from timed layers (cost_models.host_fit)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cost_models.compute import HOST_OVERLAP_NORM, host_bound_time_s
from cost_models.host_fit import best_norm, fit_host_s, layer_slopes

seconds = st.floats(1e-5, 1.0)


@given(seconds, seconds)
def test_a_layer_call_takes_between_the_longer_side_and_the_sum(host_s, gpu_s):
    t = host_bound_time_s(host_s, gpu_s)
    assert max(host_s, gpu_s) <= t * (1 + 1e-12) and t <= host_s + gpu_s
    assert t == pytest.approx(host_bound_time_s(gpu_s, host_s))  # symmetric


def test_the_wait_matters_most_where_host_and_gpu_take_as_long():
    gpu_s = np.array([1.0, 1.0, 1.0])
    host_s = np.array([0.2, 1.0, 5.0])
    extra = host_bound_time_s(host_s, gpu_s) - np.maximum(host_s, gpu_s)
    assert extra[1] == pytest.approx(2 ** (1 / HOST_OVERLAP_NORM) - 1)
    assert extra[1] > extra[0] and extra[1] > extra[2]
    assert host_bound_time_s(0.3, 0.7, norm=np.inf) == 0.7 and host_bound_time_s(
        0.3, 0.7, norm=1.0) == pytest.approx(1.0)


def timed_layers(host_s: float, norm: float) -> pd.DataFrame:
    """Synthetic bench.megatron_layer rows: models of 1 and 5 layers whose layer calls
    combine `host_s` with the GPU time by `norm`; embedding and head cost 3 ms more."""
    rows = []
    for tokens, gpu_s in ((512, 2e-3), (2048, 6e-3), (8192, 30e-3)):
        call_s = host_bound_time_s(host_s, gpu_s, norm)
        for layers in (1, 5):
            rows.append({"experts_impl": "grouped", "tokens": tokens, "layers": layers,
                         "wall_s": 3e-3 + layers * call_s, "gpu_busy_s": 1e-3 + layers * gpu_s,
                         "ops": 72 + 332 * layers})
    return pd.DataFrame(rows)


def test_slopes_drop_the_embedding_and_head():
    slopes = layer_slopes(timed_layers(8e-3, 3.0))
    assert list(slopes.ops) == pytest.approx([332] * 3)
    assert list(slopes.gpu_busy_s) == pytest.approx([2e-3, 6e-3, 30e-3])


@pytest.mark.parametrize("norm", [2.0, 3.0, np.inf])
def test_the_fit_finds_the_host_time_and_norm_it_was_made_with(norm):
    layers = layer_slopes(timed_layers(8e-3, norm))
    host_s, errors = fit_host_s(layers, norm)
    assert host_s == pytest.approx(8e-3, rel=0.01) and np.abs(errors).max() < 0.01
    found, fits = best_norm({"run1": layers})
    assert found == norm and fits.host_s.iloc[0] == pytest.approx(8e-3, rel=0.01)
