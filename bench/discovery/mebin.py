"""MEBin, main element binarisation (AnomalyNCD, Huang et al., CVPR 2025, Sec. 3.2; its code's ``MEBin`` class), in
our own words (docs/tasks.md, "Anomaly class discovery"): an anomaly map is binarised at the threshold where the
number of connected anomaly regions stays constant the longest, so each image gets its own threshold and an estimate
of how many anomalies it holds.

Parameters as coded: sample rate s = 4, minimum interval length 4, erosion on (a 6 × 6 kernel of ones, once).

1. The search range over the whole set: ``min_th`` = the smallest per-image maximum, ``max_th`` = the largest. The set
   must hold normal images for this range to mean anything (the maintainers say so; :data:`RANGE_LOWS` offers a
   fixed lower bound of 0 as the workaround they suggest).
2. Per image: a' = 0 where a < min_th, else (a − min_th) / (max_th − min_th) · 255 (not clipped above); for
   t = 255, 251, …, 3 (64 levels) binarise a' > t, erode once, count 8-connected regions → n[0..63]
   (:func:`count_sequence`).
3. A stable interval is a maximal run of equal non-zero counts of length ≥ 4. Each count keeps its longest run; the
   count whose longest run is longest wins (ties: the count met first from the high-threshold end); among that
   count's runs of that length the last one (the lowest thresholds) is used, as the reference's stable sort does.
   Threshold t* = 255 − end · s at the run's end, in map units ``int(t* · (max_th − min_th) / 255 + min_th)``; the
   estimated number of anomalies is the count. No stable interval: threshold 255, estimate 0
   (:func:`stable_interval`).
4. Mask = map > threshold, eroded once more (:func:`mebin`).

A set whose maps are all equal (max_th = min_th) has no range to search: every image gets threshold 255 and
estimate 0 (the reference divides by zero there).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SAMPLE_RATE = 4
MIN_INTERVAL = 4
ERODE_KERNEL = 6
RANGE_LOWS = ("set", "zero")
"""``set``: ``min_th`` is the smallest per-image maximum (the reference); ``zero``: ``min_th`` = 0."""


def erode(binary: np.ndarray) -> np.ndarray:
    """One erosion with a 6 × 6 kernel of ones (cv2's anchor, the kernel centre (3, 3)). uint8 in, uint8 out."""
    return cv2.erode(binary, np.ones((ERODE_KERNEL, ERODE_KERNEL), np.uint8), iterations=1)


def count_sequence(a: np.ndarray, min_th: float, max_th: float, sample_rate: int = SAMPLE_RATE, erosion: bool = True) -> list[int]:
    """Connected anomaly regions of one map at each threshold level (step 2 of the module docstring).

    Args:
        a: (H, W) map in map units (uint8 0–255 here).
        min_th, max_th: the set's search range.

    Returns:
        the counts n[i] at t = 255 − i · sample_rate, i = 0 … (64 levels for s = 4).
    """
    a = a.astype(np.float64)
    norm = np.where(a < min_th, 0.0, (a - min_th) / (max_th - min_th) * 255.0)
    counts = []
    for t in range(255, 0, -sample_rate):
        b = np.where(norm > t, 255, 0).astype(np.uint8)
        if erosion:
            b = erode(b)
        n, _ = cv2.connectedComponents(b, connectivity=8)
        counts.append(int(n) - 1)
    return counts


def stable_interval(counts: list[int], min_len: int = MIN_INTERVAL) -> tuple[int, int] | None:
    """The interval rule (step 3): ``(end index, estimated count)`` of the chosen stable interval, or ``None``."""
    runs: dict[int, list[tuple[int, int]]] = {}
    i = 0
    while i < len(counts):
        j = i
        while j + 1 < len(counts) and counts[j + 1] == counts[i]:
            j += 1
        if counts[i] != 0 and j - i + 1 >= min_len:
            runs.setdefault(counts[i], []).append((i, j))
        i = j + 1
    if not runs:
        return None
    longest = {n: max(e - s for s, e in r) for n, r in runs.items()}
    best = max(longest, key=longest.__getitem__)  # first maximum in insertion order: seen first from t = 255
    start, end = sorted(runs[best], key=lambda r: r[1] - r[0])[-1]  # stable: the last of equal lengths
    return end, best


def threshold_from(end: int, min_th: float, max_th: float, sample_rate: int = SAMPLE_RATE) -> int:
    """The threshold in map units at the end of a stable interval (step 3)."""
    t = 255 - end * sample_rate
    return int(t * (max_th - min_th) / 255 + min_th)


@dataclass
class MebinResult:
    """MEBin on a set of maps.

    Attributes:
        masks: (N, H, W) bool binarised maps (eroded).
        thresholds: (N,) per-image thresholds in map units (255 = no stable interval).
        est_nums: (N,) estimated number of anomalies (0 = none found).
        min_th, max_th: the search range.
        sequences: the count sequences (N lists of 64 counts).
    """

    masks: np.ndarray
    thresholds: list[int]
    est_nums: list[int]
    min_th: float
    max_th: float
    sequences: list[list[int]]

    def normalised(self, a: np.ndarray) -> np.ndarray:
        """A map rescaled to the search range as in step 2 (crop scores are its maximum in a crop)."""
        if self.max_th <= self.min_th:
            return np.zeros(a.shape, np.float64)
        a = a.astype(np.float64)
        return np.where(a < self.min_th, 0.0, (a - self.min_th) / (self.max_th - self.min_th) * 255.0)


def search_range(maps: np.ndarray, low: str = "set") -> tuple[float, float]:
    """(min_th, max_th) of the set (step 1); ``low="zero"`` fixes min_th at 0."""
    peaks = maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)
    return (0.0 if low == "zero" else float(peaks.min())), float(peaks.max())


def mebin(
    maps: np.ndarray, sample_rate: int = SAMPLE_RATE, min_interval: int = MIN_INTERVAL, erosion: bool = True,
    range_low: str = "set",
) -> MebinResult:
    """Binarise every map of a set (module docstring).

    Args:
        maps: (N, H, W) maps (uint8 0–255: jointly normalised PatchCore maps or 8-bit PNG maps).
        range_low: :data:`RANGE_LOWS`.
    """
    if range_low not in RANGE_LOWS:
        raise ValueError(f"range_low must be one of {', '.join(RANGE_LOWS)}, got {range_low!r}")
    min_th, max_th = search_range(maps, range_low)
    masks, thresholds, ests, seqs = [], [], [], []
    for a in maps:
        if max_th <= min_th:
            seq, found = [0] * len(range(255, 0, -sample_rate)), None
        else:
            seq = count_sequence(a, min_th, max_th, sample_rate, erosion)
            found = stable_interval(seq, min_interval)
        th, est = (threshold_from(found[0], min_th, max_th, sample_rate), found[1]) if found else (255, 0)
        b = np.where(a.astype(np.float64) > th, 255, 0).astype(np.uint8)
        if erosion:
            b = erode(b)
        masks.append(b > 0)
        thresholds.append(th)
        ests.append(est)
        seqs.append(seq)
    return MebinResult(np.stack(masks) if masks else np.zeros((0, *maps.shape[1:]), bool), thresholds, ests, min_th, max_th, seqs)
