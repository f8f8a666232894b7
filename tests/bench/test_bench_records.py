import json

import pytest

from bench.records import (
    BUS_FACTOR,
    BadRecordError,
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
    """A self-consistent record (bandwidths from the size and the mean time) with `over`."""
    fields = dict(collective=Collective.ALL_REDUCE, size_bytes=size, count=size // 4,
                  dtype="float32", group_size=4, layout="world", num_groups=1,
                  ranks_per_node=2, nodes=2, groups_per_node=1, warmup_iters=1, iters=5,
                  time_us_mean=10.0, time_us_min=9.0, time_us_max=12.0, time_us_p50=10.0,
                  time_us_p99=11.9, wrong=0) | over
    time_s = fields["time_us_mean"] / 1e6
    c, g = Collective(fields["collective"]), fields["group_size"]
    bandwidths = dict(algbw_gbps=algbw_gbps(fields["size_bytes"], time_s),
                      busbw_gbps=busbw_gbps(c, fields["size_bytes"], time_s, g))
    return Measurement(**(bandwidths | fields))


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


def _as_dict(m):
    from dataclasses import asdict
    return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(m).items()}


def _record(**over) -> str:
    return json.dumps({"kind": "measurement", **_as_dict(sample(4096)), **over})


def _without(field: str) -> str:
    record = json.loads(_record())
    del record[field]
    return json.dumps(record)


# (line 3 of a file whose line 4 is a good record, words the one-line error must hold)
CORRUPT_LINES = [
    ("{not json", "not valid JSON"),
    (_record()[:-1] + ', "size_bytes": 8}', "key 'size_bytes' appears twice in one object"),
    ("[1, 2]", "a JSON array, not a record"),
    ("null", "JSON null, not a record"),
    ('{"kind": "bogus"}', "unknown record kind 'bogus'"),
    ('{"kind": "header", "schema": 1}', "a second header"),
    (_without("time_us_p50"), "lacks the field 'time_us_p50'"),
    (_record(collective="bogus"), "'collective' must be one of all_reduce"),
    (_record(busbw_gbps="abc"), "'busbw_gbps' must be a finite number, got 'abc'"),
    (_record(time_us_p50="abc"), "'time_us_p50' must be a finite number"),
    (_record(size_bytes="abc"), "'size_bytes' must be an integer >= 1"),
    (_record(group_size=None), "'group_size' must be an integer >= 1, got None"),
    (_record(groups_per_node="2"), "'groups_per_node' must be an integer"),
    (_record(ranks_per_node=0), "'ranks_per_node' must be an integer >= 1, got 0"),
    (_record(nodes=None), "'nodes' must be an integer >= 1"),
    (_record(nodes=2.0), "'nodes' must be an integer"),
    (_record(count=True), "'count' must be an integer"),
    (_record(dtype="abc"), "'dtype' must be one of float32"),
    (_record(dtype=None), "'dtype' must be one of"),
    (_record(layout="diagonal"), "'layout' must be one of world, consecutive, strided"),
    (_record(time_us_mean=0), "'time_us_mean' must be > 0"),
    (_record(time_us_min=-1.0), "'time_us_min' must be > 0"),
    (_record(time_us_p99=float("nan")), "'time_us_p99' must be a finite number, got nan"),
    (_record(algbw_gbps=-1.0), "'algbw_gbps' must be >= 0"),
    (_record(wrong=None), "'wrong' must be an integer >= 0"),
    (_record(count=1000), "size_bytes 4096 is not count 1000 x 4 bytes of float32"),
    (_record(time_us_min=11.0), "times out of order (min 11, p50 10"),
    (_record(time_us_p99=12.5), "need min <= p50 <= p99 <= max"),
    (_record(time_us_mean=11.0), "algbw_gbps 0.4096 does not follow from size_bytes / "
                                 "time_us_mean (0.3724"),
    (_record(busbw_gbps=0.4096), "busbw_gbps 0.4096 does not follow"),
    (_record(size_bytes=10 ** 400, count=10 ** 400 // 4),
     "field 'size_bytes' is out of range (must be below 2**63)"),
    (_record(iters=2 ** 63), "field 'iters' is out of range"),
    ("[" * 100_000, "nested too deeply or a number too long to read"),
    ('{"kind": "measurement", "iters": ' + "9" * 5000 + "}", "a number too long to read"),
    # the sample's group: 4 ranks, 2 nodes, at most 2 on one, 1 group running
    (_record(ranks_per_node=8), "ranks_per_node 8 is more than group_size 4"),
    (_record(nodes=1), "nodes 1 x ranks_per_node 2 cannot hold a group of 4 ranks"),
    (_record(nodes=4), "a group of 4 ranks with 2 on one node cannot span 4 nodes"),
    (_record(groups_per_node=2), "groups_per_node 2 is more than the 1 running group(s)"),
]


@pytest.mark.parametrize("line, words", CORRUPT_LINES, ids=[w[:40] for _, w in CORRUPT_LINES])
def test_a_corrupt_record_inside_a_file_is_one_error_naming_file_line_and_field(
        tmp_path, line, words):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024)])
    with open(path, "a") as f:
        f.write(line + "\n" + _record() + "\n")
    with pytest.raises(BadRecordError) as raised:
        read_results(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:3: ") and words in message
    assert "\n" not in message


def test_a_corrupt_last_line_with_its_newline_is_an_error_not_a_truncation(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024)])
    with open(path, "a") as f:
        f.write('{"kind": "measurement", "coll\n')
    with pytest.raises(BadRecordError, match=r"r\.jsonl:3: not valid JSON"):
        read_results(path)


