"""Fit a cluster profile (per-tier latency and bandwidth) to benchmark results files.

    partune-fit results/bench/fabric_*.jsonl -o results/clusters/fabric.json \\
        --base-cluster dgx-h100 --plot results/clusters/fabric_fit.png

The model is `cost_models.comm.collective_time_s` itself, with the algorithms of the library
each file measured (its header's backend: gloo's broadcast and reduce-scatter move other
bytes than NCCL's), so the tiers describe the fabric: tier 0 (inside a node) and tier 1
(across nodes) get latency_s and bandwidth_bytes_per_s chosen by least squares on the
logarithm of time (relative errors, so 8 B and 64 MiB points weigh alike; Huber-reweighted
so a few noisy points cannot drag the fit), with each measurement's own group size, ranks
per node and concurrent groups per node. The tier values
come from all-reduce when it was measured (else from every collective); another collective
whose own fit differs by more than OVERRIDE_TOLERANCE gets a per-collective override. The GPU
comes from a base preset; gpus_per_node is the measured ranks per node.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import BadRecordError, Collective, ResultsError, read_results
from cost_models.atomic import commit, distinct_files, output_target
from cost_models.cli_args import Parser
from cost_models.comm import LIBRARIES, collective_time_s
from cost_models.csv_text import check_header
from cost_models.specs import (
    LINK_BANDWIDTH_RANGE_BYTES_PER_S,
    MAX_LINK_LATENCY_S,
    ClusterSpec,
    CollectiveLink,
    LinkTier,
    SpecError,
)

PROG = "partune-fit"  # the console script (pyproject.toml); also python -m cost_models.fit
EXIT_USAGE = 2
OVERRIDE_TOLERANCE = 0.10  # relative difference in latency or bandwidth worth an override
MIN_POINTS = 3  # a (collective, tier) needs this many sizes to be fitted on its own
MIN_TIER_SIZES = 2  # a tier's latency and bandwidth need at least this many distinct sizes
TIER_NAMES = ("intra_node", "inter_node")
STATISTICS = ("p50", "mean", "min")
LARGE_BYTES = 1 << 20  # errors are also reported from here up (bandwidth-bound sizes)


class FitError(ValueError):
    """The inputs cannot be fitted; the message is the one line the user sees."""


def load_frame(paths: list[str]) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """Measurements of every readable file (one row each), their headers, and one line per
    problem (a file that is not a results file, a last line cut off by an interrupted run, a
    stopped run, failed correctness checks). A corrupt record inside a file raises FitError:
    its measurements cannot be trusted to be what the file says."""
    frames, headers, problems = [], [], []
    for path in _expand(paths):
        try:
            results = read_results(path)
        except BadRecordError as exc:
            raise FitError(str(exc)) from None
        except ResultsError as exc:
            problems.append(f"skipped {exc}")
            continue
        problems.extend(results.problems)
        if not results.measurements:
            problems.append(f"skipped {path}: no measurements")
            continue
        rows = pd.DataFrame([asdict(m) for m in results.measurements])
        rows["collective"] = rows["collective"].map(lambda c: Collective(c).value)
        rows["file"] = path
        rows["gpus_per_node"] = results.header.get("ranks_per_node", 1)  # read_results checked
        rows["library"] = library_of(results.header)
        if rows["library"].iloc[0] == "mpi" and not mpi_algorithms_pinned(results.header):
            problems.append(f"{path}: MPI run without the suite's pinned MPICH algorithms "
                            "(older file or another MPI): fitted as if ring all-reduce, "
                            "pairwise reduce-scatter etc. ran (bench.dist.MPICH_ALGORITHMS)")
        bad = rows["wrong"] != 0
        if bad.all():
            problems.append(f"skipped {path}: every measurement failed its correctness check "
                            "(wrong != 0); find the cause and re-run the benchmark")
            continue
        if bad.any():
            problems.append(f"{path}: dropped {int(bad.sum())} measurements with wrong results")
        frames.append(rows[~bad])
        headers.append(results.header)
    if not frames:
        why = f": {problems[0]}" + (f" (and {len(problems) - 1} more)" if problems[1:] else "")
        raise FitError("no usable measurements in " + ", ".join(paths) + why)
    return pd.concat(frames, ignore_index=True), headers, problems


def library_of(header: dict) -> str:
    """Whose collective algorithms the file measured: its backend (nccl, gloo, mpi)."""
    backend = str(header.get("backend") or _mapping(header, "args").get("backend") or "nccl")
    return backend if backend in LIBRARIES else "nccl"


def _mapping(header: dict, key: str) -> dict:
    """A header block that should be an object ({} when absent or malformed)."""
    value = header.get(key)
    return value if isinstance(value, dict) else {}


def _hosts(header: dict) -> list:
    hosts = header.get("hosts")
    return hosts if isinstance(hosts, list) else []


def mpi_algorithms_pinned(header: dict) -> bool:
    """Whether an MPI file's header records the algorithms the suite pins in MPICH."""
    from bench.dist import MPICH_ALGORITHMS

    env = _mapping(header, "env")
    return all(env.get(name) == value for name, value in MPICH_ALGORITHMS.items())


