"""The fit recovers known tiers from measurements made by the formula itself (plus noise),
reports bad files instead of crashing, and writes a profile the loaders read back."""

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.records import Collective, Measurement, ResultsWriter, busbw_gbps, make_header
from cost_models.comm import collective_time_s
from cost_models.fit import build_profile, skeleton
from cost_models.loaders import load_cluster, load_cluster_profile
from cost_models.specs import CollectiveLink, LinkTier
from tests.bench.conftest import run_module

BASE = load_cluster("dgx-h100")
TRUTH = replace(skeleton(BASE, 2, "truth"), tiers=(
    LinkTier(name="intra_node", domain_gpus=2, latency_s=30e-6, bandwidth_bytes_per_s=2e9),
    LinkTier(name="inter_node", domain_gpus=0, latency_s=200e-6, bandwidth_bytes_per_s=60e6,
             per_collective=(CollectiveLink(collective="all_to_all", latency_s=400e-6,
                                            bandwidth_bytes_per_s=30e6),))))
# (group size, layout, ranks per node, nodes, groups per node, running groups) on 2 x 2 ranks
LAYOUTS = [(4, "world", 2, 2, 1, 1), (2, "consecutive", 2, 1, 1, 2), (2, "strided", 1, 2, 2, 2)]


def synthetic(path, collectives, noise=0.03, seed=0, backend="gloo", truth=TRUTH):
    """Measurements made by the formula itself with `backend`'s algorithms, plus noise."""
    rng = np.random.default_rng(seed)
    w = ResultsWriter(path, make_header(command="synthetic", backend=backend, world_size=4,
                                        ranks_per_node=2, hosts=["a", "b"]))
    for c in collectives:
        for g, layout, k, nodes, gpn, running in LAYOUTS:
            for size in 2 ** np.arange(10, 25):
                t = float(collective_time_s(c, size, g, k, truth, groups_per_node=gpn,
                                            library=backend))
                t *= float(np.exp(rng.normal(0, noise)))
                us = t * 1e6
                w.write(Measurement(
                    collective=c, size_bytes=int(size), count=int(size) // 4, dtype="float32",
                    group_size=g, layout=layout, num_groups=running, ranks_per_node=k,
                    nodes=nodes, groups_per_node=gpn, warmup_iters=1, iters=10,
                    time_us_mean=us, time_us_min=us, time_us_max=us, time_us_p50=us,
                    time_us_p99=us, algbw_gbps=size / t / 1e9,
                    busbw_gbps=busbw_gbps(c, size, t, g), wrong=0))
    w.close()


def test_fit_recovers_known_tiers_and_overrides(tmp_path):
    path = tmp_path / "s.jsonl"
    synthetic(path, [Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.ALL_TO_ALL])
    cluster, fit, _, checked = build_profile([str(path)], BASE, name="fitted",
                                             every_other_size=True,
                                             holdout="layout == 'strided'")
    for got, want in zip(cluster.tiers, TRUTH.tiers):
        assert got.bandwidth_bytes_per_s == pytest.approx(want.bandwidth_bytes_per_s, rel=0.05)
        assert got.latency_s == pytest.approx(want.latency_s, rel=0.25)
    links = {link.collective: link for link in cluster.tiers[1].per_collective}
    assert set(links) == {"all_to_all"}  # all-gather follows the tier; all-to-all differs
    assert links["all_to_all"].bandwidth_bytes_per_s == pytest.approx(30e6, rel=0.05)
    assert fit["held_out"]["max_abs_rel_error"] < 0.15
    assert cluster.gpus_per_node == 2 and cluster.gpu == BASE.gpu
    assert checked["held_out"].any()


PLAIN = replace(TRUTH, tiers=(TRUTH.tiers[0], replace(TRUTH.tiers[1], per_collective=())))