def test_a_complete_last_line_without_newline_is_kept_and_named(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024), sample(2048)])
    path.write_text(path.read_text().rstrip("\n"))
    got = read_results(path)
    assert [m.size_bytes for m in got.measurements] == [1024, 2048]
    assert len(got.problems) == 1 and "no newline" in got.problems[0]


def test_older_records_without_the_optional_fields_are_read(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [])
    record = json.loads(_record())
    del record["calls_per_iter"], record["rank_reduce"]
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    assert read_results(path).measurements[0].calls_per_iter == 1


def test_resuming_drops_a_truncated_last_line_and_ends_a_complete_one(tmp_path):
    """A killed run leaves a cut-off line: appending after it would bury garbage inside the
    file (an error for every later reader), so the writer drops it; a complete last line
    without newline is kept and ended."""
    cut, whole = tmp_path / "cut.jsonl", tmp_path / "whole.jsonl"
    write(cut, [sample(1024), sample(2048)])
    cut.write_text(cut.read_text()[:-40])
    write(whole, [sample(1024)])
    whole.write_text(whole.read_text().rstrip("\n"))
    for path, sizes in ((cut, [1024, 4096]), (whole, [1024, 4096])):
        w = ResultsWriter(path, make_header(command="again", backend="gloo", world_size=4))
        w.write(sample(4096))
        w.close()
        got = read_results(path)
        assert [m.size_bytes for m in got.measurements] == sizes and got.problems == ()


@pytest.mark.parametrize("first_line, message", [
    ("", "not a bench results file"),
    ("hello", "not a bench results file"),
    ('{"kind": "measurement"}', "no header"),
    ('{"kind": "header", "schema": 99}', "schema 99"),
    ('{"kind": "header", "schema": 1, "world_size": 4, "world_size": 8}',
     "r.jsonl:1: key 'world_size' appears twice in one object"),
    ('{"kind": "header", "schema": 1, "backend": "ucc"}', "backend 'ucc' is not one of"),
    ('{"kind": "header", "schema": 1, "world_size": "four"}', "'world_size' must be an int"),
    ('{"kind": "header", "schema": 1, "world_size": 4, "nodes": 2, "ranks_per_node": 3}',
     "nodes 2 x ranks_per_node 3 is not world_size 4"),
])
def test_unusable_headers_raise_one_clear_error(tmp_path, first_line, message):
    path = tmp_path / "r.jsonl"
    path.write_text(first_line + "\n")
    with pytest.raises(ResultsError, match=message):
        read_results(path)