def _expand(paths: list[str]) -> list[str]:
    """The files named and the .jsonl files of the folders named; a folder without any is
    an error (it was most likely the wrong folder)."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            out.append(p)
            continue
        found = sorted(map(str, path.glob("*.jsonl")))
        if not found:
            raise FitError(f"{p} holds no .jsonl results files; name the folder or files "
                           "that `partune-bench -o` wrote")
        out.extend(found)
    return _once(out)


def _once(paths: list[str]) -> list[str]:
    """Each file once, however it was named (a file given twice, or inside a folder also
    given, would count its measurements twice in the fit)."""
    seen, out = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# Physical bounds of a fitted tier, (latency_s, bandwidth_bytes_per_s): 10 ns-10 s and
# 1 kB/s-100 TB/s, what a profile may hold (specs). A tier fit that ends on a bound was not
# identifiable from the sizes measured (e.g. only small messages: no bandwidth information)
# and is refused (bound_problem), but for a latency on its lower bound.
BOUNDS = (np.array([1e-8, LINK_BANDWIDTH_RANGE_BYTES_PER_S[0]]),
          np.array([MAX_LINK_LATENCY_S, LINK_BANDWIDTH_RANGE_BYTES_PER_S[1]]))
LOG_BOUNDS = (np.log(BOUNDS[0]), np.log(BOUNDS[1]))


def clip_params(params: np.ndarray) -> np.ndarray:
    return np.clip(params, *LOG_BOUNDS)


def link_values(params: np.ndarray) -> np.ndarray:
    """(latency_s, bandwidth_bytes_per_s) = exp(params), within BOUNDS (the exp of a log
    bound can round just past the bound)."""
    return np.clip(np.exp(clip_params(params)), *BOUNDS)


def bound_problem(name: str, params: np.ndarray, rows: pd.DataFrame) -> str | None:
    """What a fit of tier `name` to `rows` that ends on a bound did not determine (None: it
    ends inside them). A latency on its lower bound is kept: large sizes alone, whose time
    the bandwidth sets, say only that the latency is small."""
    low = np.isclose(params, LOG_BOUNDS[0], rtol=0, atol=1e-9) & [False, True]
    on_bound = low | np.isclose(params, LOG_BOUNDS[1], rtol=0, atol=1e-9)
    for which, unit, value, on in zip(("latency", "bandwidth"), ("s", "B/s"),
                                      link_values(params), on_bound):
        if on:
            return (f"the {name} measurements ({rows['size_bytes'].min()}-"
                    f"{rows['size_bytes'].max()} B) do not determine its {which} (the fit ends "
                    f"at its bound, {value:g} {unit}); fit a wider range of sizes "
                    "(partune-bench -b 8 -e 64M, or hold out less)")
    return None


def fit_cluster(cluster: ClusterSpec, tier_index: int, params: np.ndarray) -> ClusterSpec:
    """`cluster` with tier `tier_index` given (latency_s, bandwidth) = exp(params)."""
    tiers = list(cluster.tiers)
    lat, bw = link_values(params)
    tiers[tier_index] = replace(tiers[tier_index], latency_s=float(lat),
                                bandwidth_bytes_per_s=float(bw))
    return replace(cluster, tiers=tuple(tiers))


def predict_s(cluster: ClusterSpec, frame: pd.DataFrame) -> np.ndarray:
    """collective_time_s for every row (each with its own placement)."""
    out = np.empty(len(frame))
    for (name, lib), rows in frame.groupby(["collective", "library"]):
        idx = frame.index.get_indexer(rows.index)
        out[idx] = collective_time_s(Collective(name), rows["size_bytes"].to_numpy(float),
                                     rows["group_size"].to_numpy(float),
                                     rows["ranks_per_node"].to_numpy(float), cluster,
                                     groups_per_node=rows["groups_per_node"].to_numpy(float),
                                     library=str(lib))
    return out


def _least_squares(residual, x0: np.ndarray, iters: int = 60) -> np.ndarray:
    """Levenberg-Marquardt with a forward-difference Jacobian (few parameters)."""
    x, damping = np.asarray(x0, float), 1e-2
    r = residual(x)
    for _ in range(iters):
        jac = np.column_stack([(residual(x + h) - r) / 1e-6 for h in np.eye(len(x)) * 1e-6])
        normal = jac.T @ jac
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -jac.T @ r)
        step = clip_params(x + step) - x
        trial = residual(x + step)
        if trial @ trial < r @ r:
            x, r, damping = x + step, trial, damping / 3
            if np.abs(step).max() < 1e-7:
                break
        else:
            damping *= 4
    return x


def _huber_weights(r: np.ndarray) -> np.ndarray:
    """Huber (1964) weights, k = 1.345 robust standard deviations (MAD): points far off the
    curve (a noisy size on a busy host) count less, so they cannot drag the bandwidth."""
    scale = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-3
    return np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(r), 1e-12))


def _fit_tier(cluster: ClusterSpec, tier_index: int, rows: pd.DataFrame,
              measured_s: np.ndarray) -> np.ndarray:
    """log(latency_s), log(bandwidth) of one tier that best reproduce `rows`: robust least
    squares on log time (iteratively reweighted)."""
    busbw = rows["busbw_gbps"].to_numpy() * 1e9
    x = np.log([max(measured_s.min() / 4, 1e-7), max(np.quantile(busbw, 0.9), 1e3)])
    weights = np.ones(len(rows))

    def residual(x):
        return np.log(predict_s(fit_cluster(cluster, tier_index, x), rows)) - np.log(measured_s)

    for _ in range(4):
        x = _least_squares(lambda p, w=np.sqrt(weights): w * residual(p), x)
        weights = _huber_weights(residual(x))
    return x


def _tier_rows(frame: pd.DataFrame, tier_index: int) -> pd.Series:
    return (frame["nodes"] > 1) if tier_index else (frame["nodes"] == 1)


def _sizes(rows: pd.DataFrame) -> int:
    """How many distinct message sizes `rows` measured."""
    return int(rows["size_bytes"].nunique())


def check_enough_sizes(train: pd.DataFrame, held_out: bool) -> None:
    """FitError when a tier to be fitted has fewer than MIN_TIER_SIZES sizes: one size
    cannot tell latency from bandwidth."""
    for t, name in enumerate(TIER_NAMES):
        rows = train[_tier_rows(train, t)]
        if not rows.empty and _sizes(rows) < MIN_TIER_SIZES:
            fix = "hold out less" if held_out else "measure a range: partune-bench -b 8 -e 64M"
            raise FitError(f"the {name} measurements to fit are of {_sizes(rows)} message "
                           f"size; latency and bandwidth need {MIN_TIER_SIZES} or more "
                           f"distinct sizes; {fix}")


def skeleton(base: ClusterSpec, gpus_per_node: int, name: str) -> ClusterSpec:
    """Two tiers to be fitted (inside a node, across nodes); the GPU and the host's seconds
    per operator from `base`."""
    tiers = (LinkTier(name=TIER_NAMES[0], domain_gpus=gpus_per_node, latency_s=1e-5,
                      bandwidth_bytes_per_s=1e9),
             LinkTier(name=TIER_NAMES[1], domain_gpus=0, latency_s=1e-5,
                      bandwidth_bytes_per_s=1e9))
    nics = base.nics_per_node if gpus_per_node == base.gpus_per_node else 1
    return ClusterSpec(name=name, gpu=base.gpu, gpus_per_node=gpus_per_node,
                       nics_per_node=nics, nic_bandwidth_bytes_per_s=1e9, tiers=tiers,
                       source="fitted", host_s_per_op=base.host_s_per_op)


def fit_tiers(frame: pd.DataFrame, cluster: ClusterSpec, statistic: str = "p50") -> ClusterSpec:
    """Fit every tier that has measurements: tier 0 first, since a spanning group is capped by
    the intra-node bandwidth too; then per-collective overrides where they differ."""
    measured = frame[f"time_us_{statistic}"].to_numpy() * 1e-6
    for t in (0, 1):
        mask = _tier_rows(frame, t).to_numpy()
        if not mask.any():
            continue
        ref = mask & (frame["collective"] == Collective.ALL_REDUCE.value).to_numpy()
        use = ref if _sizes(frame[ref]) >= MIN_POINTS else mask
        params = _fit_tier(cluster, t, frame[use], measured[use])
        problem = bound_problem(TIER_NAMES[t], params, frame[use])
        if problem:
            raise FitError(problem)
        cluster = fit_cluster(cluster, t, params)
        cluster = _with_overrides(cluster, t, frame[mask], measured[mask])
    return cluster


def _with_overrides(cluster: ClusterSpec, t: int, rows: pd.DataFrame,
                    measured_s: np.ndarray) -> ClusterSpec:
    tier, links = cluster.tiers[t], []
    for name, part in rows.groupby("collective"):
        if name == Collective.ALL_REDUCE.value or _sizes(part) < MIN_POINTS:
            continue
        own = link_values(_fit_tier(cluster, t, part,
                                    measured_s[rows.index.get_indexer(part.index)]))
        base = np.array([tier.latency_s, tier.bandwidth_bytes_per_s])
        if np.any(np.abs(own / base - 1) > OVERRIDE_TOLERANCE):
            links.append(CollectiveLink(collective=str(name), latency_s=float(own[0]),
                                        bandwidth_bytes_per_s=float(own[1])))
    tiers = list(cluster.tiers)
    tiers[t] = replace(tier, per_collective=tuple(links))
    return replace(cluster, tiers=tuple(tiers))


def residuals(cluster: ClusterSpec, frame: pd.DataFrame, statistic: str = "p50") -> pd.DataFrame:
    """frame plus predicted_s, measured_s and rel_error = predicted / measured - 1."""
    out = frame.copy()
    out["measured_s"] = frame[f"time_us_{statistic}"].to_numpy() * 1e-6
    out["predicted_s"] = predict_s(cluster, frame)
    out["rel_error"] = out["predicted_s"] / out["measured_s"] - 1
    return out


def error_summary(checked: pd.DataFrame) -> dict:
    err = checked["rel_error"].abs()
    large = checked["size_bytes"] >= LARGE_BYTES
    return {"points": int(len(checked)), "median_abs_rel_error": round(float(err.median()), 4),
            "max_abs_rel_error": round(float(err.max()), 4),
            "median_abs_rel_error_by_collective": _median_by_collective(checked),
            "sizes_from_1MiB": {"points": int(large.sum()),
                                "median_abs_rel_error": _round(err[large].median()),
                                "max_abs_rel_error": _round(err[large].max()),
                                "median_abs_rel_error_by_collective":
                                    _median_by_collective(checked[large])}}


def _median_by_collective(checked: pd.DataFrame) -> dict[str, float]:
    return {name: round(float(part.abs().median()), 4)
            for name, part in checked.groupby("collective")["rel_error"]}


def _round(value: float) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)


def split_holdout(frame: pd.DataFrame, every_other_size: bool, query: str | None):
    """(fit rows, held-out rows): every other size of each series and/or rows matching a
    pandas query (e.g. "layout == 'strided'") are kept out of the fit to test prediction."""
    held = pd.Series(False, index=frame.index)
    if every_other_size:
        series = ["file", "collective", "dtype", "group_size", "layout", "num_groups"]
        rank = frame.groupby(series)["size_bytes"].rank(method="dense").astype(int)
        held |= rank % 2 == 0
    if query:
        try:
            held |= frame.eval(query).astype(bool)
        except Exception as exc:
            raise FitError(f"--holdout {query!r} is not a valid pandas expression over the "
                           f"columns {', '.join(frame.columns)}: {exc}") from None
    if held.all():
        raise FitError("the hold-out leaves nothing to fit; hold out less")
    return frame[~held], frame[held]


def tier_summary(cluster: ClusterSpec, frame: pd.DataFrame) -> dict:
    out = {}
    for t, tier in enumerate(cluster.tiers):
        rows = frame[_tier_rows(frame, t)]
        if rows.empty:
            continue
        out[tier.name] = {"latency_s": tier.latency_s,
                          "bandwidth_bytes_per_s": tier.bandwidth_bytes_per_s,
                          "node_bandwidth_bytes_per_s": tier.bandwidth_bytes_per_s
                          * cluster.gpus_per_node if t else None,
                          "points": int(len(rows)),
                          "size_range_bytes": [int(rows["size_bytes"].min()),
                                               int(rows["size_bytes"].max())],
                          "collectives": sorted(rows["collective"].unique())}
    return out


def build_profile(paths: list[str], base: ClusterSpec, *, name: str, statistic: str = "p50",
                  every_other_size: bool = False, holdout: str | None = None):
    """(cluster, fit block, provenance, checked rows) for results files `paths`."""
    frame, headers, problems = load_frame(paths)
    alone = frame["group_size"] < 2
    if alone.all():
        raise FitError("every measurement is of a single rank, which crosses no link: "
                       "run the benchmark with at least 2 ranks")
    if alone.any():
        problems.append(f"dropped {int(alone.sum())} single-rank measurements (no link)")
        frame = frame[~alone].reset_index(drop=True)
    gpn = sorted(frame["gpus_per_node"].unique())
    if len(gpn) != 1:
        raise FitError(f"the files were measured with different ranks per node {gpn}; fit "
                       "one node shape at a time")
    train, test = split_holdout(frame, every_other_size, holdout)
    check_enough_sizes(train, held_out=not test.empty)
    cluster = fit_tiers(train.reset_index(drop=True), skeleton(base, int(gpn[0]), name),
                        statistic)
    node_bw = cluster.tiers[1].bandwidth_bytes_per_s * cluster.gpus_per_node
    cluster = replace(cluster, nic_bandwidth_bytes_per_s=node_bw / cluster.nics_per_node,
                      source=f"fitted to {len(frame)} measurements; gpu from {base.name}")
    checked = residuals(cluster, frame, statistic)
    checked["held_out"] = checked.index.isin(test.index)
    fit = {"statistic": f"time_us_{statistic}", "model": "cost_models.comm.collective_time_s",
           "libraries": sorted(set(frame["library"])),  # whose algorithms the fit assumed
           "tiers": tier_summary(cluster, train),
           "residuals": error_summary(checked[~checked["held_out"]]),
           "held_out": error_summary(checked[checked["held_out"]]) if len(test) else None,
           "holdout_rule": {"every_other_size": every_other_size, "query": holdout},
           "problems": problems}
    provenance = {"files": sorted(set(frame["file"])), "base_cluster": base.name,
                  "commands": [h.get("command") for h in headers],
                  "hosts": sorted({str(x) for h in headers for x in _hosts(h)}),
                  "fabric": next((h["fabric"] for h in headers if h.get("fabric")), None)}
    return cluster, fit, provenance, checked


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="results files (.jsonl) or folders of them")
    p.add_argument("-o", "--output", required=True, help="cluster profile to write (.json)")
    p.add_argument("--base-cluster", default="dgx-h100",
                   help="preset (or profile) the GPU spec comes from")
    p.add_argument("--name", default=None, help="cluster name (default: output file stem)")
    p.add_argument("--statistic", choices=STATISTICS, default="p50",
                   help="per-point time to fit (default p50: robust to noisy iterations)")
    p.add_argument("--holdout-every-other-size", action="store_true",
                   help="fit on half the sizes, report the error on the other half")
    p.add_argument("--holdout", default=None,
                   help="pandas expression selecting rows kept out of the fit, "
                        "e.g. \"layout == 'strided'\"")
    p.add_argument("--plot", default=None, help="predicted-vs-measured PNG to write")
    p.add_argument("--gemm", default=None,
                   help="GEMM results CSV (python -m bench.gemm): fit the GPU's compute-"
                        "efficiency curve from it instead of the shipped H100 curve")
    p.add_argument("--host-layers", nargs="+", default=None, metavar="CSV",
                   help="layer timings of this cluster's nodes (python -m bench.megatron_layer"
                        "): store their host seconds per operator in the profile")
    return p


def with_measured_gemm(cluster: ClusterSpec, path: str) -> tuple[ClusterSpec, dict]:
    """The cluster whose GPU carries the GEMM curve fitted to `path` (bf16 products)."""
    from cost_models.gemm_curve import fit_gemm_curve, with_curve

    check_header(path)
    try:
        curve, errors = fit_gemm_curve(Path(path), cluster.gpu.peak_bf16_flops)
    except (KeyError, ValueError) as exc:
        raise FitError(f"{path}: not a GEMM results CSV with columns m,k,n,time_s ({exc})")
    gpu = with_curve(cluster.gpu, curve)
    summary = {"file": str(path), "max_fraction": curve.max_fraction, "k_half": curve.k_half,
               "overhead_s": curve.overhead_s,
               "mean_abs_rel_error": float(abs(errors).mean()), "points": len(errors)}
    return replace(cluster, gpu=gpu), summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        cluster, fit, provenance, checked = fit_from_args(args)
        write_outputs(args, cluster, fit, provenance, checked)
    except (FitError, SpecError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for line in fit["problems"]:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    _print_summary(cluster, fit, args.output)
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before fitting, a name or output paths that cannot be right: an output that
    names an input or the other output would replace it."""
    if args.name is not None and not args.name.strip():
        raise FitError("--name is empty; give the cluster a name, or leave --name out to "
                       "name it after the output file")
    _check_file_target("-o", args.output, "cluster.json")
    inputs = [("the results file", path) for path in _expand(args.results)]
    inputs += [("--host-layers", path) for path in args.host_layers or ()]
    distinct_files([("-o", args.output), ("--plot", args.plot)],
                   inputs + [("--gemm", args.gemm)])
    if args.plot is None:
        return
    _check_file_target("--plot", args.plot, "fit.png")
    from cost_models.fit_plot import image_formats

    if Path(args.plot).suffix.lstrip(".").lower() not in image_formats():
        raise FitError(f"--plot {args.plot} does not end in an image format matplotlib "
                       f"writes; name it e.g. {Path(args.plot).with_suffix('.png')} (or "
                       ".pdf, .svg)")


