"""The detection task's tables, plots and summary (docs/tasks.md §A): image AUROC, never mixed with accuracy.

Detection rows (``task: detection``) form their own groups (:func:`bench.report.load.group_label`: ``detection ·
dataset · kshot_normals · ...``), so nothing here ever shares a table with classification. Numbers are in percent:

* per configuration, categories × k: mean ± sample std over the draws (seeds) per category, an average row = the
  unweighted mean over categories (RegAD's convention) ± the std of the per-seed category means (the spread over
  draws), and coverage n/N (missing draws, failed jobs);
* an overview (configurations × k, mean over categories [95 % category-stratified bootstrap interval over draws]),
  with what each configuration used besides the k shots (``extra data``, ``synthetic negatives``); with
  ``--compare`` the published figures of docs/tasks.md §A.3 (RegAD, WinCLIP+; ``bench/data/fsad_published.csv``)
  beside ours, labelled with their extra data and their dataset (MVTec AD, 15 categories): on another dataset they
  are a scale, not a comparison;
* pixel AUROC where maps and masks exist; AUROC per defect type (good against each type);
* a leaderboard per k (:func:`leaderboard_sections`): ranked **within one kind of extra data** only (docs/tasks.md
  §A.1: rows with different extra data are never ranked as if equal), with intervals, coverage and P(> next).

Reads result rows only (nothing of the run or the feature pipeline), like every module of :mod:`bench.report`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.document import ReportOptions, Section, Table, slug
from bench.report.headings import group_heading
from bench.report.load import Results, group_label, weights_desc
from bench.report.render import md_text
from bench.report.stats import MIN_DRAWS, NA, RULE, prob_improvement
from bench.report.tables import (
    INCOMPLETE, averages, band_caption, cell_text, cells, fmt, interval_text, mean_interval, prob_text,
)  # fmt: skip

TASK = "detection"
METRIC = "image_auroc"
PIXEL = "pixel_auroc"
UNIT = ("image AUROC % (defective = positive): mean over categories of the per-category means over draws; 95% CI: "
        "category-stratified bootstrap over draws, {n_boot:,} resamples; a unit = one (category, seed) draw; "
        + RULE.replace("seeds", "draws") + ", n/a otherwise")  # fmt: skip
PUBLISHED_NOTE = ("published figures (docs/tasks.md §A.3): MVTec AD image AUROC, mean of its 15 categories, each method "
                  "with its own backbone and its own extra data; on another dataset they are a scale, not a comparison")  # fmt: skip


@lru_cache(maxsize=1)
def load_published() -> pd.DataFrame:
    """The published few-shot detection figures shipped with the package (``bench/data/fsad_published.csv``)."""
    with resources.files("bench").joinpath("data/fsad_published.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def published_curves(dataset: str = "mvtec_ad", category: str = "mean") -> dict[str, tuple[str, pd.Series]]:
    """Method → (extra data, image AUROC % by k ≥ 1) of the published figures for ``dataset`` and ``category``."""
    df = load_published()
    df = df[(df.dataset == dataset) & (df.category == category) & (df.shots >= 1)]
    return {m: (str(g.extra_data.iloc[0]), g.set_index("shots").image_auroc_percent.sort_index()) for m, g in df.groupby("method")}


def detection_groups(res: Results) -> list[str]:
    return res.groups(TASK)


def config_meta(res: Results, cid: str) -> tuple[str, str]:
    """(extra data, synthetic negatives as ``yes``/``no``) of a configuration, read off its rows."""
    rows = res.frame[res.frame.config == cid].row
    extra = sorted({str(r.get("extra_data") or "?") for r in rows})
    neg = sorted({"yes" if r.get("synthetic_negatives") else "no" for r in rows})
    return "/".join(extra), "/".join(neg)


def _avg_cell(r: pd.Series) -> str:
    text = mean_interval(r.mean_pct, r.ci_low_pct, r.ci_high_pct) if r.n else "—"
    return text if r.n >= r.N else f"{text} ({int(r.n)}/{int(r.N)})†"


def overview_table(res: Results, group: str, n_boot: int, boot_seed: int, compare: bool, metric: str = METRIC) -> Table:
    """Configurations × k: the mean over categories with its interval; published figures beside them (``compare``)."""
    _, _, shots = res.grid(group)
    rows, data = {}, []
    for cid in res.config_ids(group):
        a = averages(res, cid, n_boot, boot_seed, metric)
        if metric != METRIC and not a.n.any():
            continue
        extra, neg = config_meta(res, cid)
        label = res.labels[cid]
        rows[label] = {"extra data": extra, "synthetic negatives": neg,
                       **{f"k={r.shots}": _avg_cell(r) for r in a.itertuples()}}  # fmt: skip
        data.append(a.assign(configuration=label, extra_data=extra, synthetic_negatives=neg, group=group, metric=metric))
    dataset = res.configs[res.config_ids(group)[0]]["dataset"]
    if compare and metric == METRIC:
        for method, (extra, curve) in published_curves().items():
            name = f"{method} (published; MVTec AD, 15 categories)"
            rows[name] = {"extra data": extra, "synthetic negatives": "?",
                          **{f"k={s}": fmt(curve.get(s, np.nan)) for s in shots}}  # fmt: skip
            data.append(pd.DataFrame({"shots": curve.index, "mean_pct": curve.values, "configuration": name,
                                      "extra_data": extra, "group": group, "metric": metric, "published": True}))  # fmt: skip
    disp = pd.DataFrame.from_dict(rows, orient="index")
    disp.index.name = "configuration"
    what = "image AUROC" if metric == METRIC else "pixel AUROC"
    cap = UNIT.format(n_boot=n_boot).replace("image AUROC", what)
    notes = [INCOMPLETE] if any("†" in str(v) for v in disp.values.ravel()) else []
    if compare and metric == METRIC:
        notes.append(PUBLISHED_NOTE + ("" if dataset == "mvtec_ad" else f"; these rows are on {dataset}") + ". "
                     "Extra data: what a detector used besides the k shots (imagenet = ImageNet-pretrained backbone; "
                     "other-categories = normals of the other categories; clip = CLIP).")  # fmt: skip
    key = f"det-overview-{metric}-{group}"
    title = f"{'Image' if metric == METRIC else 'Pixel'} AUROC: configurations × k"
    return Table(key, title, disp, pd.concat(data, ignore_index=True) if data else None, cap, notes)


def method_table(res: Results, cid: str, n_boot: int, boot_seed: int, metric: str = METRIC) -> Table:
    """Categories × k of one configuration: mean ± std over draws (n/N), and the average row."""
    f = res.configs[cid]
    c, a = cells(res, cid, metric), averages(res, cid, n_boot, boot_seed, metric)
    disp = c.assign(cell=[cell_text(*r) for r in c[["mean_pct", "std_pct", "n", "N"]].itertuples(index=False)])
    disp = disp.pivot(index="category", columns="shots", values="cell")
    disp.loc["average"] = [cell_text(r.mean_pct, r.std_pct, r.n, r.N) for r in a.itertuples()]
    disp.columns = [f"k={s}" for s in disp.columns]
    disp.index.name = "category"
    extra, neg = config_meta(res, cid)
    data = pd.concat([c, a], ignore_index=True).assign(configuration=res.labels[cid], method=f["method"], group=group_label(f))
    seeds = res.grid(group_label(f))[1]
    cap = (f"image AUROC %, mean ± sample std over the draws (seeds {seeds}) per category; average row = unweighted mean "
           f"over categories ± std of the per-seed category means (spread over draws); extra data: {extra}; synthetic "
           f"negatives: {neg}; {weights_desc(f)}")  # fmt: skip
    notes = [INCOMPLETE] if (c.n < c.N).any() else []
    return Table(f"det-method-{res.labels[cid]}-{group_label(f)}", f"{res.labels[cid]}: image AUROC per category", disp, data, cap, notes)


def per_type_table(res: Results, group: str, category: str, shots: int) -> Table | None:
    """AUROC of ``good`` against each defect type, per configuration (mean over draws), at one k and category."""
    ok = res.ok(METRIC)
    ok = ok[(ok.group == group) & (ok.category == category) & (ok.shots == shots)]
    recs = [{"configuration": lab, "type": t, "seed": r["seed"], "auroc_pct": 100 * float(v)}
            for lab, r in zip(ok.label, ok.row) for t, v in (r.get("auroc_per_type") or {}).items()
            if isinstance(v, (int, float)) and np.isfinite(v)]  # fmt: skip
    if not recs:
        return None
    data = pd.DataFrame(recs).groupby(["configuration", "type"]).auroc_pct.agg(["mean", "std", "count"]).reset_index()
    disp = data.assign(cell=[f"{fmt(m)} ± {fmt(s)}" if n > 1 else fmt(m) for m, s, n in data[["mean", "std", "count"]].itertuples(index=False)])
    disp = disp.pivot(index="configuration", columns="type", values="cell")
    return Table(f"det-types-{group}-{category}-{shots}", f"AUROC per defect type, {category}, k={shots}", disp,
                 data.assign(category=category, shots=shots, group=group),
                 "AUROC % of the test good images against each defect type alone, mean ± std over draws: which "
                 "defects a detector misses")  # fmt: skip


def ranking_table(res: Results, group: str, shots: int, n_boot: int, boot_seed: int) -> Table:
    """The leaderboard at one k: ranks within each kind of extra data, complete configurations first."""
    ok = res.ok(METRIC)
    recs, absent, lost = [], [], []
    for cid in res.config_ids(group):
        a = averages(res, cid, n_boot, boot_seed, METRIC)
        a = a[a.shots == shots].iloc[0]
        why = res.unfinished(cid, shots)
        if why:
            lost.append(f"{res.labels[cid]}: {why}")
        if a.n == 0 and not why:
            absent.append(res.labels[cid])
            continue
        extra, neg = config_meta(res, cid)
        sub = ok[(ok.config == cid) & (ok.shots == shots)]
        recs.append({"cid": cid, "configuration": res.labels[cid], "extra_data": extra, "synthetic_negatives": neg,
                     "shots": shots, "mean_pct": a.mean_pct, "ci_low_pct": a.ci_low_pct, "ci_high_pct": a.ci_high_pct,
                     "n": int(a.n), "N": int(a.N), "n_categories": int(a.n_categories), "N_categories": int(a.N_categories),
                     "n_seeds": int(sub.seed.nunique()), "complete": bool(a.n >= a.N),
                     "backbone_weights": weights_desc(res.configs[cid])})  # fmt: skip
    d = pd.DataFrame(recs)
    notes = [f"not finished at k={shots} (counted as missing draws): {'; '.join(lost)}."] if lost else []
    if absent:
        notes.append(f"not run at k={shots} (no job of this k in the results): {', '.join(absent)}.")
    if d.empty:
        return Table(f"det-leaderboard-{group}-{shots}", f"k={shots}", pd.DataFrame(), d, f"k={shots}: no finished runs", notes)
    d["rank"] = np.nan
    done = d.complete.astype(bool)
    for _, idx in d[done].groupby("extra_data").groups.items():
        d.loc[idx, "rank"] = d.loc[idx, "mean_pct"].rank(method="min", ascending=False)
    d = d.assign(_inc=~done).sort_values(["_inc", "extra_data", "mean_pct"], ascending=[True, True, False]).drop(columns="_inc")
    d = d.reset_index(drop=True)
    d["p_beats_next"], d["n_pairs_next"] = np.nan, np.nan
    for _, g in d[d["rank"].notna()].groupby("extra_data", sort=False):
        for i, j in zip(g.index[:-1], g.index[1:]):
            sa, sb = (ok[(ok.config == d.at[k, "cid"]) & (ok.shots == shots)].set_index(["category", "seed"])[METRIC] for k in (i, j))
            d.at[i, "p_beats_next"] = prob_improvement(sa, sb)
            d.at[i, "n_pairs_next"] = len(sa.index.intersection(sb.index))
    seeds = res.grid(group)[1]
    disp = pd.DataFrame({
        "rank (within extra data)": ["failed" if n == 0 else "unranked†" if pd.isna(r) else str(int(r)) for r, n in zip(d["rank"], d.n)],
        "configuration": d.configuration,
        "image AUROC %": d.mean_pct.map(fmt),
        "95% CI": [interval_text(lo, hi) if n else "" for lo, hi, n in zip(d.ci_low_pct, d.ci_high_pct, d.n)],
        "coverage (cat. × draws)": [f"{r.n_categories}×{r.n_seeds} of {r.N_categories}×{len(seeds)} ({r.n}/{r.N})"
                                    + ("" if r.complete else " †") for r in d.itertuples()],
        "P(> next)": ["" if pd.isna(m) else prob_text(p, int(m)) for p, m in zip(d.p_beats_next, d.n_pairs_next)],
        "extra data": d.extra_data, "synthetic negatives": d.synthetic_negatives,
        "backbone / weights": d.backbone_weights,
    }).set_index("rank (within extra data)")  # fmt: skip
    if not done.all():
        notes.append("† incomplete (missing draws, categories or failed jobs): shown with the runs it has, not ranked.")
    if d.extra_data.nunique() > 1:
        notes.append("configurations that used different extra data are ranked separately (docs/tasks.md §A.1).")
    cap = (f"k={shots} normal shots, {group}. " + UNIT.format(n_boot=n_boot) + "; P(> next) = probability of beating the "
           f"next-ranked configuration of the same extra data on a random paired (category, draw), ties ½; {NA} (n = paired "
           f"draws) from fewer than {MIN_DRAWS} pairs")  # fmt: skip
    return Table(f"det-leaderboard-{group}-{shots}shot", f"k={shots}", disp, d.drop(columns=["cid"]).assign(group=group), cap, notes)


def auroc_plot(res: Results, group: str, n_boot: int, boot_seed: int, plots_dir: Path, compare: bool, prefix: str = "det"):
    """Image AUROC vs k per configuration (band = bootstrap CI); the published curves dashed with ``compare``."""
    from bench.report import plots

    curves = {res.labels[c]: averages(res, c, n_boot, boot_seed, METRIC) for c in res.config_ids(group)}
    curves = {k: v[v.n > 0] for k, v in curves.items() if (v.n > 0).any()}
    refs = {}
    if compare:
        shots = res.grid(group)[2]
        for method, (extra, curve) in published_curves().items():
            c = curve[(curve.index >= min(shots)) & (curve.index <= max(shots))]
            if len(c):
                refs[f"{method} ({extra}; MVTec AD)"] = c
    band = band_caption(curves, f"95% bootstrap CI over draws ({n_boot:,} resamples)").replace("seeds", "draws")
    cap = (f"image AUROC % vs k, mean over categories; {band}; {group}"
           + ("; dashed grey: published MVTec AD means (another dataset unless this is mvtec_ad)" if refs else ""))  # fmt: skip
    head = group_heading(res, group)
    sub = "mean over categories" + ("; published curves: MVTec AD, grey" if refs else "") + f" · {head.subtitle}"
    return plots.accuracy_vs_shots(curves, plots_dir / slug(f"{prefix}-auroc-vs-k-{group}"),
                                   head.title("Image AUROC vs k normal shots"), refs, cap, ylabel="image AUROC (%)",
                                   xlabel="k normal shots", subtitle=sub)  # fmt: skip


def report_sections(
    res: Results, compare: bool, n_boot: int, boot_seed: int, plots_dir: Path | None, categories: list[str] | None = None
) -> list[Section]:
    """The detection part of ``bench report``: per detection group an overview, per-configuration tables, pixel
    AUROC, AUROC per defect type and a plot."""
    out = []
    for group in detection_groups(res):
        cats, seeds, shots = res.grid(group)
        ids = res.config_ids(group)
        head = [f"Few-shot anomaly detection (docs/tasks.md §A): k normal shots drawn from train/good, {len(seeds)} "
                f"seeded draw(s) {seeds} per (category, k); every test image scored. Expected grid: {len(cats)} "
                f"categories × {len(seeds)} draws × k {shots}."]  # fmt: skip
        sec = Section(f"{group}: overview", head, [overview_table(res, group, n_boot, boot_seed, compare)])
        if res.ok(PIXEL).pipe(lambda f: (f.group == group).any()):
            sec.tables.append(overview_table(res, group, n_boot, boot_seed, False, PIXEL))
        if plots_dir is not None and (res.ok(METRIC).group == group).any():
            sec.figures.append(auroc_plot(res, group, n_boot, boot_seed, plots_dir, compare))
        out.append(sec)
        out.append(Section(f"{group}: per configuration", tables=[method_table(res, c, n_boot, boot_seed) for c in ids]))
        types = Section(f"{group}: AUROC per defect type")
        for cat in [c for c in (categories or cats[:1]) if c in cats]:
            t = per_type_table(res, group, cat, max(shots))
            if t is not None:
                types.tables.append(t)
        if types.tables:
            out.append(types)
    return out


def sections(res: Results, opts: ReportOptions) -> list[Section]:
    """The task record's ``report`` hook (:class:`bench.tasks.Task`): :func:`report_sections`."""
    return report_sections(res, opts.compare, opts.n_boot, opts.boot_seed, opts.plots_dir, opts.categories)


