"""The leaderboard: configurations ranked per shot count, with 95% confidence intervals and coverage.

For each dataset × protocol × class-set group and each shot count (:func:`shot_table`): configurations ranked by
mean accuracy (unweighted mean over categories of the per-category seed means), a 95% interval from a
category-stratified bootstrap over seeds, the coverage (finished (category, seed) runs of the expected grid),
P(> next) (the probability of beating the next-ranked configuration on a random paired run), backbone and
weights, the most-predicted class's share with collapsed runs flagged (:func:`bench.report.load.collapse_flag`),
and chance / majority-class reference rows. Intervals and probabilities are shown only where enough draws
stand behind them (:data:`bench.report.stats.RULE`), ``n/a`` elsewhere. A configuration with missing categories,
seeds or failed jobs is marked † and listed after the ranked ones, never ranked as if complete; one whose every job
failed is listed as ``failed``, and each table's notes count the failed jobs with their reason (never "not run").
:func:`build_leaderboard` puts the
tables and plots into one document (``bench leaderboard`` writes it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import paper
from bench.report.document import Document, Section, Table, slug
from bench.report.headings import group_heading
from bench.report.load import COLLAPSE_RULE, Results, share_cell, weights_desc
from bench.report.stats import MIN_DRAWS, NA, RULE, prob_improvement
from bench.report.tables import (
    BARS, at_shots, averages, band_caption, cells, fmt, interval_text, prob_text, reference_rows,
)  # fmt: skip
from bench.results import DEFAULT_TASK
from bench.tasks import tasks

UNIT = ("95% CI: category-stratified bootstrap over seeds, {n_boot:,} resamples; a unit = one (category, seed) run; "
        "accuracy % = unweighted mean over categories of the per-category means over seeds; " + RULE + ", n/a otherwise")  # fmt: skip


def shot_table(res: Results, group: str, shots: int, n_boot: int, boot_seed: int) -> Table:
    """The ranking at one shot count: ranked complete configurations, then incomplete ones (†), then references."""
    cats, seeds, _ = res.grid(group)
    ok = res.ok()
    recs, absent, lost = [], [], []
    for cid in res.config_ids(group):
        a = averages(res, cid, n_boot, boot_seed)
        a = a[a.shots == shots].iloc[0]
        why = res.unfinished(cid, shots)
        if why:
            lost.append(f"{res.labels[cid]}: {why}")
        if a.n == 0 and not why:
            absent.append(res.labels[cid])
            continue
        sub = ok[(ok.config == cid) & (ok.shots == shots)]
        f = res.configs[cid]
        recs.append({"cid": cid, "configuration": res.labels[cid], "paper_row": paper.ablation_name(f["method"]), "shots": shots,
                     "mean_pct": a.mean_pct, "ci_low_pct": a.ci_low_pct, "ci_high_pct": a.ci_high_pct, "n": int(a.n), "N": int(a.N),
                     "n_categories": int(a.n_categories), "N_categories": len(cats), "n_seeds": int(sub.seed.nunique()),
                     "N_seeds": len(seeds), "complete": bool(a.n >= a.N), "backbone_weights": weights_desc(f)})  # fmt: skip
    cols = ["cid", "configuration", "paper_row", "shots", "mean_pct", "ci_low_pct", "ci_high_pct", "n", "N", "n_categories",
            "N_categories", "n_seeds", "N_seeds", "complete", "backbone_weights"]  # fmt: skip
    d = pd.DataFrame(recs, columns=cols)
    d["rank"] = np.nan
    done = d.complete.astype(bool)
    d.loc[done, "rank"] = d.loc[done, "mean_pct"].rank(method="min", ascending=False)
    d = d.assign(_inc=~done).sort_values(["_inc", "mean_pct"], ascending=[True, False]).drop(columns="_inc").reset_index(drop=True)
    d["p_beats_next"], d["n_pairs_next"] = np.nan, np.nan
    ranked = d[d["rank"].notna()]
    for i, j in zip(ranked.index[:-1], ranked.index[1:]):
        sa, sb = (ok[(ok.config == d.at[k, "cid"]) & (ok.shots == shots)].set_index(["category", "seed"]).accuracy for k in (i, j))
        d.at[i, "p_beats_next"] = prob_improvement(sa, sb)
        d.at[i, "n_pairs_next"] = len(sa.index.intersection(sb.index))
    disp = pd.DataFrame({
        "rank": ["failed" if n == 0 else "unranked†" if pd.isna(r) else str(int(r)) for r, n in zip(d["rank"], d.n)],
        "configuration": d.configuration,
        "accuracy %": d.mean_pct.map(fmt),
        "95% CI": [interval_text(lo, hi) if n else "" for lo, hi, n in zip(d.ci_low_pct, d.ci_high_pct, d.n)],
        "coverage (cat. × seeds)": [_coverage(r) for _, r in d.iterrows()],
        "P(> next)": ["" if pd.isna(m) else prob_text(p, int(m)) for p, m in zip(d.p_beats_next, d.n_pairs_next)],
        "backbone / weights": d.backbone_weights,
        "paper row": d.paper_row,
    })  # fmt: skip
    ref = reference_rows(res, group)
    refs = []
    for kind, name in (("chance", "chance (1/C)"), ("majority", "majority class")):
        if kind in ref.index and shots in ref.columns:
            v = float(ref.loc[kind, shots])
            refs.append({"configuration": kind, "shots": shots, "mean_pct": v, "complete": True})
            disp.loc[len(disp)] = {"rank": "ref.", "configuration": name, "accuracy %": fmt(v), "95% CI": "",
                                   "coverage (cat. × seeds)": "", "P(> next)": "", "backbone / weights": "", "paper row": "reference"}  # fmt: skip
    runs = [ok[(ok.config == c) & (ok.shots == shots) & ok.collapsed.notna()] for c in d.cid]
    d["top_share_mean"] = [r.top_share.mean() if len(r) else np.nan for r in runs]
    d["n_collapsed"] = [int(r.collapsed.astype(bool).sum()) for r in runs]
    shares = [share_cell(ok[(ok.config == c) & (ok.shots == shots)]) for c in d.cid]
    disp["most-predicted share"] = shares + [""] * (len(disp) - len(shares))
    disp = disp.set_index("rank")
    notes = []
    if not done.all():
        notes.append("† incomplete (missing categories, seeds or failed jobs): listed with the mean of the runs it has, "
                     "not ranked; coverage = finished runs of the expected grid.")  # fmt: skip
    if lost:
        notes.append(f"not finished at {shots}-shot (counted as missing runs): {'; '.join(lost)}.")
    if absent:
        notes.append(f"not run at {shots}-shot (no job of this shot count in the results): {', '.join(absent)}.")
    notes.append(f"most-predicted share = share of a run's queries given its most-predicted class, mean over runs; {COLLAPSE_RULE}.")
    if d.backbone_weights.str.contains("random init").any():
        notes.append("random-init backbones are NOT comparable with the paper's ImageNet numbers.")
    data = pd.concat([d.drop(columns=["cid"]), pd.DataFrame(refs)], ignore_index=True).assign(group=group)
    cap = (f"{shots}-shot, {group}. " + UNIT.format(n_boot=n_boot)
           + "; P(> next) = probability of beating the next-ranked configuration on a random paired (category, seed) run, "
           f"ties ½; {NA} (n = paired runs) from fewer than {MIN_DRAWS} pairs")  # fmt: skip
    return Table(f"leaderboard-{group}-{shots}shot", f"{shots}-shot", disp, data, cap, notes)


def _coverage(r: pd.Series) -> str:
    text = f"{int(r.n_categories)}×{int(r.n_seeds)} of {int(r.N_categories)}×{int(r.N_seeds)} ({int(r.n)}/{int(r.N)} runs)"
    return text if r.complete else text + " †"


def build_leaderboard(res: Results, n_boot: int, boot_seed: int, plots_dir: Path | None, command: str | None) -> Document:
    """The leaderboard document: every task's rankings (its record's ``leaderboard`` hook, :class:`bench.tasks.Task`),
    in the order of :func:`bench.tasks.tasks`."""
    subject = " · ".join(part[0].lower() + part[1:] for part in res.subject().split(" · "))
    own = tuple(t for t in tasks() if t != DEFAULT_TASK)  # the tasks with sections of their own beside classification
    doc = Document(f"Leaderboard: {subject}", res.intro(shown=own), command=command)
    for task in tasks().values():
        doc.sections += task.hook("leaderboard")(res, n_boot, boot_seed, plots_dir)
    return doc


def classification_sections(res: Results, n_boot: int, boot_seed: int, plots_dir: Path | None) -> list[Section]:
    """The classification task's part of the leaderboard (its record's ``leaderboard`` hook): per group, one ranked
    table per shot count, plus plots."""
    from bench.report import plots

    out: list[Section] = []
    for group in res.groups(DEFAULT_TASK):
        cats, seeds, shots = res.grid(group)
        text = [f"Expected grid: {len(cats)} categories ({', '.join(cats)}) × {len(seeds)} seeds {seeds}; shots {shots}.",
                UNIT.format(n_boot=n_boot) + "."]  # fmt: skip
        sec = Section(group, text, [shot_table(res, group, s, n_boot, boot_seed) for s in shots])
        if plots_dir is not None and (res.ok().group == group).any():
            ids = res.config_ids(group)
            curves = {res.labels[c]: averages(res, c, n_boot, boot_seed) for c in ids}
            curves = {k: v[v.n > 0] for k, v in curves.items() if (v.n > 0).any()}
            ref = reference_rows(res, group)
            head = group_heading(res, group)
            sec.figures.append(plots.accuracy_vs_shots(curves, plots_dir / slug(f"lb-acc-vs-shots-{group}"),
                                                       head.title("Defect-type accuracy vs shots"), {k: ref.loc[k] for k in ref.index},
                                                       band_caption(curves, f"95% category-stratified bootstrap CI over seeds ({n_boot:,} resamples)"),
                                                       subtitle=f"mean over categories · {head.subtitle}"))  # fmt: skip
            s = max(shots)
            cs = {res.labels[c]: at_shots(cells(res, c), s) for c in ids}
            sec.figures.append(plots.category_bars(pd.DataFrame({k: v.mean_pct for k, v in cs.items()}),
                                                   pd.DataFrame({k: v.ci_high_pct - v.mean_pct for k, v in cs.items()}),
                                                   plots_dir / slug(f"lb-categories-{s}shot-{group}"),
                                                   head.title(f"Defect-type accuracy per category, {s}-shot"),
                                                   f"mean over seeds; {BARS}", head.subtitle,
                                                   single_title=head.title(f"Defect-type accuracy on {{category}}, {s}-shot")))  # fmt: skip
        out.append(sec)
    return out
