"""Region units: the classification protocols whose items are defect *regions* with masks, and the good-or-which-
defect protocol (``../shared/docs/field-protocols.md`` §1–§3).

Three builders, one episode type (:class:`RegionEpisode`) that quacks like :class:`bench.episodes.Episode` (its
``support``, ``queries`` and ``query_labels`` are image paths and labels, so every image method runs on it unchanged,
seeing the whole image: localisation ``none``) and carries each item's :class:`Region` beside it for the methods that
take masks (``region-*``):

* ``region_random`` (``--unit region --protocol random``): regions from a dataset's ground-truth masks (MTD, MVTec
  AD, MVTec 3D-AD, folders with ``ground_truth/``). ``--regions image`` (default) makes one region per defect image,
  the union of its mask; ``--regions components`` one per 8-connected component. [design] The default is per image
  because that is how these datasets label: one type per image, so components of one image are not independent
  examples. Measured on the complete MTD (connected components of at least 0.1 % of the image): 97 % of ``blowhole``
  and 99 % of ``uneven`` images are one component, but 18 % of ``break`` images are several (up to 8 components):
  per component, a fragmented break would be counted up to 8 times as a query and drawn as several of its own
  shots. An image whose mask is blank has no region and is left out (counted in the episode: MTD has 4 blank
  ``uneven`` masks). Supports and queries never share an image. The draw is seeded per (dataset, category, shots,
  seed) like ``--protocol random``.
* ``mvtec_fs`` (``--protocol mvtec-fs --mvtec-fs CONFIG``): MVREC's protocol on MVTec-FS (§1): ``shots`` instances
  per type drawn from ``train.csv``, every ``valid.csv`` instance a query, masks from the authors' polygons scaled
  to the image as read. Instances whose image is not under the MVTec AD root are skipped and counted.
* ``good_or_defect`` (``--protocol good-or-defect``, UniADC's, §2): ``normal_shots`` normal train images, ``shots``
  defect images per type with their masks; the queries are every test image, good included, ``combined`` left out;
  class set {types} ∪ {good}. The detector decides good, the region classifier the type
  (:mod:`bench.run.classification`).

Every item's mask is read lazily, at the image as read (EXIF upright), and brought to the features' frame
(:class:`bench.discovery.maps.Frame`) by the same geometry as every map (:meth:`Region.frame_mask`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import Samples
from bench.episodes import EPISODE_VERSION, Persisted
from bench.errors import DatasetError
from bench.seeding import numpy_rng

REGION_RULES = ("image", "components")
"""``--regions``: one region per defect image (the union of its mask), or one per connected component."""
MIN_COMPONENT_SHARE = 0.001
"""``--regions components``: components smaller than this share of the image are specks, not regions."""


@dataclass(frozen=True)
class Region:
    """One defect region: an image and the mask of the region on it.

    Attributes:
        image: the image file (absolute).
        key: a stable name of the region, unique in its dataset (``<image relative path>#<what>``): caches and the
            episode file use it.
        mask_path: a ground-truth mask file (``""`` when the region is a polygon or an array).
        component: which 8-connected component of the mask (0-based, in raster order; ``-1``: the whole mask).
        polygons: MVTec-FS polygons in the pixels of an image of ``stored_size`` (``()`` otherwise).
        stored_size: ``(width, height)`` the polygons refer to.
        frame_array: an estimated mask already in the frame (``(side, side)`` bool), not persisted.
    """

    image: str
    key: str
    mask_path: str = ""
    component: int = -1
    polygons: tuple = ()
    stored_size: tuple[int, int] = (0, 0)
    frame_array: Any = field(default=None, compare=False, hash=False, repr=False)

    def mask(self) -> np.ndarray:
        """The region's bool ``(H, W)`` mask on the image as read (upright)."""
        return _source_mask(self.image, self.mask_path, self.component, self.polygons, tuple(self.stored_size))

    def frame_mask(self, frame: Any) -> np.ndarray:
        """The region's bool ``(side, side)`` mask in ``frame`` (:class:`bench.discovery.maps.Frame`), as the
        features see the image."""
        if self.frame_array is not None:
            return np.asarray(self.frame_array, dtype=bool)
        return _frame_mask(self.image, self.mask_path, self.component, self.polygons, tuple(self.stored_size), frame)

    def manifest(self, rel: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"image": rel(self.image), "key": self.key}
        if self.mask_path:
            d.update(mask=rel(self.mask_path), component=self.component)
        if self.polygons:
            d.update(polygons=[[list(p) for p in poly] for poly in self.polygons], stored_size=list(self.stored_size))
        return d


def _least(m: np.ndarray) -> int:
    """``--regions components``: the fewest pixels of a region (:data:`MIN_COMPONENT_SHARE` of the image)."""
    return max(1, int(MIN_COMPONENT_SHARE * m.size))


@functools.lru_cache(maxsize=64)  # a few jobs' regions at full resolution; their frame masks are cached below
def _source_mask(image: str, mask_path: str, component: int, polygons: tuple, stored_size: tuple) -> np.ndarray:
    from bench.discovery.maps import read_mask
    from bench.images import upright_size
    from bench.regions import connected_regions, rasterise

    if polygons:
        return rasterise(polygons, stored_size, upright_size(image))
    m = read_mask(mask_path, image)
    if component < 0:
        return m
    regions = connected_regions(m, min_pixels=_least(m))
    if component >= len(regions):
        raise DatasetError(f"the mask {mask_path} has no region {component} (it has {len(regions)})")
    return regions[component]


@functools.lru_cache(maxsize=None)
def _region_count(image: str, mask_path: str) -> int:
    """How many regions ``--regions components`` makes of a mask file (0: blank), read once per process: every
    episode of a grid (shots × seeds) enumerates the same regions."""
    from bench.discovery.maps import read_mask
    from bench.regions import connected_regions

    m = read_mask(mask_path, image)
    return len(connected_regions(m, min_pixels=_least(m)))


@functools.lru_cache(maxsize=8192)
def _frame_mask(image: str, mask_path: str, component: int, polygons: tuple, stored_size: tuple, frame: Any) -> np.ndarray:
    from bench.regions import threshold_resampled

    m = _source_mask(image, mask_path, component, polygons, stored_size)
    return threshold_resampled(frame.to_frame(m.astype(np.uint8) * 255))


@dataclass(frozen=True)
class RegionEpisode(Persisted):
    """One n-shot C-way task over regions (or, for ``good_or_defect``, over images with defect shots as regions).

    Attributes:
        support_regions: per class, its support regions (for ``good``: the normal shots, whole images).
        query_regions: one per query (``None`` for a whole-image query: a ``good_or_defect`` query).
        skipped: what was left out and why (blank masks, instances whose image is missing), counted.
    The image-level view every method reads: :attr:`support` (paths per class), :attr:`queries`, :attr:`query_labels`.
    """

    dataset: str
    category: str
    shots: int
    seed: int
    protocol: str
    root: str
    unit: str
    region_rule: str
    class_names: tuple[str, ...]
    support_regions: tuple[tuple[Region, ...], ...]
    query_regions: tuple[Region | None, ...]
    queries: tuple[str, ...]
    query_labels: tuple[int, ...]
    normal_shots: int = 0
    skipped: tuple[tuple[str, int], ...] = ()
    include_good: bool = False

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def support(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(r.image for r in group) for group in self.support_regions)

    def support_paths(self) -> list[str]:
        return [p for group in self.support for p in group]

    def support_labels(self) -> list[int]:
        return [i for i, group in enumerate(self.support_regions) for _ in group]

    def support_region_list(self) -> list[Region]:
        return [r for group in self.support_regions for r in group]

    def manifest(self) -> dict:
        return {
            "dataset": self.dataset, "category": self.category, "shots": self.shots, "seed": self.seed,
            "protocol": self.protocol, "unit": self.unit, "region_rule": self.region_rule,
            "class_names": list(self.class_names), "normal_shots": self.normal_shots,
            "support": [[r.manifest(self.rel) for r in g] for g in self.support_regions],
            "queries": [r.manifest(self.rel) if r is not None else {"image": self.rel(q)}
                        for r, q in zip(self.query_regions, self.queries)],
            "query_labels": list(self.query_labels), "skipped": [list(s) for s in self.skipped],
            "version": EPISODE_VERSION,
        }  # fmt: skip


def _rel(samples: Samples, p: str) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path(samples.root).resolve()))
    except ValueError:
        return p


