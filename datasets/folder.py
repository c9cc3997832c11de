"""Any user folder in the MVTec AD layout: ``<root>/<product>/{train/good, test/<defect_type>}``.

The same parser as ``mvtec_ad``; use it for your own products. Masks in ``ground_truth/<type>/<id>_mask.png``
are optional.
"""

from __future__ import annotations

from pathlib import Path

from bench.datasets._base import DatasetOptions, Samples, register_dataset
from bench.datasets.mvtec_ad import scan_mvtec_ad

HINT = (
    "Pass --data-root PATH where PATH/<product>/train/good/ holds normal images and "
    "PATH/<product>/test/<defect_type>/ holds the defective images of each type."
)


@register_dataset("folder", description="your own images in the MVTec AD layout (--data-root PATH)")
def folder(root: Path | None, options: DatasetOptions) -> Samples:
    """A user folder in the MVTec AD layout."""
    return scan_mvtec_ad(root, options, "folder", HINT)
