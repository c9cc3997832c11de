"""Estimated masks: where a query's defect is, from the harness's own anomaly maps (localisation ``estimated``,
``../shared/docs/field-protocols.md`` §3), and the good-or-defect decision of a k-shot detector.

A region method run with ``--masks gt`` and with ``--masks estimated`` on the same episodes measures how much of the
gap to the mask-given systems is localisation. The estimate of a query image is one region: the pixels of its
PatchCore map (nearest-bank distance of every patch, upsampled to the frame and smoothed with σ = 4 px as PatchCore's
reference does) selected by the estimator:

* ``topN`` (default ``top3``): the N % highest pixels of the image's own map. [design] A fixed share needs no
  threshold fitted on labelled data, and always gives a region (a query is known to be defective under a region
  unit); measured by the issue that set this work (#22) on MTD with Lite0 at 3 %.
The maps can also be another detector's, as grey PNG files (``--maps PATH``, ``<PATH>/<category>/<type>/<image
stem>.png``, the layout ``bench maps`` writes and the discovery task reads).

* ``mebin``: MEBin (the discovery stage's binarisation, :func:`bench.discovery.mebin.mebin`) over the maps of the
  queries, jointly normalised; an image where MEBin finds nothing falls back to ``top3`` (counted in the row).

[design] One estimated region per image, with no ground truth in the choice: an image of MVTec-FS with two instances
of different types gets one prediction for both (a detect-then-classify system makes the same mistake), and an
instance the map misses is classified by what the map found. The support regions stay the protocol's masks
(labelled shots come annotated); the localisation column describes the queries.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.discovery.maps import Frame
    from bench.features.knn import MemoryBank
    from bench.features.store import FeatureStore

ESTIMATORS = "topN (N % of the map's pixels, e.g. top3) or mebin"


def check_estimator(name: str) -> float | None:
    """The share of a ``topN`` estimator (``None`` for ``mebin``).

    Raises:
        ConfigError: any other name.
    """
    if name == "mebin":
        return None
    m = re.fullmatch(r"top(\d+(?:\.\d+)?)", str(name))
    if not m or not 0 < float(m.group(1)) < 100:
        raise ConfigError(f"--mask-estimator {name!r} is not allowed: {ESTIMATORS}, with 0 < N < 100")
    return float(m.group(1)) / 100.0


def top_share(a: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` highest pixels of a map (at least one), bool."""
    flat = a.ravel()
    k = max(1, int(round(share * flat.size)))
    cut = np.partition(flat, flat.size - k)[flat.size - k]
    return a >= cut


def estimate_masks(maps: np.ndarray, estimator: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One estimated mask per map (module docstring): (N, side, side) bool, and what the rows record."""
    share = check_estimator(estimator)
    if share is not None:
        return np.stack([top_share(a, share) for a in maps]) if len(maps) else maps.astype(bool), {}
    from bench.discovery.maps import normalise_jointly
    from bench.discovery.mebin import mebin

    found = mebin(normalise_jointly(maps)).masks
    empty = [i for i, m in enumerate(found) if not m.any()]
    for i in empty:
        found[i] = top_share(maps[i], 0.03)
    return found, {"mebin_empty_fallback_top3": len(empty)}


def estimated_regions(
    store: "FeatureStore", bank: "MemoryBank | None", paths: Sequence[str], frame: "Frame", estimator: str,
    keys: Sequence[str], maps: Any = None,
) -> tuple[list[Any], dict[str, Any]]:
    """One estimated :class:`~bench.classification.region_episodes.Region` per distinct image of ``paths`` (in their
    order, repeated images sharing theirs), and the estimate's record for the row. The maps are PatchCore's of
    ``bank``, or given (``maps``: a :class:`bench.discovery.maps.MapSet` of ``paths``, e.g. ``--maps`` PNG files
    written by another detector)."""
    from bench.classification.region_episodes import Region

    distinct = list(dict.fromkeys(paths))
    if maps is None:
        from bench.discovery.maps import PATCHCORE_SIGMA, smoothed_patchcore_maps

        frames = smoothed_patchcore_maps(store, bank, distinct, frame)
        source: dict[str, Any] = {"bank": bank.key, "sigma": PATCHCORE_SIGMA}
    else:
        first = {p: i for i, p in reversed(list(enumerate(paths)))}
        frames = maps.maps[[first[p] for p in distinct]].astype(np.float32)
        source = {"maps": maps.info}
    masks, extra = estimate_masks(frames, estimator)
    key_of = dict(zip(paths, keys))
    by_path = {p: Region(p, f"{key_of[p]}#estimated", frame_array=m) for p, m in zip(distinct, masks)}
    share = float(np.mean([m.mean() for m in masks])) if len(masks) else 0.0
    info = {**source, "estimator": estimator, "mean_mask_share": round(share, 4), **extra}
    return [by_path[p] for p in paths], info


def good_threshold(normal_loo: Sequence[float], anomalous: Sequence[float]) -> float:
    """The image-score threshold above which a query is a defect, from the support alone: the midpoint of the gap
    when the normal shots' leave-one-out scores all lie below the defect shots' scores, else the midpoint between
    the two neighbouring scores that give the best balanced accuracy on the shots.

    [design] UniADC decides good with a threshold on its detector's score; with Kn normal shots, a normal shot scored
    against the bank of the other Kn − 1 is the only unbiased normal score the protocol gives (it is slightly high:
    its bank is smaller), and the defect shots give the anomalous side.
    """
    n, a = np.sort(np.asarray(normal_loo, float)), np.sort(np.asarray(anomalous, float))
    if len(n) == 0 or len(a) == 0:
        raise ValueError("a threshold needs normal and anomalous support scores")
    if n[-1] < a[0]:
        return float((n[-1] + a[0]) / 2)
    cands = np.unique(np.concatenate([n, a]))
    mids = np.concatenate([[cands[0] - 1.0], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1.0]])
    bacc = [((n <= t).mean() + (a > t).mean()) / 2 for t in mids]
    return float(mids[int(np.argmax(bacc))])