def _check_file_target(flag: str, path: str, example: str) -> None:
    if not path.strip():
        raise FitError(f"{flag} is empty; name the file to write, e.g. {example}")
    if Path(path).is_dir():
        raise FitError(f"{flag} {path} is a directory; name a file in it, e.g. "
                       f"{Path(path) / example}")
    folder = next(p for p in Path(path).absolute().parents if p.exists())
    if not folder.is_dir():
        raise FitError(f"{flag} {path}: {folder} is a file, not a folder; choose another path")
    output_target(path)  # a device or pipe would be replaced (cost_models.atomic)


def fit_from_args(args: argparse.Namespace):
    """build_profile (plus the measured GEMM curve) for the command line `args`."""
    from cost_models.loaders import load_cluster

    base = load_cluster(args.base_cluster)
    cluster, fit, provenance, checked = build_profile(
        args.results, base, name=args.name or Path(args.output).stem,
        statistic=args.statistic, every_other_size=args.holdout_every_other_size,
        holdout=args.holdout)
    if args.gemm:
        cluster, fit["gemm_curve"] = with_measured_gemm(cluster, args.gemm)
    if args.host_layers:
        from cost_models.host_layers import with_measured_host

        cluster, fit["host"] = with_measured_host(cluster, args.host_layers)
    return cluster, fit, provenance, checked


