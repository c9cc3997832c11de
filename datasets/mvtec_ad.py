"""MVTec AD (Bergmann et al., CVPR 2019): ``<root>/<category>/{train/good, test/<type>, ground_truth/<type>}``.

15 categories; toothbrush has a single defect type and is skipped by the ``min_defect_types=2`` rule with
a logged message. ``combined`` is kept as an ordinary class (paper protocol) unless ``exclude_combined``.
The folder ``ground_truth/<type>/<id>_mask.png`` is optional (the shared real subset has none).
"""

from __future__ import annotations

from pathlib import Path

from bench.datasets._base import DatasetOptions, Samples, check_root, register_dataset, scan_mvtec_layout

CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")

HINT = (
    "Download MVTec AD by hand from the MVTec website (CC BY-NC-SA 4.0), extract it, and pass "
    "--data-root PATH where PATH contains bottle/, cable/, ... "
)


def mvtec_mask(category_dir: Path, label: str, stem: str) -> Path | None:
    return category_dir / "ground_truth" / label / f"{stem}_mask.png"


def scan_mvtec_ad(root: Path | None, options: DatasetOptions, name: str, hint: str) -> Samples:
    root = check_root(root, name, hint)
    ignored: dict[str, list[str]] = {}
    table = scan_mvtec_layout(root, name, options.categories, mask_folder=mvtec_mask, ignored=ignored)
    return Samples(dataset=name, root=root, table=table, ignored=ignored)


@register_dataset("mvtec_ad", description="MVTec AD, real layout (--data-root the folder holding bottle/, cable/, ...)")
def mvtec_ad(root: Path | None, options: DatasetOptions) -> Samples:
    """MVTec AD in its published layout."""
    return scan_mvtec_ad(root, options, "mvtec_ad", HINT)
