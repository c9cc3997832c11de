"""The report's tables, built from :class:`~bench.report.load.Results`, in the paper's shapes; nothing typed by hand.

Numbers first (:func:`cells`: per category and shots, mean ± sample std over seeds with coverage n/N;
:func:`averages`: per shots, the unweighted mean over categories with a category-stratified bootstrap interval),
then the tables of ``bench report`` (:func:`build_report`): per configuration categories × shots with an average
row; categories (classes, queries, chance, majority); an ablation table (configurations × shots averaged over
categories, rows named as the paper names them); paired P(A > B); the most-predicted class's share with collapsed
runs flagged (:func:`concentration_table`); per-class recall and confusion matrices for a
chosen category. Configurations that differ in anything but category, shots and seed are separate lines labelled
by what differs; incomplete grids show (n/N) and a †. Every table's ``data`` frame holds the tidy numbers (CSV).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import paper
from bench.report.document import Document, ReportOptions, Section, Table, slug
from bench.report.headings import group_heading
from bench.report.load import COLLAPSE_RULE, Results, group_label, share_cell, weights_desc
from bench.report.rows import REFUSED
from bench.report.stats import (
    DEFAULT_BOOT, DEFAULT_BOOT_SEED, MIN_DRAWS, NA, RULE, Interval, bounds, prob_improvement, stratified_bootstrap_mean,
    t_interval,
)  # fmt: skip
from bench.results import DEFAULT_TASK
from bench.seeding import numpy_rng
from bench.tasks import tasks


def config_grid(res: Results, cid: str, metric: str = "accuracy") -> tuple[list[str], list[int], list[int], pd.DataFrame]:
    """The expected grid of configuration ``cid`` (its group's categories, seeds and shots) and its finished rows (those
    with a finite ``metric``: ``accuracy``, or a detection row's ``image_auroc`` / ``pixel_auroc``)."""
    cats, seeds, shots = res.grid(group_label(res.configs[cid]))
    ok = res.ok(metric)
    return cats, seeds, shots, ok[ok.config == cid]


def cells(res: Results, cid: str, metric: str = "accuracy") -> pd.DataFrame:
    """Per (category, shots) of the group's grid: mean, std (ddof 1), t-interval, n finished seeds, N expected (of
    ``metric``, in percent; the columns keep the name ``*_pct``)."""
    cats, seeds, shots, ok = config_grid(res, cid, metric)
    out = []
    for c in cats:
        for s in shots:
            v = ok[(ok.category == c) & (ok.shots == s)][metric].to_numpy(float)
            ti = t_interval(v)
            std = float(np.std(v, ddof=1)) if len(v) > 1 else np.nan
            out.append({"category": c, "shots": s, "mean_pct": ti.mean, "std_pct": std, "ci_low_pct": ti.low,
                        "ci_high_pct": ti.high, "n": len(v), "N": len(seeds)})  # fmt: skip
    return pd.DataFrame(out)


def averages(
    res: Results, cid: str, n_boot: int = DEFAULT_BOOT, boot_seed: int = DEFAULT_BOOT_SEED, metric: str = "accuracy"
) -> pd.DataFrame:
    """Per shots: mean over categories of category means, bootstrap CI, std of per-seed means, coverage (of ``metric``)."""
    cats, seeds, shots, ok = config_grid(res, cid, metric)
    out = []
    for s in shots:
        sub = ok[ok.shots == s]
        wide = sub.pivot_table(index="category", columns="seed", values=metric).reindex(index=cats, columns=seeds)
        iv: Interval = stratified_bootstrap_mean(wide, n_boot=n_boot, rng=numpy_rng(boot_seed, "bootstrap", cid, s))
        per_seed = wide.dropna(axis=1, how="any").mean(axis=0)  # seeds with every category
        n_cat = int(wide.notna().any(axis=1).sum())
        out.append({"category": "average", "shots": s, "mean_pct": iv.mean,
                    "std_pct": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else np.nan,
                    "ci_low_pct": iv.low, "ci_high_pct": iv.high, "n": int(wide.notna().sum().sum()),
                    "N": len(cats) * len(seeds), "n_categories": n_cat, "N_categories": len(cats)})  # fmt: skip
    return pd.DataFrame(out)


def fmt(x: float, nd: int = 2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def interval_text(low: float, high: float) -> str:
    """``[low, high]`` in percent with two decimals, ``n/a`` without an interval (:func:`bench.report.stats.bounds`)."""
    return bounds(low, high, fmt)


def mean_interval(mean: float, low: float, high: float) -> str:
    """``mean [low, high]``, the mean alone when there is no interval."""
    return fmt(mean) + (f" {interval_text(low, high)}" if finite(low) and finite(high) else "")


def prob_text(p: float, n_pairs: int) -> str:
    """A probability of improvement, ``n/a (n=…)`` when fewer than MIN_DRAWS paired runs stand behind it."""
    return fmt(p) if finite(p) else f"{NA} (n={n_pairs})"


def band_caption(curves: dict[str, pd.DataFrame], band: str) -> str:
    """``band = <band>`` when some curve has an interval to draw, else why none is drawn (the caption never promises
    a band the plot does not have)."""
    drawn = any((np.isfinite(c.ci_low_pct.astype(float)) & np.isfinite(c.ci_high_pct.astype(float))).any() for c in curves.values())
    rule = f"drawn where every category has ≥ {MIN_DRAWS} seeds"
    return f"band = {band} ({rule})" if drawn else f"no band: no point has ≥ {MIN_DRAWS} seeds in every category"


BARS = f"error bar = 95% t-interval across seeds, where a category has ≥ {MIN_DRAWS} seeds (none below)"


def cell_text(mean: float, std: float, n: int, big_n: int) -> str:
    """``mean ± std``, with ``(n/N)†`` when not every expected run finished; ``—`` when none did."""
    if n == 0:
        return f"— (0/{big_n})"
    text = f"{fmt(mean)} ± {fmt(std)}" if n > 1 and finite(std) else fmt(mean)  # one value has no spread to show
    return text if n >= big_n else f"{text} ({n}/{big_n})†"


def reference_rows(res: Results, group: str) -> pd.DataFrame:
    """Chance and majority-class accuracy (percent) per shots: mean over categories of the rows' values."""
    ok = res.ok()
    ok = ok[ok.group == group]
    per_cat = ok.groupby(["shots", "category"])[["chance", "majority"]].mean()
    return per_cat.groupby("shots").mean().T  # index chance/majority, columns shots


def at_shots(frame: pd.DataFrame, shots: int) -> pd.DataFrame:
    """Rows of a :func:`cells` frame at one shot count, indexed by category."""
    return frame[frame.shots == shots].set_index("category")


INCOMPLETE = "† incomplete: (n/N) = finished runs of the N expected (missing seeds, failed jobs or categories); not averaged as if complete."


def configs_table(res: Results) -> Table:
    """Every configuration with what identifies it and how many of its jobs finished."""
    recs = []
    for cid, f in res.configs.items():
        sub = res.frame[res.frame.config == cid]
        recs.append({"configuration": res.labels[cid], "paper row": paper.ablation_name(f["method"]), "group": group_label(f),
                     "backbone / weights": weights_desc(f), "harness": f["harness"], "options hash": f["method_config_hash"][:10],
                     "ok": int((sub.status == "ok").sum()), "failed": int(((sub.status != "ok") & (sub.status != REFUSED)).sum()),
                     **({"refused": int((sub.status == REFUSED).sum())} if (res.frame.status == REFUSED).any() else {})})  # fmt: skip
    d = pd.DataFrame(recs).sort_values("configuration").set_index("configuration")
    return Table("configurations", "Configurations", d, d.reset_index(),
                 "one line per configuration; rows differing in anything but category, shots and seed are never pooled")  # fmt: skip


def category_table(res: Results, group: str) -> Table:
    """Per category: classes C, chance, and per shots the query count and the majority-class rate."""
    ok = res.ok()
    ok = ok[ok.group == group]
    data = ok.groupby(["category", "shots"]).agg(n_classes=("n_classes", "max"), n_queries=("n_queries", "median"),
                                                  chance_pct=("chance", "mean"), majority_pct=("majority", "mean")).reset_index()  # fmt: skip
    disp = data.groupby("category").agg(C=("n_classes", "max"), chance=("chance_pct", "mean"))
    disp["C"] = disp.C.map(lambda c: str(int(c)) if pd.notna(c) else "–")
    disp["chance"] = disp.chance.map(fmt)
    for s, g in data.groupby("shots"):
        g = g.set_index("category")
        disp[f"{s}-shot queries (majority %)"] = [f"{int(g.n_queries[c])} ({fmt(g.majority_pct[c])})" if c in g.index else "–" for c in disp.index]
    disp.index.name = "category"
    return Table(f"categories-{group}", "Categories: classes and queries", disp, data.assign(group=group),
                 "C = defect types (classes); queries = defective test images left after the support; chance = 1/C; "
                 "majority = accuracy of always predicting the largest query class (datasets.md §1.1)")  # fmt: skip


def method_table(res: Results, cid: str, n_boot: int, boot_seed: int) -> Table:
    """The paper's table shape for one configuration: categories × shots, plus an average row."""
    f = res.configs[cid]
    c, a = cells(res, cid), averages(res, cid, n_boot, boot_seed)
    disp = c.assign(cell=[cell_text(*r) for r in c[["mean_pct", "std_pct", "n", "N"]].itertuples(index=False)])
    disp = disp.pivot(index="category", columns="shots", values="cell")
    disp.loc["average"] = [cell_text(r.mean_pct, r.std_pct, r.n, r.N) for r in a.itertuples()]
    disp.columns = [f"{s}-shot" for s in disp.columns]
    disp.index.name = "category"
    seeds = res.grid(group_label(f))[1]
    data = pd.concat([c, a], ignore_index=True).assign(configuration=res.labels[cid], method=f["method"], group=group_label(f))
    cap = (f"accuracy %, mean ± sample std (ddof=1) over seeds {seeds} per category (unit of variance: seed); average row = "
           f"unweighted mean over categories ± std of the per-seed category means; {weights_desc(f)}")  # fmt: skip
    notes = [INCOMPLETE] if (c.n < c.N).any() else []
    return Table(f"method-{res.labels[cid]}-{group_label(f)}", f"{res.labels[cid]}: {paper.ablation_name(f['method'])}", disp, data, cap, notes)


def paper_compare_table(res: Results, cid: str) -> Table | None:
    """The run's own figures next to the paper's for the same method, category and shots (None if no paper table)."""
    f = res.configs[cid]
    found = paper.paper_numbers(f["method"], f["dataset"], f.get("class_set.good") == "included")
    if found is None:
        return None
    name, body, printed = found
    c = cells(res, cid)
    cats = sorted(set(c.category))  # the run's grid; the paper's other categories are not compared
    rows, disp = [], pd.DataFrame(index=pd.Index(cats + ["average"], name="category"))
    for s in sorted(set(c.shots)):
        ours = c[c.shots == s].set_index("category")
        p = body[s].dropna() if s in body.columns else pd.Series(dtype=float)
        col_o, col_p = [], []
        for cat in cats:
            o, pv = ours.loc[cat], float(p.get(cat, np.nan))
            col_o.append(cell_text(o.mean_pct, o.std_pct, int(o.n), int(o.N)))
            col_p.append(fmt(pv))
            rows.append({"category": cat, "shots": s, "ours_mean_pct": o.mean_pct, "ours_std_pct": o.std_pct, "ours_n": int(o.n),
                         "ours_N": int(o.N), "paper_pct": pv, "diff_pct": o.mean_pct - pv, "paper_table": name})  # fmt: skip
        both = [cat for cat in cats if ours.loc[cat].n > 0 and cat in p.index]
        ours_avg = float(np.mean([ours.loc[x].mean_pct for x in both])) if both else np.nan
        paper_avg = float(np.mean([p[x] for x in both])) if both else np.nan
        part = "" if len(both) == len(p) else f" ({len(both)}/{len(p)} cat.)"
        col_o.append(fmt(ours_avg) + part)
        shown_printed = not part and s in printed.index and abs(printed[s] - paper_avg) > 0.005
        col_p.append(fmt(paper_avg) + part + (f" (printed {fmt(printed[s])})" if shown_printed else ""))
        disp[f"{s}-shot ours"], disp[f"{s}-shot paper"] = col_o, col_p
        rows.append({"category": "average", "shots": s, "ours_mean_pct": ours_avg, "ours_n": len(both), "ours_N": len(p),
                     "paper_pct": paper_avg, "diff_pct": ours_avg - paper_avg, "paper_table": name})  # fmt: skip
    cap = (f"ours: accuracy % mean ± std over seeds; paper: {name} of arXiv 2406.05645 as printed; average row = mean over the categories "
           f"present in both (k/K cat. when not all K paper categories ran), recomputed; the printed average is shown where it differs; "
           f"{weights_desc(f)}")  # fmt: skip
    notes = ["paper numbers are one source's reading of the PDF (docs/method-notes.md §3); gaps of a few points are within the paper's own noise."]
    if f["weights"] == "random":
        notes.insert(0, "WARNING: random-init backbone: these results are NOT comparable with the paper's ImageNet numbers.")
    return Table(f"paper-{res.labels[cid]}-{group_label(f)}", f"{res.labels[cid]} vs paper ({name})", disp,
                 pd.DataFrame(rows).assign(configuration=res.labels[cid]), cap, notes)  # fmt: skip


def ablation_table(res: Results, group: str, n_boot: int, boot_seed: int, compare: bool) -> Table:
    """Configurations × shots, averaged over categories, rows named as the paper's ablation names them."""
    rows, data = {}, []
    for cid in res.config_ids(group):
        f, a = res.configs[cid], averages(res, cid, n_boot, boot_seed)
        label = res.labels[cid]
        name = paper.ablation_name(f["method"]) + (label[len(f["method"]):] if label != f["method"] else "")
        cell = {f"{r.shots}-shot": mean_interval(r.mean_pct, r.ci_low_pct, r.ci_high_pct) + ("" if r.n >= r.N else f" ({r.n}/{r.N})†")
                for r in a.itertuples()}  # fmt: skip
        found = paper.paper_numbers(f["method"], f["dataset"], f.get("class_set.good") == "included") if compare else None
        if found is not None:
            body = found[1]
            for s in [x for x in body.columns if x in res.grid(group)[2]]:
                col = body[s].dropna()
                sub = col[col.index.isin(res.grid(group)[0])]
                cell[f"{s}-shot paper"] = fmt(sub.mean() if len(sub) else np.nan) + ("" if len(sub) == len(col) else f" ({len(sub)}/{len(col)} cat.)")
        rows[name] = {"configuration": label, **cell}
        data.append(a.assign(configuration=label, paper_row=name, group=group))
    ref = reference_rows(res, group)
    for kind in ref.index:
        rows[kind] = {"configuration": "reference", **{f"{s}-shot": fmt(ref.loc[kind, s]) for s in ref.columns}}
        data.append(pd.DataFrame({"shots": ref.columns, "mean_pct": ref.loc[kind].values, "configuration": kind, "paper_row": kind, "group": group}))
    disp = pd.DataFrame.from_dict(rows, orient="index")
    disp.index.name = "row (paper's name)"
    cols = ["configuration"] + sorted([c for c in disp.columns if c != "configuration"], key=lambda c: (int(c.split("-")[0]), c))
    cap = (f"accuracy %, unweighted mean over categories of the seed means [95% CI: category-stratified bootstrap over seeds, "
           f"{n_boot:,} resamples; unit of variance = one (category, seed) run]; {RULE}: without an interval the cell is the mean alone; chance / majority "
           "= mean over categories")  # fmt: skip
    if compare:
        cap += "; paper = average of the paper table named in the row, recomputed over this grid's categories (k/K cat. when partial)"
    notes = [INCOMPLETE] if any("†" in str(v) for v in disp.values.ravel()) else []
    return Table(f"ablation-{group}", "Ablation: configurations × shots", disp[cols], pd.concat(data, ignore_index=True), cap, notes)


def paired_table(res: Results, group: str) -> Table | None:
    """P(A > B) on a random paired (category, seed) run, per shots, for every pair of configurations."""
    ids = res.config_ids(group)
    if len(ids) < 2:
        return None
    ok = res.ok()
    rows, data = {}, []
    for a, b in combinations(ids, 2):
        cell = {}
        for s in res.grid(group)[2]:
            sa, sb = (ok[(ok.config == c) & (ok.shots == s)].set_index(["category", "seed"]).accuracy for c in (a, b))
            p = prob_improvement(sa, sb)
            n = len(sa.index.intersection(sb.index))
            cell[f"{s}-shot"] = f"{fmt(p)} (n={n})" if finite(p) else prob_text(p, n)
            data.append({"a": res.labels[a], "b": res.labels[b], "shots": s, "p_a_beats_b": p, "n_pairs": n})
        rows[f"{res.labels[a]} > {res.labels[b]}"] = cell
    disp = pd.DataFrame.from_dict(rows, orient="index")
    disp.index.name = "A > B"
    return Table(f"paired-{group}", "Paired comparison: probability of improvement", disp, pd.DataFrame(data),
                 f"P(A > B) on a random (category, seed) run both finished, ties ½, categories weighted equally; n = paired runs; "
                 f"{NA} from fewer than {MIN_DRAWS} paired runs")  # fmt: skip


def concentration_table(res: Results, group: str) -> Table:
    """Per configuration and shots: the mean share of the queries given the most-predicted class, with collapsed runs
    flagged (:func:`bench.report.load.collapse_flag`): a head can end below chance by putting most queries into one
    class, which the accuracy alone does not show."""
    shots = res.grid(group)[2]
    ok = res.ok()
    rows, data = {}, []
    for cid in res.config_ids(group):
        runs = ok[ok.config == cid]
        rows[res.labels[cid]] = {f"{s}-shot": share_cell(runs[runs.shots == s]) for s in shots}
        for s in shots:
            sub = runs[(runs.shots == s) & runs.collapsed.notna()]
            data.append({"configuration": res.labels[cid], "shots": s, "top_share_mean": sub.top_share.mean() if len(sub) else np.nan,
                         "n_collapsed": int(sub.collapsed.astype(bool).sum()), "n_known": len(sub), "n_runs": int((runs.shots == s).sum())})  # fmt: skip
    disp = pd.DataFrame.from_dict(rows, orient="index")
    disp.index.name = "configuration"
    return Table(f"concentration-{group}", "Most-predicted class share", disp, pd.DataFrame(data).assign(group=group),
                 "share of a run's queries given its most-predicted class, mean over the finished (category, seed) runs; "
                 + COLLAPSE_RULE)  # fmt: skip


def _detail_rows(res: Results, cid: str, category: str, shots: int | None = None) -> list[dict]:
    ok = res.ok()
    sel = ok[(ok.config == cid) & (ok.category == category)]
    if shots is not None:
        sel = sel[sel.shots == shots]
    return list(sel.row)


def per_class_table(res: Results, cid: str, category: str) -> Table | None:
    """Recall per defect type × shots for one configuration and category (mean ± std over seeds)."""
    rows = _detail_rows(res, cid, category)
    if not rows:
        return None
    data = pd.DataFrame([{"class": k, "shots": r["shots"], "seed": r["seed"], "recall_pct": 100 * float(v)}
                         for r in rows for k, v in (r.get("per_class_recall") or {}).items()])  # fmt: skip
    if data.empty:
        return None
    g = data.groupby(["class", "shots"]).recall_pct.agg(["mean", "std", "count"]).reset_index()
    disp = g.assign(cell=[f"{fmt(m)} ± {fmt(s)} ({n})" if n > 1 else f"{fmt(m)} (1)"
                          for m, s, n in g[["mean", "std", "count"]].itertuples(index=False)])
    disp = disp.pivot(index="class", columns="shots", values="cell")
    disp.columns = [f"{s}-shot" for s in disp.columns]
    disp.index.name = "defect type"
    return Table(f"perclass-{res.labels[cid]}-{category}-{group_label(res.configs[cid])}", f"{res.labels[cid]}: recall per defect type, {category}",
                 disp, g.rename(columns={"mean": "recall_mean_pct", "std": "recall_std_pct", "count": "n_seeds"}).assign(configuration=res.labels[cid], category=category),
                 "recall % per true class, mean ± std over seeds (number of seeds); few queries per class make these coarse")  # fmt: skip


def confusion(res: Results, cid: str, category: str, shots: int) -> tuple[Table, np.ndarray, list[str]] | None:
    """Confusion matrix summed over seeds (rows = true, columns = predicted), as a table and an array."""
    rows = _detail_rows(res, cid, category, shots)
    rows = [r for r in rows if r.get("confusion") and r.get("class_names")]
    if not rows:
        return None
    names = list(rows[0]["class_names"])
    total = sum(np.asarray(r["confusion"], dtype=int) for r in rows if list(r["class_names"]) == names)
    disp = pd.DataFrame(total, index=pd.Index(names, name="true \\ predicted"), columns=names)
    data = disp.stack().rename("count").reset_index().set_axis(["true", "predicted", "count"], axis=1)
    t = Table(f"confusion-{res.labels[cid]}-{category}-{shots}-{group_label(res.configs[cid])}",
              f"{res.labels[cid]}: confusion matrix, {category}, {shots}-shot", disp, data.assign(configuration=res.labels[cid]),
              f"query counts summed over {len(rows)} seed(s); rows = true defect type, columns = predicted")  # fmt: skip
    return t, total, names


def build_report(
    res: Results,
    compare: bool = False,
    categories: list[str] | None = None,
    detail_shots: int | None = None,
    n_boot: int = DEFAULT_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
    plots_dir: Path | None = None,
    command: str | None = None,
) -> Document:
    """The full report document of every task's rows (tables, and plots when ``plots_dir`` is given): the
    configurations, then each task's sections (its record's ``report`` hook, :class:`bench.tasks.Task`), in the order
    of :func:`bench.tasks.tasks`."""
    own = tuple(t for t in tasks() if t != DEFAULT_TASK)  # the tasks with sections of their own beside classification
    doc = Document(f"{res.subject()}: report", res.intro(shown=own), command=command)
    doc.sections.append(Section("Configurations", tables=[configs_table(res)]))
    opts = ReportOptions(compare, categories, detail_shots, n_boot, boot_seed, plots_dir)
    for task in tasks().values():
        doc.sections += task.hook("report")(res, opts)
    return doc


def field_tables(res: Results, group: str, ids: list[str]) -> list[Table]:
    """The field's published figures under this group's protocol (MVREC on MVTec-FS, UniADC's good-or-which-defect),
    beside our configurations (:mod:`bench.report.field`)."""
    from bench.report import field

    protocol = res.configs[ids[0]].get("protocol")
    ours = {res.labels[c]: cells(res, c) for c in ids}
    found = {"mvtec_fs": field.mvrec_table, "good_or_defect": field.uniadc_table}.get(str(protocol))
    table = found(res, group, ours) if found else None
    return [table] if table is not None else []


def classification_sections(res: Results, opts: ReportOptions) -> list[Section]:
    """The classification task's sections of the report (its record's ``report`` hook): per group the categories,
    per configuration, the ablation (with plots) and per class."""
    from bench.report import plots

    compare, categories, detail_shots = opts.compare, opts.categories, opts.detail_shots
    n_boot, boot_seed, plots_dir = opts.n_boot, opts.boot_seed, opts.plots_dir
    out: list[Section] = []
    for group in res.groups(DEFAULT_TASK):
        cats, seeds, shots = res.grid(group)
        ids = res.config_ids(group)
        detail = detail_shots if detail_shots in shots else max(shots)
        head = [f"Expected grid: {len(cats)} categories × {len(seeds)} seeds {seeds} × shots {shots}."]
        out.append(Section(f"{group}: categories", head, [category_table(res, group)]))
        tables = []
        for cid in ids:
            tables.append(method_table(res, cid, n_boot, boot_seed))
            cmp_t = paper_compare_table(res, cid) if compare else None
            if cmp_t is not None:
                tables.append(cmp_t)
        text = []
        dataset = res.configs[ids[0]]["dataset"]
        if compare and dataset not in paper.PAPER_DATASETS:
            text.append(f"--compare paper: the paper reports no numbers for dataset {dataset!r} (only {', '.join(paper.PAPER_DATASETS)}).")
        elif compare and not any(paper.paper_table_name(res.configs[c]["method"], dataset) for c in ids):
            text.append(f"--compare paper: the paper reports none of these methods on {dataset!r}.")
        if compare:
            tables += field_tables(res, group, ids)
        out.append(Section(f"{group}: per configuration", text, tables))
        abl = Section(f"{group}: ablation", tables=[ablation_table(res, group, n_boot, boot_seed, compare)])
        pt = paired_table(res, group)
        if pt is not None:
            abl.tables.append(pt)
        abl.tables.append(concentration_table(res, group))
        heading = group_heading(res, group)
        if plots_dir is not None and (res.ok().group == group).any():
            curves = {res.labels[c]: averages(res, c, n_boot, boot_seed) for c in ids}
            ref = reference_rows(res, group)
            if len(shots) > 1:  # one shot count is one point per method, not a curve: the bars below show it
                abl.figures.append(plots.accuracy_vs_shots(
                    curves, plots_dir / slug(f"acc-vs-shots-{group}"), heading.title("Defect-type accuracy vs shots"),
                    {k: ref.loc[k] for k in ref.index},
                    f"mean over categories; {band_caption(curves, f'95% category-stratified bootstrap CI over seeds ({n_boot:,} resamples)')}; {group}",
                    subtitle=f"mean over categories · {heading.subtitle}"))  # fmt: skip
            cs = {res.labels[c]: at_shots(cells(res, c), detail) for c in ids}
            means = pd.DataFrame({k: v.mean_pct for k, v in cs.items()})
            errs = pd.DataFrame({k: v.ci_high_pct - v.mean_pct for k, v in cs.items()})
            abl.figures.append(plots.category_bars(means, errs, plots_dir / slug(f"categories-{detail}shot-{group}"),
                                                   heading.title(f"Defect-type accuracy per category, {detail}-shot"),
                                                   f"mean over seeds; {BARS}; {group}", heading.subtitle,
                                                   single_title=heading.title(f"Defect-type accuracy on {{category}}, {detail}-shot")))  # fmt: skip
        out.append(abl)
        for cat in [c for c in (categories or cats[:1]) if c in cats]:
            sec = Section(f"{group}: per class, {cat}")
            for cid in ids:
                pc = per_class_table(res, cid, cat)
                if pc is not None:
                    sec.tables.append(pc)
                cm = confusion(res, cid, cat, detail)
                if cm is not None:
                    sec.tables.append(cm[0])
                    if plots_dir is not None:
                        sec.figures.append(plots.confusion_heatmap(
                            cm[1], cm[2], plots_dir / slug(cm[0].key), heading.title(f"Confusion: {res.labels[cid]}, {cat}, {detail}-shot"),
                            cm[0].title + " (row-normalised; numbers = counts summed over seeds)",
                            subtitle=f"queries summed over seeds · {heading.subtitle}"))  # fmt: skip
            out.append(sec)
    return out
