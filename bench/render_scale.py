"""Chart for ``bench/bench_scale.py`` results: CPU per process against the number of processes.

python bench/render_scale.py bench/results/scale.json --out docs   # writes docs/bench_scale.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench_scale import TARGET_CPU, TARGET_IDLE

# Sync protocol v1 (0.1) on the same workload, as issue 10 measured it before v2:
# processes -> % of a core per process. At 32 processes with sync the machine saturated.
V1_SYNC = {4: 3.5, 16: 8.4}
V1_IDLE = {4: 0.7, 16: 0.85, 32: 0.9}

COLORS = {"sync": "#4C72B0", "no_sync": "#55A868", "idle": "#DD8452", "v1": "#999999"}


def render_scale(results: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results["rows"], key=lambda r: int(r["processes"]))
    sizes = [int(r["processes"]) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 5.5))

    def line(field: str, label: str, color: str) -> None:
        values = [float(r[field]) for r in rows]
        ax.plot(sizes, values, marker="o", color=color, label=label)
        for x, y in zip(sizes, values, strict=True):
            ax.annotate(
                f"{y:.2f}%" if y >= 0.1 else f"{y:.3f}%",
                (x, y),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )

    line("cpu_sync", "with sync (v2), hits included", COLORS["sync"])
    line("cpu_no_sync", "no sync (local counts only), same hits", COLORS["no_sync"])
    line("cpu_idle", "idle (v2): no hits for 5 s, windows live", COLORS["idle"])
    ax.plot(
        *zip(*sorted(V1_SYNC.items()), strict=True),
        linestyle="--",
        marker="x",
        color=COLORS["v1"],
        label="with sync, v1 (0.1); 32 saturated the machine",
    )
    ax.plot(
        *zip(*sorted(V1_IDLE.items()), strict=True),
        linestyle=":",
        marker="x",
        color=COLORS["v1"],
        label="idle, v1 (0.1)",
    )
    first = True
    for size, target in sorted(TARGET_CPU.items()):
        ax.scatter(
            [size],
            [target],
            marker="_",
            s=600,
            linewidths=2,
            color="red",
            label="target with sync" if first else "_nolegend_",
            zorder=3,
        )
        first = False
    for size, target in sorted(TARGET_IDLE.items()):
        ax.scatter(
            [size],
            [target],
            marker="_",
            s=600,
            linewidths=2,
            color="purple",
            label="target idle",
            zorder=3,
        )

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({*sizes, *TARGET_CPU, *TARGET_IDLE}))
    ax.set_xticklabels([str(s) for s in sorted({*sizes, *TARGET_CPU, *TARGET_IDLE})])
    ax.set_xlabel("processes on one Redis")
    ax.set_ylabel("CPU per process, % of one core (log scale)")
    ax.set_title(
        f"Sync cost at scale: {results.get('hits_per_second', 50):g} hits/s per process, "
        "pub/sub layer"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    machine = results.get("machine", {})
    agreed = all(r.get("agree") for r in rows)
    fig.suptitle(
        f"{machine.get('cpu', '?')}, {machine.get('nproc', '?')} cores; "
        f"{results.get('load_seconds', '?')} s of load, {results.get('idle_seconds', '?')} s idle; "
        + (
            "every run agreed on the exact totals 1 s after the load"
            if agreed
            else "NOT every run agreed on the exact totals"
        ),
        fontsize=8,
        y=0.995,
    )
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench_scale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render bench_scale.py results as a PNG chart.")
    parser.add_argument("results", type=Path, help="a results file written by bench_scale.py")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="chart directory")
    args = parser.parse_args(argv)
    print(render_scale(json.loads(args.results.read_text()), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