def test_gloo_files_are_fitted_with_gloo_algorithms(tmp_path):
    """gloo's broadcast (binomial tree) and reduce-scatter (an all-reduce) move other bytes
    than NCCL's: fitted with gloo's algorithms they need no per-collective override and the
    held-out strided groups are predicted; the same times read as NCCL's would not be."""
    path = tmp_path / "gloo.jsonl"
    collectives = [Collective.ALL_REDUCE, Collective.BROADCAST, Collective.REDUCE_SCATTER]
    synthetic(path, collectives, noise=0.01, truth=PLAIN)
    cluster, fit, _, _ = build_profile([str(path)], BASE, name="gloo", every_other_size=True,
                                       holdout="layout == 'strided'")
    assert all(not tier.per_collective for tier in cluster.tiers)
    assert fit["libraries"] == ["gloo"]
    assert cluster.tiers[1].bandwidth_bytes_per_s == pytest.approx(60e6, rel=0.05)
    assert fit["held_out"]["max_abs_rel_error"] < 0.10
    nccl = tmp_path / "as_nccl.jsonl"
    nccl.write_text(path.read_text().replace('"backend": "gloo"', '"backend": "nccl"'))
    _, wrong, _, _ = build_profile([str(nccl)], BASE, name="nccl", every_other_size=True,
                                   holdout="layout == 'strided'")
    assert wrong["held_out"]["max_abs_rel_error"] > 0.3


def test_gloo_broadcast_by_hand():
    """2 nodes x 2 ranks, 1 MB: a round inside the node, then both ranks of node 0 send the
    whole buffer across at once (gloo/broadcast.cc); strided pairs: one round across, the
    two groups sharing the node's link."""
    size, inter, intra = 1e6, PLAIN.tiers[1], PLAIN.tiers[0]
    node_bw = 2 * inter.bandwidth_bytes_per_s
    world = (intra.latency_s + size / intra.bandwidth_bytes_per_s
             + inter.latency_s + size / (node_bw / 2))
    assert float(collective_time_s(Collective.BROADCAST, size, 4, 2, PLAIN, groups_per_node=1,
                                   library="gloo")) == pytest.approx(world)
    strided = inter.latency_s + size / (node_bw / 2)
    assert float(collective_time_s(Collective.BROADCAST, size, 2, 1, PLAIN, groups_per_node=2,
                                   library="gloo")) == pytest.approx(strided)
    # NCCL pipelines the broadcast: one buffer's time across the node's share of the link.
    assert float(collective_time_s(Collective.BROADCAST, size, 4, 2, PLAIN,
                                   groups_per_node=1)) < world
    ar = collective_time_s(Collective.ALL_REDUCE, size, 4, 2, PLAIN, groups_per_node=1,
                           library="gloo")
    rs = collective_time_s(Collective.REDUCE_SCATTER, size, 4, 2, PLAIN, groups_per_node=1,
                           library="gloo")
    assert float(rs) == pytest.approx(float(ar))
    with pytest.raises(ValueError, match="library"):
        collective_time_s(Collective.BROADCAST, size, 4, 2, PLAIN, library="ucc")


def test_cli_writes_a_profile_the_loaders_read(tmp_path):
    path = tmp_path / "s.jsonl"
    synthetic(path, [Collective.ALL_REDUCE])
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    done = run_module("cost_models.fit", str(path), "-o", str(out), "--plot", str(png))
    assert done.returncode == 0, done.stderr
    profile = load_cluster_profile(out)
    assert profile.cluster.tiers[1].bandwidth_bytes_per_s == pytest.approx(60e6, rel=0.05)
    assert profile.fit["tiers"]["inter_node"]["size_range_bytes"] == [1024, 2 ** 24]
    assert png.stat().st_size > 10_000