def test_error_record_is_a_problem(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultsWriter(path, make_header(command="t", backend="gloo", world_size=4))
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


def test_a_record_larger_than_the_world_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024), sample(2048, group_size=8, nodes=4)])  # the header's world: 4
    with pytest.raises(BadRecordError, match=r"r\.jsonl:3: 1 running group\(s\) of 8 ranks "
                                             "do not fit the header's world of 4"):
        read_results(path)


def test_the_sample_placement_is_possible():
    """The placement cases above fail on one field each, not on the sample itself."""
    from bench.records import placement_problem

    assert placement_problem(sample()) is None
    assert placement_problem(sample(group_size=4, ranks_per_node=4, nodes=1)) is None
    assert placement_problem(sample(group_size=1, ranks_per_node=1, nodes=1)) is None


@pytest.mark.parametrize("last", ["[" * 100_000, '{"kind": "measurement", "iters": ' + "9" * 5000],
                         ids=["deep", "long_number"])
def test_a_last_line_beyond_pythons_json_limits_is_one_error(tmp_path, last):
    path = tmp_path / "r.jsonl"
    write(path, [sample(1024)])
    with open(path, "a") as f:
        f.write(last)  # no newline: read as a possibly truncated last line
    with pytest.raises(BadRecordError, match=r"r\.jsonl:3: nested too deeply or a number too "
                                             "long to read"):
        read_results(path)


@pytest.mark.parametrize("first_line", ["[" * 100_000, '{"schema": ' + "9" * 5000 + "}"],
                         ids=["deep", "long_number"])
def test_a_header_beyond_pythons_json_limits_is_not_a_results_file(tmp_path, first_line):
    path = tmp_path / "r.jsonl"
    path.write_text(first_line + "\n")
    with pytest.raises(ResultsError, match=r"r\.jsonl:1: not a bench results file"):
        read_results(path)


def write_run(path, records, **header):
    w = ResultsWriter(path, make_header(command="test", backend="gloo", **header))
    for m in records:
        w.write(m)
    w.close()


@pytest.mark.parametrize("record, words", [
    (sample(2048, nodes=2), "the record's group spans 2 nodes, more than the header's 1"),
    (sample(2048, nodes=1, ranks_per_node=4),
     "the record puts 4 ranks on one node, more than the header's ranks_per_node 2"),
], ids=["nodes", "ranks_per_node"])
def test_a_record_that_contradicts_the_header_is_one_error(tmp_path, record, words):
    """A run on one node (the header) has no group spanning two; a run of 2 ranks per node
    has no group with 4 ranks on one node."""
    one_node, two_per_node = tmp_path / "one_node.jsonl", tmp_path / "two_per_node.jsonl"
    write_run(one_node, [sample(1024, nodes=1, ranks_per_node=4)], world_size=4, nodes=1,
              ranks_per_node=4)
    write_run(two_per_node, [sample(1024)], world_size=4, nodes=2, ranks_per_node=2)
    path = one_node if record.nodes > 1 else two_per_node
    assert read_results(path).measurements  # clean before the record is added
    with open(path, "a") as f:
        f.write(_line(record) + "\n")
    with pytest.raises(BadRecordError) as raised:
        read_results(path)
    assert str(raised.value) == (f"{path}:3: {words}; repair the header or that line, or "
                                 "measure again")


def _line(m) -> str:
    return json.dumps({"kind": "measurement", **_as_dict(m)})


def test_an_overflow_while_checking_a_record_is_one_error(tmp_path, monkeypatch):
    import bench.records

    def overflow(*args):
        raise OverflowError("int too large to convert to float")

    path = tmp_path / "r.jsonl"
    write(path, [sample(1024)])
    monkeypatch.setattr(bench.records, "algbw_gbps", overflow)
    with pytest.raises(BadRecordError, match=r"r\.jsonl:2: a value is too large to compute its "
                                             "bandwidths with; repair or delete that line"):
        read_results(path)
