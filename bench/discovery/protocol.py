"""Which images a discovery job groups, and their classes: AnomalyNCD's protocol and a defects-only variant.

* ``ncd`` (the default, AnomalyNCD's, as its code builds it; docs/tasks.md "Anomaly class discovery"): all test
  images of a category, the ``combined`` type removed, ``good`` kept as one more class; K = the number of classes
  present, given to the method.
* ``defects-only``: the same without ``good``: the classes are the defect types, as in the classification task.

Both are transductive (a method sees exactly the images it is scored on) and the same for every seed: seeds change
only what is random inside a method. The set is persisted as JSON (paths relative to the dataset root) next to the
classification episodes, and its hash is in every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.datasets import Samples
from bench.episodes import Persisted
from bench.errors import DatasetError

PROTOCOLS = ("ncd", "defects-only")
"""The discovery protocols; the first is the default."""
SET_VERSION = 1


@dataclass(frozen=True)
class LabelledSet(Persisted):
    """The images of one discovery job with their (hidden) classes.

    Attributes:
        class_names: the K class names in label order: sorted defect types, then ``good`` (protocol ``ncd``).
        paths: (N,) image files; ``labels`` their class indices; ``mask_paths`` their ground-truth masks ("" none).
    """

    dataset: str
    category: str
    protocol: str
    root: str
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    mask_paths: tuple[str, ...]

    @property
    def k(self) -> int:
        return len(self.class_names)

    def manifest(self) -> dict:
        """A JSON-able description with paths relative to the dataset root."""
        return {"version": SET_VERSION, "task": "discovery", "dataset": self.dataset, "category": self.category,
                "protocol": self.protocol, "class_names": list(self.class_names), "paths": [self.rel(p) for p in self.paths],
                "labels": list(self.labels)}  # fmt: skip



def discovery_set(samples: Samples, category: str, protocol: str = "ncd") -> LabelledSet:
    """The images and classes of ``category`` under ``protocol`` (:data:`PROTOCOLS`).

    Raises:
        DatasetError: an unknown protocol, or fewer than two classes to tell apart.
    """
    if protocol not in PROTOCOLS:
        raise DatasetError(f"unknown discovery protocol {protocol!r}: use {' or '.join(PROTOCOLS)}.")
    t = samples.table
    test = t[(t.category == category) & (t.split == "test") & (t.label != "combined")]
    class_names = sorted(test[test.label != "good"].label.unique())
    if protocol == "ncd" and (test.label == "good").any():
        class_names.append("good")
    if len(class_names) < 2:
        raise DatasetError(
            f"category {category!r} of dataset {samples.dataset!r} has {len(class_names)} class(es) under protocol "
            f"{protocol!r} ({', '.join(class_names) or 'none'}): discovery needs at least two to group."
        )
    rows = test[test.label.isin(class_names)].sort_values(["label", "name"])
    order = {c: i for i, c in enumerate(class_names)}
    rows = rows.assign(_y=rows.label.map(order)).sort_values(["_y", "name"], kind="stable")
    return LabelledSet(
        dataset=samples.dataset, category=category, protocol=protocol, root=str(Path(samples.root).resolve()),
        class_names=tuple(class_names), paths=tuple(rows.image_path), labels=tuple(int(y) for y in rows._y),
        mask_paths=tuple(str(m) for m in rows.mask_path),
    )  # fmt: skip