def leaderboard_sections(res: Results, n_boot: int, boot_seed: int, plots_dir: Path | None) -> list[Section]:
    """The detection part of ``bench leaderboard``: per group, one ranking per k and the AUROC-vs-k plot."""
    out = []
    for group in detection_groups(res):
        cats, seeds, shots = res.grid(group)
        text = [f"Expected grid: {len(cats)} categories ({', '.join(cats)}) × {len(seeds)} draws {seeds}; k {shots}.",
                UNIT.format(n_boot=n_boot) + "."]  # fmt: skip
        sec = Section(group, text, [ranking_table(res, group, s, n_boot, boot_seed) for s in shots])
        if plots_dir is not None and (res.ok(METRIC).group == group).any():
            sec.figures.append(auroc_plot(res, group, n_boot, boot_seed, plots_dir, False, prefix="lb-det"))
        out.append(sec)
    return out


def summary_blocks(res: Results) -> list[str]:
    """The end-of-run summary of detection rows: per configuration, categories × k, image AUROC % mean ± std (n)."""
    from tabulate import tabulate

    ok = res.ok(METRIC)
    blocks = []
    for (group, label), sub in ok.groupby(["group", "label"], sort=True):
        f = res.configs[sub.config.iloc[0]]
        by_cell = sub.groupby(["category", "shots"])[METRIC]
        table = by_cell.agg(lambda v: f"{v.mean():.1f} ± {v.std(ddof=1):.1f} ({v.count()})" if v.count() > 1
                            else f"{v.mean():.1f} (1)").unstack("shots")  # fmt: skip
        means = by_cell.mean().groupby("shots").mean()
        table.loc["mean"] = [f"{means[s]:.1f}" for s in table.columns]
        table.columns = [f"k={s}" for s in table.columns]
        table.index = [md_text(c) for c in table.index]
        extra, neg = config_meta(res, sub.config.iloc[0])
        blocks.append(f"### {md_text(f'{label}  ({group}; {weights_desc(f)}; extra data {extra}; synthetic negatives {neg})')}\n\n"
                      + tabulate(table.fillna("–"), headers="keys", tablefmt="github")
                      + "\n\nimage AUROC %, mean ± sample std over draws (number of draws); mean row = unweighted mean "
                      "over categories")  # fmt: skip
    return blocks