def write_outputs(args: argparse.Namespace, cluster: ClusterSpec, fit: dict,
                  provenance: dict, checked: pd.DataFrame) -> None:
    """The plot is drawn into a temporary file first, then the profile is written, then the
    plot committed into place: a failure at any step leaves neither output behind."""
    from cost_models.fit_plot import render_plot
    from cost_models.loaders import save_cluster

    drawn = render_plot(checked, args.plot, title=cluster.name) if args.plot else None
    try:
        save_cluster(cluster, args.output, provenance=provenance, fit=fit)
    except BaseException:
        if drawn is not None:
            drawn.unlink(missing_ok=True)
        raise
    if drawn is not None:
        commit(drawn, args.plot)


def _print_summary(cluster: ClusterSpec, fit: dict, output: str) -> None:
    for name, t in fit["tiers"].items():
        node = t["node_bandwidth_bytes_per_s"]
        extra = f", node {node / 1e6:.1f} MB/s" if node else ""
        print(f"{name}: latency {t['latency_s'] * 1e6:.1f} us, bandwidth "
              f"{t['bandwidth_bytes_per_s'] / 1e6:.1f} MB/s per rank{extra} "
              f"({t['points']} points, {t['size_range_bytes'][0]}-{t['size_range_bytes'][1]} B)")
    for tier in cluster.tiers:
        for link in tier.per_collective:
            print(f"  {tier.name} override {link.collective}: {link.latency_s * 1e6:.1f} us, "
                  f"{link.bandwidth_bytes_per_s / 1e6:.1f} MB/s")
    r, h = fit["residuals"], fit["held_out"]
    print(f"fit residuals: median |err| {r['median_abs_rel_error']:.1%}, max "
          f"{r['max_abs_rel_error']:.1%} over {r['points']} points")
    if h:
        print(f"held out: median |err| {h['median_abs_rel_error']:.1%}, max "
              f"{h['max_abs_rel_error']:.1%} over {h['points']} points")
        large = h["sizes_from_1MiB"]["median_abs_rel_error_by_collective"]
        for label, by in (("", h["median_abs_rel_error_by_collective"]), (" from 1 MiB", large)):
            if by:
                print(f"  held out{label}, median |err| by collective: "
                      + ", ".join(f"{name} {err:.1%}" for name, err in sorted(by.items())))
    if "host" in fit:
        print(f"host: {fit['host']['host_s_per_op'] * 1e6:.1f} us per operator "
              f"({', '.join(fit['host']['layers'])} layers)")
    print(f"wrote {output}")


if __name__ == "__main__":
    sys.exit(main())
