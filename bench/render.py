"""Charts for ``bench/bench_http.py`` results: throughput and p99, and admitted vs exact.

``bench_http.py`` calls this itself; to re-render from a results file::

    python bench/render.py bench/results/http.json --out docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# In the tables, not the charts: the repeated baseline only shows how much the load moved.
HIDDEN = {"baseline_again"}
COLORS = {"uvicorn": "#4C72B0", "gunicorn": "#DD8452"}
SHORT = {
    "baseline": "no limiter\n(baseline)",
    "eventual": "dratelimit\neventual\n(batched)",
    "eventual_pubsub": "dratelimit\neventual\n(batched, pubsub\nlayer)",
    "eventual_0": "dratelimit\neventual\nSYNC_INTERVAL=0",
    "strict": "dratelimit\nstrict\n(django-redis)",
    "dr_redis": "django-ratelimit\ndjango-redis",
    "dr_locmem": "django-ratelimit\nLocMemCache",
}


def _subtitle(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    return (
        f"{machine.get('cpu', '?')}, {machine.get('nproc', '?')} cores; "
        f"{results.get('servers', 3)} server processes; {results.get('mode', '')} mode; "
        f"load {results.get('loader', '')}"
    )


def _variants(rows_by_kind: dict[str, list[dict[str, Any]]]) -> list[str]:
    names: list[str] = []
    for rows in rows_by_kind.values():
        for row in rows:
            if row["variant"] in HIDDEN or row.get("skipped"):
                continue
            if row["variant"] not in names:
                names.append(row["variant"])
    return names


def _value(rows: list[dict[str, Any]], variant: str, field: str) -> float | None:
    for row in rows:
        if row["variant"] == variant and not row.get("skipped"):
            value = row.get(field)
            return None if value is None else float(value)
    return None


def _bars(
    ax: Any,
    rows_by_kind: dict[str, list[dict[str, Any]]],
    variants: list[str],
    field: str,
    fmt: str,
    inside: bool = False,
) -> None:
    kinds = list(rows_by_kind)
    width = 0.8 / max(len(kinds), 1)
    for i, kind in enumerate(kinds):
        xs, ys = [], []
        for j, variant in enumerate(variants):
            value = _value(rows_by_kind[kind], variant, field)
            if value is not None:
                xs.append(j + (i - (len(kinds) - 1) / 2) * width)
                ys.append(value)
        bars = ax.bar(xs, ys, width, label=kind, color=COLORS.get(kind))
        labels = [fmt.format(y) for y in ys]
        if inside:  # clear of the markers drawn just above the bars
            ax.bar_label(bars, labels=labels, fontsize=8, label_type="center", color="white")
        else:
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([SHORT.get(v, v) for v in variants], fontsize=8)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def render_charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    throughput: dict[str, list[dict[str, Any]]] = results.get("throughput", {})
    variants = _variants(throughput)
    if variants:
        fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 12))
        _bars(ax1, throughput, variants, "rps", "{:,.0f}")
        ax1.set_ylabel("requests per second\n(higher is better)")
        ax1.set_title("Throughput: same view, only the limiter differs")
        ax1.legend()
        _bars(ax2, throughput, variants, "vs_baseline", "{:.2f}")
        ax2.axhline(1.0, color="gray", linewidth=1)
        ax2.axhline(0.9, color="gray", linewidth=1, linestyle=":", label="90% of the baseline")
        ax2.set_ylabel("throughput / baseline\n(higher is better)")
        ax2.set_title(
            "Throughput relative to no limiter, each against the baseline run just before it "
            "on the same servers",
            fontsize=10,
        )
        ratios = [float(r.get("vs_baseline") or 0) for rows in throughput.values() for r in rows]
        ax2.set_ylim(0, max([1.0, *ratios]) * 1.3)  # room for the legend above the bars
        ax2.legend(fontsize=8, ncol=3, loc="upper center")
        _bars(ax3, throughput, variants, "p99_ms", "{:.1f}")
        ax3.set_ylabel("p99 latency, ms\n(lower is better)")
        ax3.set_title("Latency, 99th percentile")
        ax3.legend()
        fig.suptitle(_subtitle(results), fontsize=8, y=0.995)
        fig.tight_layout()
        path = out_dir / "bench_throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    accuracy: dict[str, list[dict[str, Any]]] = results.get("accuracy", {})
    variants = _variants(accuracy)
    if variants:
        limit = int(results.get("accuracy_limit", 100))
        servers = int(results.get("servers", 3))
        requests = int(results.get("accuracy_requests", 1000))
        fig, ax = plt.subplots(figsize=(10, 5.2))
        _bars(ax, accuracy, variants, "admitted", "{:.0f}", inside=True)
        ax.axhline(limit, color="green", linewidth=1.5, label=f"exact ({limit})")
        ax.axhline(
            servers * limit,
            color="red",
            linewidth=1,
            linestyle=":",
            label=f"{servers} x limit (per-process counts)",
        )
        kinds = list(accuracy)
        width = 0.8 / max(len(kinds), 1)
        first = True
        for i, kind in enumerate(kinds):
            for j, variant in enumerate(variants):
                bound = _value(accuracy[kind], variant, "bound")
                if bound is None:
                    continue
                x = j + (i - (len(kinds) - 1) / 2) * width
                ax.hlines(
                    bound,
                    x - width / 2,
                    x + width / 2,
                    colors="black",
                    linestyles="--",
                    label="README bound (limit + R x (SYNC_INTERVAL + 0.1 s))"
                    if first
                    else "_nolegend_",
                )
                first = False
        tallest = max(
            [servers * limit]
            + [float(r.get("admitted", 0)) for rows in accuracy.values() for r in rows]
            + [float(r.get("bound") or 0) for rows in accuracy.values() for r in rows]
        )
        ax.set_ylim(0, tallest * 1.45)  # room for the legend above the bars
        ax.set_ylabel(f"requests admitted of {requests:,}")
        ax.set_title(f"Accuracy: limit {limit}/min, {servers} processes, {requests:,} requests")
        ax.legend(fontsize=8, loc="upper left")
        fig.suptitle(_subtitle(results), fontsize=8, y=0.995)
        fig.tight_layout()
        path = out_dir / "bench_accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render bench_http.py results as PNG charts.")
    parser.add_argument("results", type=Path, help="a results file written by bench_http.py")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="chart directory")
    args = parser.parse_args(argv)
    for path in render_charts(json.loads(args.results.read_text()), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