def dataset_regions(samples: Samples, category: str, rule: str) -> tuple[dict[str, list[Region]], dict[str, int]]:
    """The defect regions of a category from its ground-truth masks, per type (``combined`` and ``good`` are not
    types of a region), and the images left out per reason.

    Raises:
        DatasetError: the category's defect images have no masks at all (name the fix).
    """
    if rule not in REGION_RULES:
        raise DatasetError(f"--regions {rule!r} is not allowed: {' or '.join(REGION_RULES)}")
    t = samples.table
    test = t[(t.category == category) & (t.split == "test") & (t.label != "good")].sort_values(["label", "name"])
    if test.empty:
        raise DatasetError(f"category {category!r} has no defect images in dataset {samples.dataset!r} ({samples.root})")
    if not (test.mask_path != "").any():
        raise DatasetError(
            f"--unit region needs ground-truth masks, but no defect image of category {category!r} in dataset "
            f"{samples.dataset!r} ({samples.root}) has one (ground_truth/<type>/<name>_mask.png). Use a dataset with "
            "masks, the MVTec-FS polygons (--protocol mvtec-fs --mvtec-fs CONFIG), or --unit image."
        )
    out: dict[str, list[Region]] = {}
    skipped: dict[str, int] = {}
    for row in test.itertuples(index=False):
        if not row.mask_path:
            skipped["defect image without a mask"] = skipped.get("defect image without a mask", 0) + 1
            continue
        rel = _rel(samples, row.image_path)
        n_regions = _region_count(row.image_path, row.mask_path)
        if not n_regions:
            skipped["blank mask (no region)"] = skipped.get("blank mask (no region)", 0) + 1
            continue
        if rule == "image":
            regions = [Region(row.image_path, f"{rel}#mask", row.mask_path, -1)]
        else:
            regions = [Region(row.image_path, f"{rel}#c{i}", row.mask_path, i) for i in range(n_regions)]
        out.setdefault(row.label, []).extend(regions)
    return out, skipped