def test_bad_files_are_reported_not_crashed_on(tmp_path):
    good, cut, junk = tmp_path / "good.jsonl", tmp_path / "cut.jsonl", tmp_path / "junk.jsonl"
    synthetic(good, [Collective.ALL_REDUCE])
    synthetic(cut, [Collective.ALL_REDUCE], seed=1)
    text = cut.read_text()
    cut.write_text(text[: len(text) // 2])
    junk.write_text("this is not a results file\n")
    out = tmp_path / "c.json"
    done = run_module("cost_models.fit", str(tmp_path), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "junk.jsonl:1: not a bench results file" in done.stderr
    assert "cut.jsonl" in done.stderr and "truncated" in done.stderr
    assert "Traceback" not in done.stderr
    json.loads(out.read_text())
    only_junk = run_module("cost_models.fit", str(junk), "-o", str(tmp_path / "d.json"))
    assert only_junk.returncode == 2
    assert only_junk.stderr.startswith("partune-fit: error: no usable measurements")
    assert not (tmp_path / "d.json").exists()


def test_planning_path_does_not_import_torch_or_mpi():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['mpi4py'] = None; "
            "import bench.records, cost_models.fit, cost_models.fit_plot")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_single_rank_results_are_refused_in_one_line(tmp_path):
    from tests.bench.conftest import REPO

    src = REPO / "results" / "bench" / "local_gloo_4r.jsonl"
    lines = src.read_text().splitlines()
    header, records = lines[0], [json.loads(x) for x in lines[1:]]
    for r in records:
        r.update(group_size=1, num_groups=1, ranks_per_node=1, nodes=1, groups_per_node=1)
        r["busbw_gbps"] = busbw_gbps(Collective(r["collective"]), r["size_bytes"],
                                     r["time_us_mean"] / 1e6, 1)
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join([header] + [json.dumps(r) for r in records]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cost_models.fit", str(one), "-o",
                           str(tmp_path / "p.json")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "partune-fit: error: every measurement is of a single rank, which crosses no link: "
        "run the "
        "benchmark with at least 2 ranks"]
    assert not (tmp_path / "p.json").exists()


def test_cli_prints_the_held_out_error_of_each_collective(tmp_path):
    path = tmp_path / "s.jsonl"
    synthetic(path, [Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.ALL_TO_ALL])
    done = run_module("cost_models.fit", str(path), "-o", str(tmp_path / "c.json"),
                      "--holdout-every-other-size", "--holdout", "layout == 'strided'")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "by collective" in x)
    profile = load_cluster_profile(tmp_path / "c.json")
    by = profile.fit["held_out"]["median_abs_rel_error_by_collective"]
    assert sorted(by) == ["all_gather", "all_reduce", "all_to_all"]
    for name, err in by.items():
        assert f"{name} {err:.1%}" in line
    large = next(x for x in done.stdout.splitlines() if "from 1 MiB" in x)
    by_large = profile.fit["held_out"]["sizes_from_1MiB"]["median_abs_rel_error_by_collective"]
    assert sorted(by_large) == sorted(by)
    for name, err in by_large.items():
        assert f"{name} {err:.1%}" in large


def test_mpi_pinned_algorithms_by_hand():
    """MPICH as the suite pins it: the pairwise reduce-scatter sends every other rank its
    block straight (2 x 2, world of 4: each node sends 2 ranks x 2 remote blocks of S/4 = S
    over its link, where a ring sends 0.75 S); the broadcast is a binomial scatter (the root
    sends S/2 across the network, then S/4 inside its node) and a ring all-gather (0.75 S
    across): 1.25 S on the busiest link, 2 + 3 latency steps. Two strided pairs whose roots
    share node 0 (2 groups per node): each direction carries both groups' S/2 scatter and
    S/2 all-gather blocks, 2 S at the node's rate."""
    size, inter = 4e6, PLAIN.tiers[1]
    node_bw = 2 * inter.bandwidth_bytes_per_s
    rs = float(collective_time_s(Collective.REDUCE_SCATTER, size, 4, 2, PLAIN,
                                 groups_per_node=1, library="mpi"))
    assert rs == pytest.approx(3 * inter.latency_s + size / node_bw)
    ring = float(collective_time_s(Collective.REDUCE_SCATTER, size, 4, 2, PLAIN,
                                   groups_per_node=1, library="nccl"))
    assert ring == pytest.approx(3 * inter.latency_s + 0.75 * size / node_bw)
    nvlink_bw = PLAIN.tiers[0].bandwidth_bytes_per_s
    bcast = float(collective_time_s(Collective.BROADCAST, size, 4, 2, PLAIN,
                                    groups_per_node=1, library="mpi"))
    assert bcast == pytest.approx(5 * inter.latency_s + 1.25 * size / node_bw
                                  + 0.25 * size / nvlink_bw)
    pairs = float(collective_time_s(Collective.BROADCAST, size, 2, 1, PLAIN,
                                    groups_per_node=2, library="mpi"))
    assert pairs == pytest.approx(2 * inter.latency_s + 2 * size / node_bw)


def test_mpi_files_fit_mpich_algorithms_and_flag_unpinned_runs(tmp_path):
    """Times made with MPICH's pinned algorithms are recovered (no override needed for the
    reduce-scatter and broadcast that move other bytes than NCCL's); a file whose header
    lacks the pinned algorithms is fitted but flagged."""
    import json

    from bench.dist import MPICH_ALGORITHMS

    path = tmp_path / "mpi.jsonl"
    collectives = [Collective.ALL_REDUCE, Collective.REDUCE_SCATTER, Collective.BROADCAST]
    synthetic(path, collectives, noise=0.01, backend="mpi", truth=PLAIN)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    pinned = tmp_path / "pinned.jsonl"
    pinned.write_text("\n".join([json.dumps(header | {"env": dict(MPICH_ALGORITHMS)}),
                                 *lines[1:]]) + "\n")
    cluster, fit, _, _ = build_profile([str(pinned)], BASE, name="mpi", every_other_size=True,
                                       holdout="layout == 'strided'")
    assert fit["libraries"] == ["mpi"] and not fit["problems"]
    assert all(not tier.per_collective for tier in cluster.tiers)
    assert cluster.tiers[1].bandwidth_bytes_per_s == pytest.approx(60e6, rel=0.05)
    assert fit["held_out"]["max_abs_rel_error"] < 0.10
    _, unpinned, _, _ = build_profile([str(path)], BASE, name="mpi")
    assert any("without the suite's pinned MPICH algorithms" in p for p in unpinned["problems"])


# --- bad inputs and outputs: one line naming what is wrong, exit 2, nothing written --------


def _fit_cli(capsys, *argv):
    """cost_models.fit.main in this process, numpy warnings made errors: (exit code, stderr
    lines, stdout)."""
    from cost_models.fit import main

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err.strip().splitlines(), out


def _edited(src, dst, number: int, **fields) -> None:
    """dst: src with fields of the record on line `number` replaced."""
    lines = src.read_text().splitlines()
    lines[number - 1] = json.dumps(json.loads(lines[number - 1]) | fields)
    dst.write_text("\n".join(lines) + "\n")


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.jsonl"
    synthetic(path, [Collective.ALL_REDUCE])
    return path


BAD_FIELDS = [("busbw_gbps", "abc"), ("time_us_p50", "abc"), ("group_size", "abc"),
              ("groups_per_node", "abc"), ("nodes", "abc"), ("ranks_per_node", "abc"),
              ("size_bytes", "abc"), ("nodes", None), ("dtype", None), ("layout", "abc"),
              ("count", "abc"), ("group_size", None), ("time_us_p50", 0.0),
              ("time_us_p50", -1.0), ("time_us_p50", float("nan"))]


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_a_bad_field_is_one_line_naming_file_line_and_field(tmp_path, good, capsys, field,
                                                            value):
    bad = tmp_path / "bad.jsonl"
    _edited(good, bad, 5, **{field: value})
    code, err, _ = _fit_cli(capsys, bad, "-o", tmp_path / "c.json")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"partune-fit: error: {bad}:5: field {field!r} must be ")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("line", ["garbage", "[1]", "null", '{"kind": "measurement"}'])
