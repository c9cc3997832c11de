"""MVTec 3D-AD (Bergmann et al., VISAPP 2022): ``<root>/<category>/{train,validation,test}/<type>/{rgb,xyz,gt}``.

The methods read RGB only (``rgb/*.png``); ``xyz`` and ``validation`` are never read, so missing ``xyz``
files do not matter. Defect types are counted from disk (their per-type counts are not published).
"""

from __future__ import annotations

from pathlib import Path

from bench.datasets._base import DatasetOptions, Samples, check_root, register_dataset, scan_mvtec_layout

CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")

HINT = (
    "Download MVTec 3D-AD by hand from the MVTec website (CC BY-NC-SA 4.0), extract it, and pass "
    "--data-root PATH where PATH contains bagel/, cable_gland/, ... "
)


def _mask(category_dir: Path, label: str, stem: str) -> Path | None:
    return category_dir / "test" / label / "gt" / f"{stem}.png"


@register_dataset("mvtec_3d", description="MVTec 3D-AD, RGB images only (--data-root the folder holding bagel/, ...)")
def mvtec_3d(root: Path | None, options: DatasetOptions) -> Samples:
    """MVTec 3D-AD in its published layout (RGB only)."""
    root = check_root(root, "mvtec_3d", HINT)
    ignored: dict[str, list[str]] = {}
    table = scan_mvtec_layout(
        root, "mvtec_3d", options.categories, image_subdir="rgb", mask_folder=_mask, ignored=ignored
    )
    return Samples(dataset="mvtec_3d", root=root, table=table, ignored=ignored)
