"""The compact table printed at the end of ``bench run``: per method, category and shots, mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.results import latest_ok, read_rows


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    keep = [r for r in latest_ok(rows)]
    recs = [
        {
            "method": r["method"],
            "category": r["category"],
            "shots": r["shots"],
            "seed": r["seed"],
            "status": r.get("status"),
            "accuracy": r.get("accuracy"),
            "weights": (r.get("weights") or {}).get("weights", "?"),
        }
        for r in keep
    ]
    return pd.DataFrame(recs, columns=["method", "category", "shots", "seed", "status", "accuracy", "weights"])


def summary_table(results_file: Path) -> str:
    """Markdown: one block per method, rows = categories (+ mean), columns = shots, cells = mean ± std (n seeds)."""
    df = rows_frame(read_rows([results_file]).rows)
    ok = df[df.status == "ok"]
    if ok.empty:
        return "no finished jobs"
    blocks = []
    for method, sub in ok.groupby("method", sort=True):
        g = sub.groupby(["category", "shots"]).accuracy.agg(["mean", "std", "count"]).reset_index()
        cells = g.assign(
            cell=lambda d: d.apply(
                lambda r: f"{100 * r['mean']:.1f} ± {0 if pd.isna(r['std']) else 100 * r['std']:.1f} ({int(r['count'])})", axis=1
            )
        ).pivot(index="category", columns="shots", values="cell")
        means = g.groupby("shots")["mean"].mean()
        cells.loc["mean"] = [f"{100 * means[s]:.1f}" for s in cells.columns]
        cells.columns = [f"{s}-shot" for s in cells.columns]
        weights = ", ".join(sorted(sub.weights.unique()))
        blocks.append(
            f"### {method}  (weights: {weights})\n\n"
            + tabulate(cells, headers="keys", tablefmt="github")
            + "\n\naccuracy %, mean ± sample std over seeds (number of seeds); mean row = unweighted mean over categories"
        )
    return "\n\n".join(blocks)