def test_a_corrupt_line_inside_a_file_stops_the_fit(tmp_path, good, capsys, line):
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:4], line, *lines[4:]]) + "\n")
    code, err, _ = _fit_cli(capsys, tmp_path, "-o", tmp_path / "c.json")
    assert code == 2 and len(err) == 1 and err[0].startswith(
        f"partune-fit: error: {bad}:5: "), err
    assert not (tmp_path / "c.json").exists()


def test_a_truncated_last_line_is_one_warning(tmp_path, good, capsys):
    text = good.read_text()
    good.write_text(text[:-30])
    code, err, _ = _fit_cli(capsys, good, "-o", tmp_path / "c.json")
    assert code == 0 and len(err) == 1
    assert err[0].startswith(f"partune-fit: warning: {good}:") and "truncated" in err[0]


def test_a_bad_ranks_per_node_header_is_one_line(tmp_path, good, capsys):
    bad = tmp_path / "bad.jsonl"
    _edited(good, bad, 1, ranks_per_node=0)
    code, err, _ = _fit_cli(capsys, bad, "-o", tmp_path / "c.json")
    assert code == 2 and err == [f"partune-fit: error: {bad}:1: header field 'ranks_per_node' "
                                 "must be an integer >= 1, got 0; repair the header or "
                                 "measure again"]


def test_a_folder_without_results_files_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no results here\n")
    code, err, _ = _fit_cli(capsys, empty, "-o", tmp_path / "c.json")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"partune-fit: error: {empty} holds no .jsonl results files")


