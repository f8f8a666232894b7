"""The measured files kept in results/bench/ and results/gpu/ are readable, correct, and their
busbw is the nccl-tests formula applied to their own times (no drift between definitions)."""

from pathlib import Path

import pytest

from bench.records import Collective, read_results

RESULTS = Path(__file__).resolve().parents[2] / "results"
FILES = sorted([*(RESULTS / "bench").rglob("*.jsonl"), *(RESULTS / "gpu").glob("*.jsonl")])
# nccl-tests doc/PERFORMANCE.md, written out again independently of bench.records.
FACTOR = {Collective.ALL_REDUCE: lambda n: 2 * (n - 1) / n, Collective.BROADCAST: lambda n: 1,
          Collective.SEND_RECV: lambda n: 1}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_kept_results_are_clean_and_busbw_matches_nccl_tests(path):
    res = read_results(path)
    assert res.problems == ()
    assert res.header["command"] and res.measurements
    for m in res.measurements:
        assert m.wrong == 0
        factor = FACTOR.get(m.collective, lambda n: (n - 1) / n)(m.group_size)
        algbw = m.size_bytes / (m.time_us_mean * 1e-6) / 1e9
        assert m.algbw_gbps == pytest.approx(algbw, rel=1e-12)
        assert m.busbw_gbps == pytest.approx(algbw * factor, rel=1e-12)
