"""Tables and plots of the anomaly class discovery task (``task: discovery`` rows; docs/tasks.md), apart from the
classification tables: their numbers are not comparable with few-shot accuracy.

Per group (discovery · dataset · protocol · class set): every configuration's dataset figures, the unweighted mean
over categories of the per-category seed means of Hungarian-matched accuracy (ACC), NMI and ARI, with what the
configuration used (maps, representation, oracle masks) and the flags ``transductive`` and ``k_known``
(:func:`summary_table`); ACC per category (:func:`category_table`); with ``--compare``, the published numbers of
AnomalyNCD's README for the same dataset and protocol beside ours (:func:`published_table`, from
``bench/data/discovery_published.csv``); the confusion matrix of a category summed over seeds, its columns the
*matched* class names (:func:`confusion_table`: a raw cluster id is never shown as a class). The leaderboard ranks
configurations by ACC with a category-stratified bootstrap interval over seeds (:func:`leaderboard_sections`).
Reference rows (``one-cluster``: the largest class's share; ``random-ids``) are methods of their own.

Every table also shows ``ACC defects`` (the same ACC over the defect images only, :mod:`bench.metrics.discovery`) and
the largest cluster's share with collapsed runs flagged (:func:`bench.report.load.collapse_flag`). Oracle rows (those
that read ground-truth masks, ``oracle: true``) are marked ‡ and never ranked: under protocol ``ncd`` a good image's
mask is empty, so the oracle is handed the whole good class and its all-images ACC, NMI and ARI are inflated by the
good images' share (stated in the note); its fair figure is ACC defects, beside the same figure of the other rows.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report.document import ReportOptions, Section, Table, slug
from bench.report.headings import group_heading
from bench.report.load import COLLAPSE_RULE, Results, share_cell, weights_desc
from bench.report.render import md_text
from bench.report.stats import DEFAULT_BOOT, DEFAULT_BOOT_SEED, RULE, bounds, stratified_bootstrap_mean
from bench.seeding import numpy_rng

TASK = "discovery"
METRICS = {"cluster_accuracy": "ACC", "nmi": "NMI", "ari": "ARI"}
REFERENCE_METHODS = ("one-cluster", "random-ids")
DEFECTS = "defects_acc"
"""The frame column of ACC over the defect images only (a row's ``defects_only.cluster_accuracy``)."""
EXTRA = (DEFECTS, "good_share", "oracle", "top_share", "collapsed")
"""The frame's columns besides the three metrics (:func:`extra_figures`)."""
UNIT = ("dataset figure = unweighted mean over categories of the per-category means over seeds; ± = sample std over "
        "seeds of the dataset figure")  # fmt: skip


def fmt3(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


@lru_cache(maxsize=1)
def load_published() -> pd.DataFrame:
    """The published discovery numbers shipped with the package (AnomalyNCD's README, docs/tasks.md)."""
    with resources.files("bench").joinpath("data/discovery_published.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f, keep_default_na=True).fillna({"counterpart": ""})


def frame(res: Results) -> pd.DataFrame:
    """One line per finished discovery job: config, label, group, dataset, category, seed and the three metrics."""
    ok = res.ok()
    ok = ok[ok.task == TASK]
    recs = [{"config": r.config, "label": r.label, "group": r.group, "dataset": r.dataset, "category": r.category,
             "seed": r.seed, **{m: float(r.row.get(m, np.nan)) for m in METRICS}, **extra_figures(r)} for r in ok.itertuples()]  # fmt: skip
    return pd.DataFrame(recs, columns=["config", "label", "group", "dataset", "category", "seed", *METRICS, *EXTRA])


def number(v: Any) -> float:
    """A row's value as a float, NaN when it is missing (a row from before the field) or not a number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan


def extra_figures(r: Any) -> dict[str, Any]:
    """A frame line's ACC over defects, good share, oracle flag and largest-cluster share (NaN / None: not recorded)."""
    return {DEFECTS: number((r.row.get("defects_only") or {}).get("cluster_accuracy")), "good_share": number(r.row.get("good_share")),
            "oracle": bool(r.row.get("oracle")), "top_share": r.top_share, "collapsed": r.collapsed}  # fmt: skip


def oracle_mark(res: Results, cid: str) -> str:
    """`` ‡`` after the label of a configuration that read ground-truth masks (an oracle), else ``""``."""
    return " ‡" if any(r.get("oracle") for r in res.frame[res.frame.config == cid].row) else ""


def oracle_note(df: pd.DataFrame) -> list[str]:
    """The footnote of tables with oracle rows: what they are given and the good images' share."""
    o = df[df.oracle]
    if o.empty:
        return []
    share = o.good_share.mean()
    given = ("" if not share > 0 else f"; a good image's mask is empty, so every good image gets the same vector and the "
             f"whole good class ({100 * share:.0f} % of the images, mean over its runs) is handed to it: its ACC, NMI and ARI "
             "over all images are inflated by that share")  # fmt: skip
    unknown = " (not recorded in these rows: written before it existed; rerun to get it)" if o[DEFECTS].isna().all() else ""
    return [f"‡ oracle: reads the ground-truth masks{given}. Compare it on ACC defects (over the defect images only, "
            f"clusters re-matched){unknown}; it is not ranked."]  # fmt: skip


def describe(res: Results, cid: str) -> dict[str, str]:
    """What a configuration used, from one of its rows: maps, representation, oracle, flags."""
    rows = [r for r in res.frame[res.frame.config == cid].row if r.get("status") == "ok"] or list(res.frame[res.frame.config == cid].row)
    r: dict[str, Any] = rows[0] if rows else {}
    f = res.configs[cid]
    maps = r.get("maps") or {}
    if r.get("oracle"):
        masks = "ground-truth masks (oracle)"
    elif maps.get("source") == "patchcore":
        masks = f"PatchCore maps ({f['backbone']})"
    elif maps.get("source") == "png":
        masks = f"PNG maps ({Path(str(maps.get('root'))).name})"
    else:
        masks = "–"
    vit = (r.get("method_info") or {}).get("vit")
    if vit:
        what = "pretrained" if vit.get("pretrained") else "RANDOM init"
        rep = f"{vit.get('name')} ({what}){'' if vit.get('paper_backbone') else ': not the paper DINO ViT-B/8'}"
    elif f["method"] in REFERENCE_METHODS:
        rep = "none (reference row)"
    else:
        rep = weights_desc(f)
    flags = ", ".join(k for k in ("transductive", "k_known") if r.get(k))
    return {"masks / maps": masks, "representation": rep, "flags": flags or "–"}


def dataset_figures(df: pd.DataFrame, cats: list[str], seeds: list[int]) -> dict[str, Any]:
    """Mean over categories of per-category seed means, the std over seeds of per-seed dataset means, coverage."""
    out: dict[str, Any] = {"n": int(len(df)), "N": len(cats) * len(seeds), "n_categories": int(df.category.nunique())}
    for m in (*METRICS, DEFECTS):
        wide = df.pivot_table(index="category", columns="seed", values=m).reindex(index=cats, columns=seeds)
        out[m] = float(wide.mean(axis=1).mean()) if wide.notna().any().any() else np.nan
        per_seed = wide.dropna(axis=1, how="any").mean(axis=0)
        out[f"{m}_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else np.nan
    return out


LARGEST = (f"ACC defects = ACC over the defect images only (good left out, clusters re-matched); largest cluster = share "
           f"of a run's images in its largest cluster, mean over runs; {COLLAPSE_RULE}.")  # fmt: skip


def defects_cell(d: dict[str, Any]) -> str:
    """ACC over the defect images (± std over seeds), ``?`` when the rows did not record it."""
    return "?" if not np.isfinite(d[DEFECTS]) else cell(d[DEFECTS], d[f"{DEFECTS}_std"])


def grid(df: pd.DataFrame, res: Results, group: str) -> tuple[list[str], list[int]]:
    cats, seeds, _ = res.grid(group)
    return cats, seeds


def cell(mean: float, std: float) -> str:
    return fmt3(mean) if not np.isfinite(std) else f"{fmt3(mean)} ± {fmt3(std)}"


def config_ids(res: Results, group: str) -> list[str]:
    """The group's configurations, reference rows last."""
    ids = res.config_ids(group)
    return sorted(ids, key=lambda c: (res.configs[c]["method"] in REFERENCE_METHODS, res.labels[c]))


def summary_table(res: Results, group: str) -> Table:
    """Per configuration: dataset ACC, NMI, ARI (mean ± std over seeds), coverage, maps, representation, flags."""
    df = frame(res)
    cats, seeds = grid(df, res, group)
    recs, disp = [], []
    for cid in config_ids(res, group):
        sub = df[df.config == cid]
        d = dataset_figures(sub, cats, seeds)
        info = describe(res, cid)
        recs.append({"configuration": res.labels[cid], "method": res.configs[cid]["method"], **d, **info, "group": group,
                     "top_share_mean": sub.top_share.mean(), "n_collapsed": int(sub.collapsed.eq(True).sum())})  # fmt: skip
        disp.append({"configuration": res.labels[cid] + oracle_mark(res, cid), **{name: cell(d[m], d[f"{m}_std"]) for m, name in METRICS.items()},
                     "ACC defects": defects_cell(d), "largest cluster": share_cell(sub),
                     "runs": f"{d['n']}/{d['N']}" + (" †" if d["n"] < d["N"] else ""), **info})  # fmt: skip
    t = pd.DataFrame(disp).set_index("configuration")
    notes = ["† incomplete: missing categories, seeds or failed jobs; the figure is over the runs it has."] if any(r["n"] < r["N"] for r in recs) else []
    notes += oracle_note(df[df.group == group]) + [LARGEST]
    return Table(f"discovery-{group}", "Anomaly class discovery: dataset figures", t, pd.DataFrame(recs),
                 f"{UNIT}; ACC = accuracy after Hungarian matching of clusters to classes (AnomalyNCD's \"F1\"), NMI and "
                 f"ARI (scikit-learn); categories {', '.join(cats)}; seeds {seeds}", notes)  # fmt: skip


def category_table(res: Results, group: str) -> Table:
    """ACC per category (rows) and configuration (columns): mean ± std over seeds (number of seeds)."""
    df = frame(res)
    cats, _ = grid(df, res, group)
    ids = config_ids(res, group)
    disp = pd.DataFrame(index=pd.Index(cats, name="category"))
    recs = []
    for cid in ids:
        sub = df[df.config == cid]
        col = []
        for c in cats:
            v = sub[sub.category == c].cluster_accuracy
            col.append("–" if v.empty else (cell(v.mean(), v.std(ddof=1)) if len(v) > 1 else fmt3(v.mean())) + f" ({len(v)})")
            recs.append({"configuration": res.labels[cid], "category": c, "acc_mean": v.mean() if len(v) else np.nan,
                         "acc_std": v.std(ddof=1) if len(v) > 1 else np.nan, "n_seeds": len(v)})  # fmt: skip
        disp[res.labels[cid]] = col
    return Table(f"discovery-categories-{group}", "ACC per category", disp, pd.DataFrame(recs).assign(group=group),
                 "Hungarian-matched accuracy, mean ± sample std over seeds (number of seeds)")


def published_table(res: Results, group: str) -> Table | None:
    """Our dataset figures with the published ones for the same dataset and protocol (None when there are none)."""
    df = frame(res)
    ids = config_ids(res, group)
    if not ids:
        return None
    f = res.configs[ids[0]]
    pub = load_published()
    pub = pub[(pub.dataset == f["dataset"]) & (pub.protocol == f["protocol"]) & (pub.category == "mean")]
    if pub.empty:
        return None
    cats, seeds = grid(df, res, group)
    rows, disp = [], []
    for cid in ids:
        sub = df[df.config == cid]
        d = dataset_figures(sub, cats, seeds)
        counterpart = pub[pub.counterpart == res.configs[cid]["method"]]
        beside = counterpart.iloc[0] if len(counterpart) else None
        disp.append({"row": f"ours: {res.labels[cid]}", **{n: fmt3(d[m]) for m, n in METRICS.items()},
                     "published counterpart (ACC / NMI / ARI)": "–" if beside is None else
                     f"{beside.method}: {fmt3(beside.acc)} / {fmt3(beside.nmi)} / {fmt3(beside.ari)}",
                     "source": f"this run, {d['n_categories']} categor{'y' if d['n_categories'] == 1 else 'ies'} × "
                               f"{sub.seed.nunique()} seed(s)"})  # fmt: skip
        rows.append({"row": res.labels[cid], "kind": "ours", **{m: d[m] for m in METRICS}})
    for p in pub.itertuples():
        disp.append({"row": f"published: {p.method}", "ACC": fmt3(p.acc), "NMI": fmt3(p.nmi), "ARI": fmt3(p.ari),
                     "published counterpart (ACC / NMI / ARI)": "", "source": p.source})  # fmt: skip
        rows.append({"row": p.method, "kind": "published", "cluster_accuracy": p.acc, "nmi": p.nmi, "ari": p.ari})
    notes = ["The published rows use DINO ViT-B/8 (AnomalyNCD), WideResNet-50 PatchCore or MuSc maps and one seed; "
             "rows of ours that say RANDOM init or another backbone are NOT comparable with them."]  # fmt: skip
    return Table(f"discovery-published-{group}", f"Published numbers beside ours ({f['dataset']}, protocol {f['protocol']})",
                 pd.DataFrame(disp).set_index("row"), pd.DataFrame(rows).assign(group=group),
                 f"ours: {UNIT}; published: AnomalyNCD README, mean over the dataset's categories", notes)  # fmt: skip


def confusion_table(res: Results, cid: str, category: str) -> tuple[Table, np.ndarray, list[str], list[str]] | None:
    """The matched confusion matrix of one configuration and category, summed over seeds."""
    ok = res.ok()
    rows = [r for r in ok[(ok.config == cid) & (ok.category == category)].row if r.get("confusion") and r.get("class_names")]
    if not rows:
        return None
    names = list(rows[0]["class_names"])
    cols = list(names) + (["unmatched"] if any("unmatched" in (r.get("confusion_columns") or []) for r in rows) else [])
    total = np.zeros((len(names), len(cols)), int)
    for r in rows:
        if list(r["class_names"]) != names:
            continue
        cm = np.asarray(r["confusion"], int)
        total[:, : cm.shape[1]] += cm
    disp = pd.DataFrame(total, index=pd.Index(names, name="true \\ matched cluster"), columns=cols)
    data = disp.stack().rename("count").reset_index().set_axis(["true", "matched", "count"], axis=1)
    label = res.labels[cid]
    t = Table(f"discovery-confusion-{label}-{category}-{res.frame[res.frame.config == cid].group.iloc[0]}",
              f"{label}: matched confusion matrix, {category}", disp, data.assign(configuration=label),
              f"images summed over {len(rows)} seed(s); rows = true class, columns = the class each cluster was matched to "
              "(Hungarian, per seed)")  # fmt: skip
    return t, total, names, cols


def discovery_sections(
    res: Results, compare: bool = False, categories: list[str] | None = None, n_boot: int = DEFAULT_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED, plots_dir: Path | None = None,
) -> list[Section]:
    """The report's discovery part: per group, the dataset table, ACC per category, the published numbers
    (``compare``) and the confusion matrices of the chosen categories (the first by default), with plots."""
    from bench.report import plots

    out = []
    for group in res.groups(TASK):
        cats, seeds, _ = res.grid(group)
        head = [f"Anomaly class discovery: {len(cats)} categories × {len(seeds)} seeds {seeds}. Not comparable with "
                "few-shot classification accuracy."]  # fmt: skip
        tables = [summary_table(res, group), category_table(res, group)]
        if compare:
            pt = published_table(res, group)
            if pt is not None:
                tables.append(pt)
            else:
                head.append("--compare: no published discovery numbers for this dataset and protocol (AnomalyNCD's "
                            "README has MVTec AD and MTD under protocol ncd).")  # fmt: skip
        sec = Section(group, head, tables)
        heading = group_heading(res, group)
        for cat in [c for c in (categories or cats[:1]) if c in cats]:
            for cid in config_ids(res, group):
                cm = confusion_table(res, cid, cat)
                if cm is None:
                    continue
                sec.tables.append(cm[0])
                if plots_dir is not None:
                    sec.figures.append(plots.confusion_heatmap(
                        cm[1], cm[2], plots_dir / slug(cm[0].key), heading.title(f"Discovered types: {res.labels[cid]}, {cat}"),
                        cm[0].title + " (row-normalised; numbers = images summed over seeds)", columns=cm[3],
                        xlabel="matched cluster", subtitle=f"images summed over seeds · {heading.subtitle}"))  # fmt: skip
        out.append(sec)
    return out


def ranking_table(res: Results, group: str, n_boot: int, boot_seed: int) -> Table:
    """Configurations ranked by dataset ACC, with a 95 % category-stratified bootstrap interval over seeds."""
    df = frame(res)
    cats, seeds = grid(df, res, group)
    recs = []
    for cid in config_ids(res, group):
        sub = df[df.config == cid]
        d = dataset_figures(sub, cats, seeds)
        wide = sub.pivot_table(index="category", columns="seed", values="cluster_accuracy").reindex(index=cats, columns=seeds)
        iv = stratified_bootstrap_mean(wide, n_boot=n_boot, rng=numpy_rng(boot_seed, "bootstrap", cid, TASK))
        method, mark = res.configs[cid]["method"], oracle_mark(res, cid)
        recs.append({"configuration": res.labels[cid] + mark, "method": method, "reference": method in REFERENCE_METHODS,
                     "oracle": bool(mark), "complete": d["n"] >= d["N"], **d, "ci_low": iv.low, "ci_high": iv.high,
                     "largest cluster": share_cell(sub), "top_share_mean": sub.top_share.mean(),
                     "n_collapsed": int(sub.collapsed.eq(True).sum()), **describe(res, cid)})  # fmt: skip
    data = pd.DataFrame(recs)
    apart = data.reference | data.oracle
    ranked = data[~apart & data.complete].sort_values("cluster_accuracy", ascending=False)
    rest = data[apart | ~data.complete].sort_values(["oracle", "reference", "cluster_accuracy"], ascending=[False, True, False])
    data = pd.concat([ranked.assign(rank=[str(i + 1) for i in range(len(ranked))]),
                      rest.assign(rank=["oracle" if o else "ref." if r else "failed" if n == 0 else "unranked†"
                                        for o, r, n in zip(rest.oracle, rest.reference, rest.n)])])  # fmt: skip
    disp = pd.DataFrame({
        "rank": data["rank"], "configuration": data.configuration, "ACC": data.cluster_accuracy.map(fmt3),
        "95% CI": [bounds(lo, hi, fmt3) if n else "" for lo, hi, n in zip(data.ci_low, data.ci_high, data.n)],
        "NMI": data.nmi.map(fmt3), "ARI": data.ari.map(fmt3),
        "ACC defects": [defects_cell(r) for r in data.to_dict("records")], "largest cluster": data["largest cluster"],
        "runs": [f"{n}/{N}" for n, N in zip(data.n, data.N)],
        "masks / maps": data["masks / maps"], "representation": data.representation,
    }).set_index("rank")  # fmt: skip
    notes = []
    if (~data.complete).any():
        notes.append("† incomplete (missing categories, seeds or failed jobs): not ranked.")
    lost = [f"{res.labels[cid]}: {why}" for cid in config_ids(res, group) if (why := res.unfinished(cid))]
    if lost:
        notes.append(f"not finished (counted as missing runs): {'; '.join(lost)}.")
    if data.representation.str.contains("RANDOM|random init").any():
        notes.append("rows with a RANDOM-init representation are not comparable with published numbers.")
    notes += oracle_note(df[df.group == group]) + [LARGEST]
    return Table(f"leaderboard-{group}", "ranked by ACC", disp, data.assign(group=group),
                 f"{UNIT}; 95% CI: category-stratified bootstrap over seeds, {n_boot:,} resamples, {RULE}, n/a otherwise; reference rows "
                 "(one-cluster = the largest class's share, random-ids) are not ranked", notes)  # fmt: skip


def report_sections(res: Results, opts: ReportOptions) -> list[Section]:
    """The task record's ``report`` hook (:class:`bench.tasks.Task`): :func:`discovery_sections`."""
    return discovery_sections(res, opts.compare, opts.categories, opts.n_boot, opts.boot_seed, opts.plots_dir)


def leaderboard_sections(res: Results, n_boot: int = DEFAULT_BOOT, boot_seed: int = DEFAULT_BOOT_SEED,
                         plots_dir: Path | None = None) -> list[Section]:
    """The leaderboard's discovery part (the task record's ``leaderboard`` hook): per group, the ranking (and the
    published numbers for reference); no plots."""
    out = []
    for group in res.groups(TASK):
        cats, seeds, _ = res.grid(group)
        sec = Section(group, [f"Anomaly class discovery: {len(cats)} categories ({', '.join(cats)}) × {len(seeds)} "
                              f"seeds {seeds}; not comparable with few-shot classification."],  # fmt: skip
                      [ranking_table(res, group, n_boot, boot_seed)])
        pt = published_table(res, group)
        if pt is not None:
            sec.tables.append(pt)
        out.append(sec)
    return out


def summary_blocks(res: Results) -> list[str]:
    """Markdown blocks for ``summary.md`` (the end of ``bench run``): per configuration, categories × ACC/NMI/ARI."""
    from tabulate import tabulate

    df = frame(res)
    blocks = []
    for group in res.groups(TASK):
        cats, seeds = grid(df, res, group)
        for cid in config_ids(res, group):
            sub = df[df.config == cid]
            if sub.empty:
                continue
            rows = []
            for c in cats:
                s = sub[sub.category == c]
                rows.append([md_text(c), *[("–" if s.empty else (cell(s[m].mean(), s[m].std(ddof=1)) if len(s) > 1 else fmt3(s[m].mean()))
                                   + f" ({len(s)})") for m in METRICS]])  # fmt: skip
            d = dataset_figures(sub, cats, seeds)
            rows.append(["mean", *[fmt3(d[m]) for m in METRICS]])
            info = describe(res, cid)
            oracle = " ".join(oracle_note(sub))
            if oracle and np.isfinite(d[DEFECTS]):
                oracle += f" ACC defects: {fmt3(d[DEFECTS])}."
            head = f"{res.labels[cid]}{oracle_mark(res, cid)}  ({group}; {info['masks / maps']}; {info['representation']})"
            blocks.append(f"### {md_text(head)}\n\n"
                          + tabulate(rows, headers=["category", *METRICS.values()], tablefmt="github", disable_numparse=True)
                          + "\n\nHungarian-matched accuracy (ACC), NMI, ARI: mean ± sample std over seeds (number of seeds); "
                          "mean row = unweighted mean over categories" + (f"\n\n{oracle}" if oracle else ""))  # fmt: skip
    return blocks
