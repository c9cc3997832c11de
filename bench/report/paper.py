"""The paper's reported numbers and how the harness's methods map onto the paper's tables.

Liu et al., arXiv 2406.05645. ``bench/data/paper_results.csv`` transcribes the paper's result tables
(columns: table, dataset, method, column, category, shots, accuracy_percent; docs/method-notes.md §3); it ships
with the package so ``bench report --compare paper`` works anywhere.

:data:`PAPER_METHODS` is the one place that says which harness method reproduces which paper table and
what the paper's ablation (Table 4) calls it. Unknown method names are tolerated: they keep their own
name and have no paper numbers.

Caveats (docs/method-notes.md §3), applied here:

* Printed averages are not always the mean of the printed rows (Table 9 3-shot: 28.12 printed, 26.64
  recomputed): :func:`paper_table` recomputes the average and keeps the printed one separately.
* Table 4 rows were assigned by hand (check marks are not machine-readable); each equals a 2-shot average
  of Tables 10, 8, 11, 3 and 1, so the per-category tables are used instead.
* The ``unlabelled appendix table`` has no stated role and is never a comparison target.
* Tables 5 and 6 repeat 2-shot configurations with other numbers; they are not per-shot tables and are
  not used for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pandas as pd

NOT_A_TARGET = ("unlabelled appendix table",)
PAPER_DATASETS = ("mvtec_ad", "mvtec_3d")


@dataclass(frozen=True)
class PaperRef:
    """How one harness method relates to the paper.

    Attributes:
        ablation_name: the row name as the paper's ablation names it (used in the ablation table).
        tables: per dataset, the paper table holding this configuration's categories × shots numbers.
        order: position in the paper's ablation (Table 4) order; methods outside the paper sort after.
    """

    ablation_name: str
    tables: dict[str, str]
    order: int = 100


PAPER_METHODS: dict[str, PaperRef] = {
    "direct": PaperRef("Direct ResNet-50 (Table 10)", {"mvtec_ad": "Table 10 (Appendix D)"}, 0),
    "direct-all": PaperRef(
        "Direct ResNet-50, reference-code variant (Table 10)", {"mvtec_ad": "Table 10 (Appendix D)"}, 1
    ),
    "relationnet-residual-pretrain": PaperRef(
        "vanilla + residual + pretraining (Table 8)", {"mvtec_ad": "Table 8 (Appendix B)"}, 2
    ),
    "contrastive-raw-pretrain": PaperRef(
        "contrastive + pretraining, raw features (Table 11)", {"mvtec_ad": "Table 11 (Appendix E)"}, 3
    ),
    "contrastive-residual": PaperRef("contrastive + residual, no pretraining (Table 3)", {"mvtec_ad": "Table 3"}, 4),
    "contrastive": PaperRef(
        "contrastive + residual + pretraining (Table 1/2)", {"mvtec_ad": "Table 1", "mvtec_3d": "Table 2"}, 5
    ),
    "contrastive-maml": PaperRef(
        "contrastive + residual + pretraining + MAML (Table 13)", {"mvtec_ad": "Table 13 (Appendix G)"}, 6
    ),
    "contrastive-polygon": PaperRef(
        "contrastive + residual + pretraining, polygon masks (Table 9)", {"mvtec_ad": "Table 9 (Appendix C)"}, 7
    ),
}
# Appendix F: the main method on 3D-AD with test `good` images as one more class.
GOOD_INCLUDED_TABLES: dict[tuple[str, str], str] = {("contrastive", "mvtec_3d"): "Table 12 (Appendix F)"}

# Methods of this harness that the paper does not have: readable names, sorted after the paper's rows.
OTHER_NAMES: dict[str, str] = {
    "protonet": "ProtoNet, raw features (not in paper)",
    "protonet-residual": "ProtoNet, residual features (not in paper)",
    "knn": "kNN, raw features (not in paper)",
    "knn-residual": "kNN, residual features (not in paper)",
    "logreg": "logistic regression (not in paper)",
    "logreg-residual": "logistic regression, residual features (not in paper)",
    "contrastive-raw": "contrastive, raw features, no pretraining (not in paper)",
    "relationnet": "vanilla + residual, no pretraining (not in paper)",
    "relationnet-raw": "vanilla, raw features, no pretraining (not in paper)",
    "relationnet-raw-pretrain": "vanilla + pretraining, raw features (not in paper)",
    "region-protonet": "region prototypes, mask-pooled (not in paper)",
    "region-protonet-inside": "region prototypes, raw features inside the mask (not in paper)",
    "region-knn": "region kNN, mask-pooled (not in paper)",
    "region-logreg": "region logistic regression, mask-pooled (not in paper)",
    "region-cache": "region cache classifier, Tip-Adapter-like (not in paper)",
    "region-multiview": "region prototypes over multi-view crops, MVREC's idea (not in paper)",
}


def ablation_name(method: str) -> str:
    """The paper's name for ``method`` (or a readable name, or the method name itself)."""
    if method in PAPER_METHODS:
        return PAPER_METHODS[method].ablation_name
    return OTHER_NAMES.get(method, method)


def ablation_order(method: str) -> tuple[int, str]:
    """Sort key putting methods in the paper's ablation order, others after, alphabetically."""
    ref = PAPER_METHODS.get(method)
    return (ref.order if ref else 100 + (0 if method in OTHER_NAMES else 1), method)


def paper_table_name(method: str, dataset: str, good_included: bool = False) -> str | None:
    """The paper table with this configuration's per-category numbers, or None."""
    if good_included:
        return GOOD_INCLUDED_TABLES.get((method, dataset))
    ref = PAPER_METHODS.get(method)
    return ref.tables.get(dataset) if ref else None


@lru_cache(maxsize=1)
def load_paper_results() -> pd.DataFrame:
    """All rows of the shipped paper numbers (a copy; the ``unlabelled appendix table`` included, flagged)."""
    with resources.files("bench").joinpath("data/paper_results.csv").open("r", encoding="utf-8") as f:
        df = pd.read_csv(f)
    df["target"] = ~df["table"].isin(NOT_A_TARGET)
    return df


def paper_table(table: str) -> tuple[pd.DataFrame, pd.Series]:
    """One per-shot paper table.

    Args:
        table: the paper's label, e.g. ``"Table 1"``.

    Returns:
        (categories × shots accuracy % without the average row, the printed averages by shots).
    """
    df = load_paper_results().copy()
    df = df[df["table"] == table]
    if df.empty or table in NOT_A_TARGET:
        raise KeyError(f"no usable paper table {table!r}")
    printed = df[df["category"] == "average"].set_index("shots")["accuracy_percent"].sort_index()
    body = df[df["category"] != "average"].pivot(index="category", columns="shots", values="accuracy_percent")
    return body.sort_index(), printed


def paper_numbers(method: str, dataset: str, good_included: bool = False) -> tuple[str, pd.DataFrame, pd.Series] | None:
    """(table name, categories × shots %, printed averages) for a harness method, or None when the paper has none."""
    name = paper_table_name(method, dataset, good_included)
    if name is None:
        return None
    body, printed = paper_table(name)
    return name, body, printed