@pytest.mark.parametrize("flags, words", [
    (["--name", ""], "--name is empty"),
    (["--name", "  "], "--name is empty"),
    (["--plot", "{tmp}"], "--plot {tmp} is a directory"),
    (["--plot", "{tmp}/fig"], "does not end in an image format"),
    (["--plot", "{tmp}/fig.nope"], "does not end in an image format"),
    (["--plot", "{tmp}/c.json"], "--plot {tmp}/c.json is also -o {tmp}/c.json"),
    (["--plot", "{tmp}/file.txt/fig.png"], "is a file, not a folder"),
])
def test_bad_outputs_are_refused_before_anything_is_written(tmp_path, good, capsys, flags,
                                                            words):
    (tmp_path / "file.txt").write_text("x")
    before = sorted(tmp_path.iterdir())
    flags = [f.format(tmp=tmp_path) for f in flags]
    code, err, _ = _fit_cli(capsys, good, "-o", tmp_path / "c.json", *flags)
    assert code == 2 and len(err) == 1 and words.format(tmp=tmp_path) in err[0], err
    assert sorted(tmp_path.iterdir()) == before


def test_an_output_folder_is_refused(tmp_path, good, capsys):
    code, err, _ = _fit_cli(capsys, good, "-o", tmp_path)
    assert code == 2 and err == [f"partune-fit: error: -o {tmp_path} is a directory; name a "
                                 f"file in it, e.g. {tmp_path / 'cluster.json'}"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_unwritable_plot_leaves_no_profile(tmp_path, good, capsys):
    code, err, _ = _fit_cli(capsys, good, "-o", tmp_path / "k.json", "--plot",
                            "/proc/partune_fit.png")
    assert code == 2 and err == ["partune-fit: error: /proc/partune_fit.png: cannot write "
                                 "(No such file or directory)"]
    assert not (tmp_path / "k.json").exists()


def test_a_failed_profile_leaves_no_plot(tmp_path, good, capsys, monkeypatch):
    import cost_models.loaders
    from cost_models.specs import SpecError

    def refuse(*args, **kwargs):
        raise SpecError("disk full")

    monkeypatch.setattr(cost_models.loaders, "save_cluster", refuse)
    plots = tmp_path / "plots"
    code, err, _ = _fit_cli(capsys, good, "-o", tmp_path / "k.json", "--plot",
                            plots / "fit.png")
    assert code == 2 and err == ["partune-fit: error: disk full"]
    assert list(plots.iterdir()) == []


def test_every_error_is_labelled_with_the_console_script_name(tmp_path, capsys):
    flag = run_module("cost_models.fit", "--no-such-flag")
    assert flag.returncode == 2 and flag.stderr.startswith("partune-fit: error: ")
    code, err, _ = _fit_cli(capsys, tmp_path / "missing.jsonl", "-o", tmp_path / "c.json")
    assert code == 2 and err[0].startswith("partune-fit: error: ")


def test_a_file_named_twice_counts_once(tmp_path, capsys):
    """A file named twice (also inside a folder given) must not weigh double against another
    file: fitting A, B and A, A/, B gives the same profile."""
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    a, b = a_dir / "a.jsonl", tmp_path / "b.jsonl"
    synthetic(a, [Collective.ALL_REDUCE], noise=0.2, seed=1)
    synthetic(b, [Collective.ALL_GATHER], noise=0.2, seed=2)
    once, twice = tmp_path / "once.json", tmp_path / "twice.json"
    assert _fit_cli(capsys, a, b, "-o", once)[0] == 0
    assert _fit_cli(capsys, a, a_dir, str(a), b, "-o", twice)[0] == 0
    first, second = json.loads(once.read_text()), json.loads(twice.read_text())
    assert first["tiers"] == second["tiers"]


def test_a_tier_is_fitted_from_every_collective_when_all_reduce_has_too_few_sizes(tmp_path):
    """All-reduce measured at one size only (here in three files: three rows) cannot tell
    latency from bandwidth; the tier is fitted from every collective's sizes instead."""
    paths = []
    for seed in range(3):
        path = tmp_path / f"s{seed}.jsonl"
        synthetic(path, [Collective.ALL_REDUCE, Collective.ALL_GATHER], noise=0.01, seed=seed,
                  truth=PLAIN)
        header, *records = path.read_text().splitlines()
        kept = [r for r in records if json.loads(r)["collective"] != "all_reduce"
                or json.loads(r)["size_bytes"] == 4096]
        path.write_text("\n".join([header, *kept]) + "\n")
        paths.append(str(path))
    cluster, _, _, _ = build_profile(paths, BASE, name="one_size")
    for got, want in zip(cluster.tiers, PLAIN.tiers):
        assert got.bandwidth_bytes_per_s == pytest.approx(want.bandwidth_bytes_per_s, rel=0.1)