def _too_few(name: str, category: str, have: int, shots: int, what: str) -> DatasetError:
    return DatasetError(
        f"defect type {name!r} of category {category!r} has {have} {what}, but {shots}-shot needs at least "
        f"{shots + 1} (n support + 1 query in another image). Use fewer --shots."
    )


def make_region_episode(samples: Samples, category: str, shots: int, seed: int, rule: str = "image") -> RegionEpisode:
    """``region_random``: ``shots`` regions per type drawn (seeded); the queries are the regions of every other image.

    Raises:
        DatasetError: no masks, or a type with too few regions for the shots.
    """
    by_type, skipped = dataset_regions(samples, category, rule)
    class_names = sorted(by_type)
    rng = numpy_rng(seed, "episode", samples.dataset, category, shots, "region", rule)
    support, queries, qregions, labels = [], [], [], []
    for ci, name in enumerate(class_names):
        regions = by_type[name]
        images = sorted({r.image for r in regions})
        if len(regions) < shots + 1 or len(images) < 2:
            raise _too_few(name, category, len(regions), shots, "region(s)")
        order = rng.permutation(len(regions))
        chosen = [regions[i] for i in sorted(order[:shots].tolist())]
        used = {r.image for r in chosen}
        rest = [r for r in regions if r.image not in used]
        if not rest:
            raise _too_few(name, category, len(regions), shots, "region(s) in too few images")
        support.append(tuple(chosen))
        qregions.extend(rest)
        queries.extend(r.image for r in rest)
        labels.extend([ci] * len(rest))
    return RegionEpisode(
        dataset=samples.dataset, category=category, shots=shots, seed=seed, protocol="region_random",
        root=str(Path(samples.root).resolve()), unit="region", region_rule=rule, class_names=tuple(class_names),
        support_regions=tuple(support), query_regions=tuple(qregions), queries=tuple(queries),
        query_labels=tuple(labels), skipped=tuple(sorted(skipped.items())),
    )  # fmt: skip


