"""Figure headings a reader can paste: a human title (``Defect-type accuracy vs shots — MTD``) and a subtitle with
what the numbers depend on (protocol, class set, backbone and weights), so a figure copied out of a report still
says what it shows.

The group label (:func:`bench.report.load.group_label`, ``mvtec_ad · paper_fixed · combined kept, good excluded``) is
an identifier for file names and sections; a figure shows it spelled out instead. A random-init backbone's caveat
(:func:`bench.report.load.weights_desc`: not comparable with the paper, docs/environment.md) is written into the
subtitle, inside the picture, since a caption does not travel with a pasted PNG.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.report.load import Results

DATASET_NAMES = {
    "mvtec_ad": "MVTec AD", "mvtec_3d": "MVTec 3D-AD", "mtd": "MTD (Magnetic Tile Defect)", "visa": "VisA",
    "synthetic": "synthetic data", "synthetic-tiny": "synthetic data (tiny)", "folder": "own images",
}  # fmt: skip
"""How a figure names a dataset; any other name is shown as it is."""

RANDOM_CAVEAT = "random init: NOT comparable with the paper"


@dataclass(frozen=True)
class Heading:
    """What a figure of one group says about itself.

    Attributes:
        dataset: the dataset's name for people (:data:`DATASET_NAMES`).
        subtitle: protocol · class set · backbone / weights (with :data:`RANDOM_CAVEAT` where a backbone is random).
    """

    dataset: str
    subtitle: str

    def title(self, what: str) -> str:
        """``what`` — the dataset: a figure's title."""
        return f"{what} — {self.dataset}"


def dataset_name(name: str) -> str:
    return DATASET_NAMES.get(name, name)


def weights_text(fields: dict[str, str]) -> str:
    """Backbone and weights in a few words (no hash, no package version: those are in the configurations table)."""
    if fields.get("weights") == "random":
        return f"{fields.get('backbone', '?')}, {RANDOM_CAVEAT}"
    return f"{fields.get('backbone', '?')}, {fields.get('weights', '?')} weights"


def class_set_text(fields: dict[str, str]) -> str:
    """The class set as a reader says it: whether MVTec's ``combined`` type and the ``good`` images are classes (the
    two fields :func:`bench.report.load.group_label` names a group by)."""
    given = {k: fields.get(f"class_set.{k}", "none") for k in ("combined", "good")}
    parts = [f"'{k}' {v}" for k, v in given.items() if v != "none"]
    return "class set: " + ", ".join(parts) if parts else ""


def group_heading(res: Results, group: str) -> Heading:
    """The heading of a group's figures: its configurations share the dataset, protocol and class set
    (:func:`bench.report.load.group_label`); their backbones are listed (at most three, else counted)."""
    configs = [res.configs[c] for c in res.config_ids(group)]
    if not configs:
        return Heading(group, "")
    first = configs[0]
    backbones = sorted({weights_text(f) for f in configs}, key=lambda t: (RANDOM_CAVEAT not in t, t))
    many = f"{len(backbones)} backbones (see the configurations table)"
    shown = "; ".join(backbones) if len(backbones) <= 3 else many
    if len(backbones) > 3 and any(RANDOM_CAVEAT in b for b in backbones):
        shown += f"; some {RANDOM_CAVEAT}"
    unit = ""
    if "unit" in first:  # region units: the unit and what the methods were given of where the defect is
        unit = f"unit {first['unit']}, masks {first.get('localisation', 'none')}"
    parts = [f"protocol {first.get('protocol', '?')}", unit, class_set_text(first), shown]
    return Heading(dataset_name(first.get("dataset", group)), " · ".join(p for p in parts if p))

