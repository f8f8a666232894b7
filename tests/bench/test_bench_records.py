import json

import pytest

from bench.records import (
    BUS_FACTOR,
    Collective,
    Measurement,
    ResultsError,
    ResultsWriter,
    algbw_gbps,
    busbw_gbps,
    make_header,
    read_results,
)


def sample(size: int = 1024, **over) -> Measurement:
    fields = dict(collective=Collective.ALL_REDUCE, size_bytes=size, count=size // 4,
                  dtype="float32", group_size=4, layout="world", num_groups=1,
                  ranks_per_node=2, nodes=2, groups_per_node=1, warmup_iters=1, iters=5,
                  time_us_mean=10.0, time_us_min=9.0, time_us_max=12.0, time_us_p50=10.0,
                  time_us_p99=11.9, algbw_gbps=0.1, busbw_gbps=0.15, wrong=0)
    return Measurement(**(fields | over))


def write(path, records):
    w = ResultsWriter(path, make_header(command="test", backend="gloo", world_size=4))
    for m in records:
        w.write(m)
    w.close()


def test_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    records = [sample(1024), sample(2048, collective="all_gather")]
    write(path, records)
    got = read_results(path)
    assert got.header["schema"] == 1 and got.header["backend"] == "gloo"
    assert got.measurements == tuple(records)
    assert got.problems == ()


def test_truncated_last_line_keeps_earlier_records(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024), sample(2048)])
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # cut the last record mid-line
    got = read_results(path)
    assert [m.size_bytes for m in got.measurements] == [1024]
    assert any("truncated" in p for p in got.problems)


def test_corrupt_middle_line_and_bad_fields_are_reported(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024)])
    with open(path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"kind": "measurement", "collective": "all_reduce"}) + "\n")
        f.write(json.dumps({"kind": "measurement", **_as_dict(sample(4096)),
                            "collective": "bogus"}) + "\n")
    got = read_results(path)
    assert len(got.measurements) == 1
    assert len(got.problems) == 3
    assert "corrupt" in got.problems[0] and "bad measurement" in got.problems[1]


def _as_dict(m):
    from dataclasses import asdict
    return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(m).items()}


@pytest.mark.parametrize("first_line, message", [
    ("", "not a bench results file"),
    ("hello", "not a bench results file"),
    ('{"kind": "measurement"}', "no header"),
    ('{"kind": "header", "schema": 99}', "schema 99"),
])
def test_unusable_headers_raise_one_clear_error(tmp_path, first_line, message):
    path = tmp_path / "r.jsonl"
    path.write_text(first_line + "\n")
    with pytest.raises(ResultsError, match=message):
        read_results(path)


def test_error_record_is_a_problem(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultsWriter(path, make_header(command="t", backend="gloo", world_size=2))
    w.write(sample())
    w.write_error("rank 1 died", 0)
    w.close()
    got = read_results(path)
    assert len(got.measurements) == 1 and "rank 1 died" in got.problems[0]


def test_bus_bandwidth_matches_nccl_tests_by_hand():
    # nccl-tests doc/PERFORMANCE.md: algbw = S/t; all-reduce busbw = algbw * 2(n-1)/n.
    # 8 ranks, S = 1e8 bytes in t = 10 ms: algbw 10 GB/s, busbw 10 * 14/8 = 17.5 GB/s.
    assert algbw_gbps(1e8, 0.01) == pytest.approx(10.0)
    assert busbw_gbps(Collective.ALL_REDUCE, 1e8, 0.01, 8) == pytest.approx(17.5)
    # all-gather, reduce-scatter, all-to-all: (n-1)/n = 7/8 -> 8.75 GB/s.
    for c in (Collective.ALL_GATHER, Collective.REDUCE_SCATTER, Collective.ALL_TO_ALL):
        assert busbw_gbps(c, 1e8, 0.01, 8) == pytest.approx(8.75)
    # broadcast and send/recv: factor 1.
    assert busbw_gbps(Collective.BROADCAST, 1e8, 0.01, 8) == pytest.approx(10.0)
    assert BUS_FACTOR[Collective.SEND_RECV](2) == 1.0