def mvtec_fs_folder(config_root: str | Path, category: str) -> Path:
    """The config folder of ``category`` under an MVTec-FS ``CONFIG`` folder (``<category>_config1``); the folder
    itself when it already is one."""
    root = Path(config_root).expanduser()
    if (root / "train.csv").is_file():
        return root
    return root / f"{category}_config1"


def make_mvtec_fs_episode(samples: Samples, category: str, shots: int, seed: int, config_root: str,
                          unit: str = "region") -> RegionEpisode:
    """``mvtec_fs``: MVREC's protocol (module docstring); ``unit="image"`` is the image-level use of the same labels
    (:func:`_mvtec_fs_images`).

    Raises:
        DatasetError: a missing or malformed config, or a type with fewer than ``shots`` train instances here.
    """
    from bench.datasets._mvtec_fs import read_mvtec_fs

    found = read_mvtec_fs(mvtec_fs_folder(config_root, category), samples.root, category)
    if unit == "image":
        return _mvtec_fs_images(samples, category, shots, seed, found)
    t = found.table
    train, valid = t[t["split"] == "train"], t[t["split"] == "valid"]
    class_names = sorted(set(train["label"]) | set(valid["label"]))
    rng = numpy_rng(seed, "episode", "mvtec_fs", category, shots)

    def region(row: Any) -> Region:
        rel = _rel(samples, row.image_path)
        return Region(row.image_path, f"{rel}#fs{row.instance_id}", polygons=row.polygons,
                      stored_size=tuple(row.stored_size))  # fmt: skip

    support = []
    for name in class_names:
        pool = list(train[train["label"] == name].itertuples(index=False))
        if len(pool) < shots:
            raise DatasetError(
                f"MVTec-FS type {name!r} of {category!r} has {len(pool)} train.csv instance(s) whose image is under "
                f"{samples.root}, but {shots}-shot draws {shots}. Use fewer --shots, or a complete MVTec AD copy "
                f"({found.summary()})."
            )
        chosen = sorted(rng.choice(len(pool), size=shots, replace=False).tolist())
        support.append(tuple(region(pool[i]) for i in chosen))
    rows = list(valid.itertuples(index=False))
    if not rows:
        raise DatasetError(f"no valid.csv instance of MVTec-FS {category!r} has its image under {samples.root}")
    return RegionEpisode(
        dataset=samples.dataset, category=category, shots=shots, seed=seed, protocol="mvtec_fs",
        root=str(Path(samples.root).resolve()), unit="region", region_rule="instance", class_names=tuple(class_names),
        support_regions=tuple(support), query_regions=tuple(region(r) for r in rows),
        queries=tuple(r.image_path for r in rows), query_labels=tuple(class_names.index(r.label) for r in rows),
        skipped=tuple(sorted(found.skipped.items())),
    )  # fmt: skip


