"""The detection protocol (docs/tasks.md §A.1): k normal shots drawn from ``train/good``, every test image scored.

* **Shots**: k images of the category's ``train/good`` (sorted by file name), drawn without replacement by the
  generator ``SeedSequence([seed, stable_int("detection-shots", dataset, category, k)])``: one seeded draw per
  (category, k, seed), independent across k, the same on every machine and in every worker. A dataset without a
  defect-free test set of its own (MTD) holds out its test normals from ``train/good`` in the adapter, so the shots
  can never be a test image (docs/datasets.md §4).
* **Test set**: every ``test/`` image of the category, ``good`` and every defect type (``combined`` included unless
  ``--exclude-combined``); label 1 = defective (not ``good``). No test image and no defect label is used in fitting.

Each draw is persisted as JSON under the results folder (``episodes/<hash>.json``: the shot and test file lists
relative to the dataset root, with the test labels), and its hash is part of every job key and row, like the
classification episodes (:mod:`bench.episodes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.datasets import Samples
from bench.episodes import Persisted
from bench.errors import DatasetError
from bench.seeding import numpy_rng

DETECTION_PROTOCOL = "kshot_normals"
"""The protocol id of detection rows: k seeded normal shots, all test images (docs/tasks.md §A.1)."""
SHOTS_VERSION = 1


@dataclass(frozen=True)
class NormalShots(Persisted):
    """One detection episode: the k normal shots and the whole test set of a category.

    Attributes:
        support: (k,) absolute paths of the shots (``train/good``), in draw order sorted by name.
        test: (N,) absolute paths of every test image, sorted by (label, name).
        test_labels: (N,) ``good`` or the defect type of each test image.
        masks: (N,) mask path of each test image (``""`` when there is none; ``good`` images have none).
    """

    dataset: str
    category: str
    shots: int
    seed: int
    root: str
    support: tuple[str, ...]
    test: tuple[str, ...]
    test_labels: tuple[str, ...]
    masks: tuple[str, ...]
    protocol: str = DETECTION_PROTOCOL

    @property
    def y(self) -> list[int]:
        """(N,) 1 for a defective test image, 0 for ``good``."""
        return [int(label != "good") for label in self.test_labels]

    def support_paths(self) -> list[str]:
        return list(self.support)

    @property
    def queries(self) -> tuple[str, ...]:
        """The scored images (the name classification episodes use)."""
        return self.test

    def manifest(self) -> dict:
        """A JSON-able description with paths relative to the dataset root (portable between machines)."""
        return {
            "version": SHOTS_VERSION, "task": "detection", "protocol": self.protocol, "dataset": self.dataset,
            "category": self.category, "shots": self.shots, "seed": self.seed,
            "support": [self.rel(p) for p in self.support], "test": [self.rel(p) for p in self.test],
            "test_labels": list(self.test_labels),
        }  # fmt: skip



def make_normal_shots(samples: Samples, category: str, shots: int, seed: int) -> NormalShots:
    """The detection episode of (category, k = ``shots``, ``seed``).

    Raises:
        DatasetError: fewer than k normal training images; no test ``good`` or no defective test image (the AUROC
            is undefined; e.g. the shared MVTec AD screw subset has no ``test/good``).
    """
    if shots < 1:
        raise DatasetError(f"shots must be ≥ 1 (got {shots})")
    train = samples.train_paths(category)
    if len(train) < shots:
        raise DatasetError(
            f"category {category!r} has {len(train)} normal training image(s) (train/good under {samples.root}), but "
            f"{shots}-shot detection draws {shots}. Use fewer --shots or add defect-free images."
        )
    t = samples.table
    test = t[(t.category == category) & (t.split == "test")].sort_values(["label", "name"])
    n_good = int((test.label == "good").sum())
    if n_good == 0 or n_good == len(test):
        missing = "test/good (defect-free test) images" if n_good == 0 else "defective test images"
        raise DatasetError(
            f"category {category!r} has no {missing} under {samples.root}, so the image AUROC is undefined. Add them, "
            "or, for a dataset without a defect-free test set, hold out normal images as its adapter does (mtd)."
        )
    rng = numpy_rng(seed, "detection-shots", samples.dataset, category, shots)
    chosen = sorted(rng.choice(len(train), size=shots, replace=False).tolist())
    return NormalShots(
        dataset=samples.dataset, category=category, shots=shots, seed=seed, root=str(Path(samples.root).resolve()),
        support=tuple(train[i] for i in chosen), test=tuple(test.image_path), test_labels=tuple(test.label),
        masks=tuple(str(m or "") for m in test.mask_path),
    )  # fmt: skip
