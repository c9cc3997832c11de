"""The field's published figures beside ours, under the protocol they were measured with (``--compare``;
``../shared/docs/field-protocols.md``): MVREC on MVTec-FS (region-level, masks given; ``bench/data/mvrec_results.csv``,
transcribed from the authors' ``average_results.csv`` files) and UniADC's good-or-which-defect accuracy
(``bench/data/uniadc_results.csv``, transcribed by hand from the table images in its repository).

Their backbones (AlphaCLIP ViT-L/14; DINOv3 with a text encoder and Stable Diffusion) cannot be had offline: the
tables say so in their caption, and our rows beside them are not reproductions. A published table is shown only
for a group whose protocol is theirs (``mvtec_fs``; ``good_or_defect``), never beside another protocol's rows.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

from bench.report.document import Table
from bench.report.load import Results

NOT_COMPARABLE = "their backbone cannot be had offline; ours are other backbones: beside, not a reproduction"


@lru_cache(maxsize=None)
def _csv(name: str) -> pd.DataFrame:
    return pd.read_csv(resources.files("bench").joinpath("data", name).open("r", encoding="utf-8"))


def mvrec_table(res: Results, group: str, ours: dict[str, pd.DataFrame]) -> Table | None:
    """MVREC's four variants on the group's categories (k = 1 / 3 / 5) above our configurations' means at the same
    shots; ``None`` when the group is not MVTec-FS or MVREC has none of its categories."""
    pub = _csv("mvrec_results.csv")
    cats = sorted(set(res.frame[res.frame.group == group].category))
    sub = pub[pub.category.isin(cats)]
    if sub.empty:
        return None
    rows = []
    for (variant, views), g in sub.groupby(["variant", "views"], sort=False):
        for cat in cats:
            c = g[g.category == cat]
            rec = {"source": f"MVREC {variant}, {views} ({g.backbone.iloc[0]})", "category": cat}
            rec.update({f"{k}-shot": float(c[c.shots == k].accuracy_percent.iloc[0]) if (c.shots == k).any() else None
                        for k in (1, 3, 5)})  # fmt: skip
            rows.append(rec)
    for label, frame in ours.items():
        for cat in cats:
            rec = {"source": f"ours: {label}", "category": cat}
            for k in (1, 3, 5):
                hit = frame[(frame.category == cat) & (frame.shots == k)]
                rec[f"{k}-shot"] = round(float(hit.mean_pct.iloc[0]), 2) if len(hit) and hit.n.iloc[0] else None
            rows.append(rec)
    data = pd.DataFrame(rows)
    caption = ("MVTec-FS, region-level (the instance's mask given), accuracy % over the valid.csv instances, mean over "
               f"5 support draws (ours: over the seeds run); MVREC: AlphaCLIP ViT-L/14, {NOT_COMPARABLE}. Our screw "
               "figures on the shared subset hold 52 of its 60 valid instances.")  # fmt: skip
    return Table(f"mvrec-{group}", "Published MVREC figures beside ours (MVTec-FS)", data.set_index("source"), data, caption)


def uniadc_table(res: Results, group: str, ours: dict[str, pd.DataFrame]) -> Table | None:
    """UniADC's good-or-which-defect figures for the group's dataset above ours (``None`` when it has none)."""
    pub = _csv("uniadc_results.csv")
    dataset = str(res.frame[res.frame.group == group].dataset.iloc[0])
    sub = pub[pub.dataset == dataset]
    if sub.empty:
        return None
    rows = [{"source": f"UniADC, {r.setting} ({r.backbone})", "accuracy %": r.accuracy_percent} for r in sub.itertuples()]
    for label, frame in ours.items():
        for r in frame.itertuples():
            if r.n:
                rows.append({"source": f"ours: {label}, {r.category}, Ka = {r.shots}", "accuracy %": round(r.mean_pct, 2)})
    data = pd.DataFrame(rows)
    caption = ("good or which defect per image ({good} ∪ types, combined out), accuracy % over all test images; "
               f"UniADC: {NOT_COMPARABLE}. Ours: the normal shots' PatchCore decides good, the method the type.")
    return Table(f"uniadc-{group}", f"Published UniADC figures beside ours ({dataset})", data.set_index("source"), data, caption)