def make_good_or_defect_episode(samples: Samples, category: str, shots: int, seed: int, normal_shots: int) -> RegionEpisode:
    """``good_or_defect``: UniADC's protocol (module docstring): ``normal_shots`` train/good images (the class
    ``good``'s support, whole images) and ``shots`` defect images per type with their masks (one region per image);
    every test image of the types and of ``good`` is a query (``combined`` is not a type here).

    Raises:
        DatasetError: no train/good images, no test/good images, no masks, or too few images for the shots.
    """
    train = samples.train_paths(category)
    if len(train) < normal_shots:
        raise DatasetError(
            f"--protocol good-or-defect draws {normal_shots} normal shot(s) from train/good, but category {category!r} "
            f"has {len(train)}. Use fewer --normal-shots or add defect-free images."
        )
    by_type, skipped = dataset_regions(samples, category, "image")
    by_type.pop("combined", None)
    class_names = sorted(by_type)
    rng = numpy_rng(seed, "episode", samples.dataset, category, shots, "good_or_defect", normal_shots)
    normal = [train[i] for i in sorted(rng.choice(len(train), size=normal_shots, replace=False).tolist())]
    t = samples.table
    test = t[(t.category == category) & (t.split == "test")].sort_values(["label", "name"])
    goods = test[test.label == "good"].image_path.tolist()
    if not goods:
        raise DatasetError(f"--protocol good-or-defect needs test/good images, but category {category!r} has none.")
    support, queries, labels = [], [], []
    for ci, name in enumerate(class_names):
        regions = by_type[name]
        if len(regions) < shots + 1:
            raise _too_few(name, category, len(regions), shots, "image(s) with a mask")
        chosen = [regions[i] for i in sorted(rng.choice(len(regions), size=shots, replace=False).tolist())]
        used = {r.image for r in chosen}
        support.append(tuple(chosen))
        rest = test[(test.label == name) & ~test.image_path.isin(used)].image_path.tolist()  # blank masks included
        queries.extend(rest)
        labels.extend([ci] * len(rest))
    good_id = len(class_names)
    support.append(tuple(Region(p, f"{_rel(samples, p)}#image") for p in normal))
    queries.extend(goods)
    labels.extend([good_id] * len(goods))
    return RegionEpisode(
        dataset=samples.dataset, category=category, shots=shots, seed=seed, protocol="good_or_defect",
        root=str(Path(samples.root).resolve()), unit="image", region_rule="image",
        class_names=(*class_names, "good"), support_regions=tuple(support), query_regions=tuple([None] * len(queries)),
        queries=tuple(queries), query_labels=tuple(labels), normal_shots=normal_shots,
        skipped=tuple(sorted(skipped.items())), include_good=True,
    )  # fmt: skip


def _mvtec_fs_images(samples: Samples, category: str, shots: int, seed: int, found: Any) -> RegionEpisode:
    """The image-level use of MVTec-FS's labels: an image is labelled by its instances' corrected type; [design] an
    image whose instances carry two or more types is left out (counted), not made multi-label, so every class
    set, metric and method of the image unit applies unchanged. ``shots`` train images per type are drawn; every
    valid image is a query."""
    t = found.table
    skipped = dict(found.skipped)
    images: dict[str, dict[str, Any]] = {}
    for split in ("train", "valid"):
        part = t[t["split"] == split]
        for path, rows in part.groupby("image_path", sort=True):
            labels = set(rows["label"])
            if len(labels) > 1:
                key = f"{split}: image with instances of {len(labels)} types (left out)"
                skipped[key] = skipped.get(key, 0) + 1
                continue
            images.setdefault(split, {})[str(path)] = labels.pop()
    train, valid = images.get("train", {}), images.get("valid", {})
    class_names = sorted(set(train.values()) | set(valid.values()))
    rng = numpy_rng(seed, "episode", "mvtec_fs", category, shots, "image")
    support = []
    for name in class_names:
        pool = sorted(p for p, lab in train.items() if lab == name)
        if len(pool) < shots:
            raise DatasetError(
                f"MVTec-FS type {name!r} of {category!r} has {len(pool)} single-type train image(s) under "
                f"{samples.root}, but {shots}-shot draws {shots}. Use fewer --shots, or a complete MVTec AD copy."
            )
        chosen = sorted(rng.choice(len(pool), size=shots, replace=False).tolist())
        support.append(tuple(Region(pool[i], f"{_rel(samples, pool[i])}#image") for i in chosen))
    queries = sorted(valid)
    return RegionEpisode(
        dataset=samples.dataset, category=category, shots=shots, seed=seed, protocol="mvtec_fs",
        root=str(Path(samples.root).resolve()), unit="image", region_rule="image", class_names=tuple(class_names),
        support_regions=tuple(support), query_regions=tuple([None] * len(queries)), queries=tuple(queries),
        query_labels=tuple(class_names.index(valid[q]) for q in queries), skipped=tuple(sorted(skipped.items())),
    )  # fmt: skip
