"""Bus bandwidth vs message size, one PNG per collective, one line per group layout.

    python -m bench.plot results/bench/fabric_2x2_1gbit.jsonl -o results/bench/plots
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.records import ResultsError, read_results
from cost_models.cli_args import Parser

EXIT_USAGE = 2


def series(paths: list[str]) -> tuple[dict, list[str]]:
    """{collective: {label: [(size_bytes, busbw_gbps), ...]}} and one line per problem."""
    out: dict = {}
    problems: list[str] = []
    for path in paths:
        try:
            res = read_results(path)
        except ResultsError as exc:
            problems.append(str(exc))
            continue
        problems.extend(res.problems)
        tag = Path(path).stem if len(paths) > 1 else ""
        for m in res.measurements:
            label = (f"{tag} g={m.group_size} {m.layout} x{m.num_groups} {m.dtype} "
                     f"({m.nodes} node{'s' if m.nodes > 1 else ''})").strip()
            out.setdefault(m.collective.value, {}).setdefault(label, []).append(
                (m.size_bytes, m.busbw_gbps))
    return out, problems


def plot(data: dict, folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(folder).mkdir(parents=True, exist_ok=True)
    written = []
    for collective, lines in sorted(data.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, points in sorted(lines.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=label)
        ax.set(xscale="log", xlabel="size (B)", ylabel="busbw (GB/s, nccl-tests definition)",
               title=f"{collective}: bus bandwidth vs size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = str(Path(folder) / f"busbw_{collective}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.plot", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="results files (.jsonl)")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    args = p.parse_args(argv)
    data, problems = series(args.results)
    for line in problems:
        print(f"plot: warning: {line}", file=sys.stderr)
    if not data:
        print("plot: error: no measurements to plot", file=sys.stderr)
        return EXIT_USAGE
    for path in plot(data, args.output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
