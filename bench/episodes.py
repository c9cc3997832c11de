"""Few-shot episodes: which images are support and which are queries.

* ``paper_fixed`` (CLI ``--protocol paper``, the default; docs/method-notes.md §2): for n shots the support of each
  defect type is its first n images by sorted file name; the queries are all other images of those types.
  The split is the same for every seed; seeds change only what is random inside the method.
* ``random_episodes`` (CLI ``--protocol random``; docs/method-notes.md §12.1): the support is drawn per
  (dataset, category, shots, seed) from ``SeedSequence([seed, stable_hash(dataset, category, shots)])``.

Every episode is persisted as JSON (file lists relative to the dataset root) under the results folder,
and its hash is stored in every result row, so each method sees identical episodes and anyone can
re-check them. ``include_good=True`` adds the test ``good`` images as one more class (Appendix F).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.datasets import Samples
from bench.errors import DatasetError
from bench.seeding import numpy_rng

PROTOCOLS = {"paper": "paper_fixed", "paper_fixed": "paper_fixed", "random": "random_episodes", "random_episodes": "random_episodes",
             "mvtec-fs": "mvtec_fs", "mvtec_fs": "mvtec_fs", "good-or-defect": "good_or_defect",
             "good_or_defect": "good_or_defect"}
"""``--protocol`` names → the ids rows carry. ``mvtec-fs`` and ``good-or-defect`` are built by
:mod:`bench.classification.region_episodes` (the field's protocols, ``../shared/docs/field-protocols.md``)."""
EPISODE_VERSION = 1


def protocol_id(name: str) -> str:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise DatasetError(f"unknown protocol {name!r}: use 'paper' (fixed first-n support), 'random', 'mvtec-fs' or "
                           "'good-or-defect'.") from None


class Persisted:
    """What every persisted job set shares (classification episodes here, detection shots in
    :mod:`bench.detection.episodes`, discovery sets in :mod:`bench.discovery.protocol`): paths stored relative to
    the dataset root, a hash of the manifest (part of every job key and row) and an atomic write-once save.
    A subclass has a ``root`` field and a ``manifest()``."""

    root: str

    def manifest(self) -> dict:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def rel(self, p: str) -> str:
        """``p`` relative to the dataset root (as it is stored: portable between machines), or as is when outside it."""
        try:
            return str(Path(p).relative_to(self.root))
        except ValueError:
            return p

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, folder: Path) -> Path:
        """Write the manifest to ``folder/<hash>.json`` (atomically, once)."""
        from bench.cache import atomic_write

        path = folder / f"{self.hash}.json"
        if not path.exists():  # unique temporary name: processes on other machines may share the folder
            text = json.dumps(self.manifest(), indent=1, sort_keys=True).encode()
            atomic_write(path, lambda f: f.write(text))
        return path


@dataclass(frozen=True)
class Episode(Persisted):
    """One n-shot C-way task.

    Attributes:
        class_names: the C class names in label order (sorted defect types, then ``good`` if included).
        support: per class, the support image paths (absolute).
        queries: query image paths (absolute); ``query_labels`` their class indices.
    """

    dataset: str
    category: str
    shots: int
    seed: int
    protocol: str
    include_good: bool
    root: str
    class_names: tuple[str, ...]
    support: tuple[tuple[str, ...], ...]
    queries: tuple[str, ...]
    query_labels: tuple[int, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def support_paths(self) -> list[str]:
        return [p for group in self.support for p in group]

    def support_labels(self) -> list[int]:
        return [i for i, group in enumerate(self.support) for _ in group]

    def manifest(self) -> dict:
        """A JSON-able description with paths relative to the dataset root (portable between machines)."""
        d = asdict(self)
        d["support"] = [[self.rel(p) for p in g] for g in self.support]
        d["queries"] = [self.rel(p) for p in self.queries]
        d.pop("root")
        d.pop("seed") if self.protocol == "paper_fixed" else None  # the split does not depend on the seed
        d["version"] = EPISODE_VERSION
        return d

def too_few_fix(name: str, n_images: int) -> str:
    """The fix for a class with too few images for the shots: the switch that drops it where there is one
    (``combined`` is often the smallest type of a category, ``good`` is there by ``--include-good``)."""
    fewer = f"use --shots {'1' if n_images == 2 else f'1-{n_images - 1}'}, " if n_images > 1 else ""
    if name == "combined":
        return f"Pass --exclude-combined (drops the combined type), {fewer}or add images."
    if name == "good":
        return f"Drop --include-good, {fewer}or add test/good images."
    return "Use fewer --shots or add images."


def make_episode(
    samples: Samples,
    category: str,
    shots: int,
    seed: int,
    protocol: str = "paper",
    include_good: bool = False,
) -> Episode:
    """Build the episode for (category, shots, seed) under ``protocol``.

    Raises:
        DatasetError: a class has fewer than ``shots + 1`` images (no query would be left).
    """
    pid = protocol_id(protocol)
    if shots < 1:
        raise DatasetError(f"shots must be ≥ 1 (got {shots})")
    t = samples.table
    test = t[(t.category == category) & (t.split == "test")]
    if test.empty:
        raise DatasetError(f"category {category!r} has no test images in dataset {samples.dataset!r} ({samples.root})")
    class_names = sorted(test[test.label != "good"].label.unique())
    if include_good:
        if not (test.label == "good").any():
            raise DatasetError(
                f"--include-good needs test/good images, but category {category!r} has none under {samples.root}."
            )
        class_names.append("good")
    rng = numpy_rng(seed, "episode", samples.dataset, category, shots) if pid == "random_episodes" else None
    support, queries, qlabels = [], [], []
    for ci, name in enumerate(class_names):
        rows = test[test.label == name].sort_values("name")
        paths = rows.image_path.tolist()
        if len(paths) < shots + 1:
            folder = Path(paths[0]).parent if paths else Path(samples.root) / category / "test" / name
            raise DatasetError(
                f"{'class' if name == 'good' else 'defect type'} {name!r} of category {category!r} has {len(paths)} "
                f"image(s) in {folder}, but {shots}-shot needs at least {shots + 1} (n support + 1 query). "
                f"{too_few_fix(name, len(paths))}"
            )
        if rng is not None:
            chosen = set(rng.choice(len(paths), size=shots, replace=False).tolist())
            sup = [p for i, p in enumerate(paths) if i in chosen]
            rest = [p for i, p in enumerate(paths) if i not in chosen]
        else:
            sup, rest = paths[:shots], paths[shots:]
        support.append(tuple(sup))
        queries.extend(rest)
        qlabels.extend([ci] * len(rest))
    return Episode(
        dataset=samples.dataset,
        category=category,
        shots=shots,
        seed=seed,
        protocol=pid,
        include_good=include_good,
        root=str(Path(samples.root).resolve()),
        class_names=tuple(class_names),
        support=tuple(support),
        queries=tuple(queries),
        query_labels=tuple(qlabels),
    )
