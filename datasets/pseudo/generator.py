"""Synthetic pseudo-defect images for pretraining (paper arXiv 2406.05645 §3.5; docs/method-notes.md §6, §5.6, §7).

DRAEM-style synthesis (Zavrtanik et al., ICCV 2021): a binarised Perlin-noise mask (or, in the polygon
variant of the paper's Appendix C, one random regular n-gon), intersected with the object's foreground mask,
selects where a texture T is blended into a normal image I:

    I' = I ⊙ (1 − M) + (1 − β)·T ⊙ M + β·I ⊙ M,   β ~ U[0, β_max),  T = texture / 255,  I = image / 255.

Every texture is one pseudo-defect class (polygon variant: every (texture, n) pair). Each pseudo image is a
pure function of (seed, config, category, class, source image), so any image can be produced on its own,
in any order, by any process, and only the images an episode actually uses are ever generated.

Not a dataset adapter: nothing here calls ``register_dataset``; OpenCV and matplotlib are imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import textwrap
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.datasets.pseudo.foreground import FOREGROUND_VERSION, cached_foreground, load_resized, source_content
from bench.datasets.pseudo.textures import TextureBank, resize_square
from bench.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

GENERATOR_VERSION = "pseudo-v1"
POLYGON_SIDES = (3, 4, 5, 6)
MAX_AREA_REDRAWS = 1000
"""Perlin redraws allowed to reach the area bounds (about 80 % of draws are accepted with the defaults)."""
MAX_FG_REDRAWS = 100
"""Mask redraws allowed to reach the minimum masked area inside the foreground (then the best draw is used)."""
POLYGON_MIN_AREA = 0.01
"""Polygon variant: the reference loader redraws until the masked area fraction exceeds 0.01."""


def stable_int(text: str) -> int:
    """A 64-bit integer hash of ``text`` that is identical across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class PseudoConfig:
    """Generator settings; :meth:`key` goes into every cache key.

    Attributes:
        mask: ``"perlin"`` (paper, §6.2) or ``"polygon"`` (Appendix C, §5.6).
        threshold: Perlin binarisation threshold (noise > 0.35).
        area_min, area_max: open bounds on the Perlin mask's area fraction, measured before the foreground.
        beta_max: β ~ U[0, beta_max) is the weight of the original image inside the mask.
        size: side of the square output images.
        use_foreground: intersect the mask with the category's foreground mask (§6.1).
        texture_bgr: blend the texture's channels in BGR order (reference-code bug, §11 item 9).
    """

    mask: str = "perlin"
    threshold: float = 0.35
    area_min: float = 0.1
    area_max: float = 0.4
    beta_max: float = 0.5
    size: int = 256
    use_foreground: bool = True
    texture_bgr: bool = False

    def __post_init__(self) -> None:
        problems = [
            f"mask must be 'perlin' or 'polygon', got {self.mask!r}" * (self.mask not in ("perlin", "polygon")),
            f"need 0 <= area_min < area_max <= 1, got {self.area_min}, {self.area_max}"
            * (not 0.0 <= self.area_min < self.area_max <= 1.0),
            f"beta_max must lie in [0, 1], got {self.beta_max}" * (not 0.0 <= self.beta_max <= 1.0),
            f"size must be >= 16 pixels, got {self.size}" * (self.size < 16),
        ]
        if any(problems):
            raise ConfigError("invalid pseudo-defect config: " + "; ".join(p for p in problems if p))

    def key(self) -> str:
        """Stable 16-hex-digit hash of every field and :data:`GENERATOR_VERSION`."""
        payload = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise, vectorised, as DRAEM's ``rand_perlin_2d_np``.

    Gradients are random unit vectors on a (res[0]+1) × (res[1]+1) lattice; each pixel interpolates the dot
    products with its four cell corners using the quintic fade. Unlike DRAEM, the shape need not be divisible
    by ``res``: pixel i of axis 0 lies at lattice coordinate i·res[0]/shape[0] (identical when divisible).

    Args:
        shape: (H, W) of the output.
        res: number of lattice cells along (H, W).
        rng: source of the gradient angles.

    Returns:
        (H, W) float64 noise, roughly in [-1, 1].
    """
    (h, w), (ry, rx) = shape, res
    angles = 2 * math.pi * rng.random((ry + 1, rx + 1))
    gy, gx = np.cos(angles), np.sin(angles)  # component 0 pairs with axis 0, as in DRAEM
    py, px = np.arange(h) * (ry / h), np.arange(w) * (rx / w)
    iy, ix = np.minimum(py.astype(np.int64), ry - 1), np.minimum(px.astype(np.int64), rx - 1)
    fy, fx = (py - iy)[:, None], (px - ix)[None, :]
    iy, ix = iy[:, None], ix[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[iy + dy, ix + dx] * (fy - dy) + gx[iy + dy, ix + dx] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    n00, n01 = corner(0, 0), corner(0, 1)
    n0, n1 = n00 + ty * (corner(1, 0) - n00), n01 + ty * (corner(1, 1) - n01)
    return math.sqrt(2) * (n0 + tx * (n1 - n0))


def perlin_mask(
    rng: np.random.Generator, size: int = 256, threshold: float = 0.35, area_min: float = 0.1, area_max: float = 0.4
) -> np.ndarray:
    """Draw a binarised Perlin mask whose area fraction lies in (area_min, area_max) (docs/method-notes.md §6.2).

    Scales are (2^a, 2^b) with a, b ~ U{0, …, 5} independently; the mask is noise > threshold, not rotated
    (paper code; DRAEM rotates). The whole draw is repeated until the area fraction, measured on this mask
    before any foreground intersection, is inside the open interval.

    Returns:
        (size, size) bool mask.

    Raises:
        RuntimeError: no draw met the bounds in :data:`MAX_AREA_REDRAWS` tries (bounds far too tight).
    """
    for _ in range(MAX_AREA_REDRAWS):
        a, b = rng.integers(0, 6, size=2)
        m = perlin_noise_2d((size, size), (2 ** int(a), 2 ** int(b)), rng) > threshold
        if area_min < m.mean() < area_max:
            return m
    raise RuntimeError(f"no Perlin mask with area in ({area_min}, {area_max}) after {MAX_AREA_REDRAWS} draws")


def polygon_mask(rng: np.random.Generator, size: int, n_sides: int) -> np.ndarray:
    """One random regular n-gon (docs/method-notes.md §5.6, paper Appendix C).

    As the reference loader: scale = min(W, H) // 5 and circumradius = scale // 2; the centre is uniform such
    that the polygon stays inside the image; the rotation is uniform in [0, 2π).

    Returns:
        (size, size) bool mask.
    """
    import cv2

    r = (size // 5) // 2
    cx, cy = rng.uniform(r, size - r, size=2)
    angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n_sides) / n_sides
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def blend(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """I' = I⊙(1−M) + (1−β)·T⊙M + β·I⊙M on [0, 1] values (paper §3.5, DRAEM), returned as uint8.

    Args:
        image: (H, W, 3) uint8 normal image.
        texture: (H, W, 3) uint8 texture.
        mask: (H, W) bool mask M.
        beta: weight of the original image inside the mask.

    Returns:
        (H, W, 3) uint8; pixels outside ``mask`` are bit-identical to ``image``.
    """
    out = image.copy()
    mixed = (1.0 - beta) * (texture[mask] / 255.0) + beta * (image[mask] / 255.0)
    out[mask] = np.clip(np.rint(mixed * 255.0), 0, 255).astype(np.uint8)
    return out


@dataclass
class PseudoSample:
    """One generated image and how it was made (for tests, pictures and diagnostics).

    Attributes:
        image: (S, S, 3) uint8 RGB pseudo-defect image.
        mask: (S, S) bool final mask (after the foreground intersection).
        raw_mask: (S, S) bool Perlin/polygon mask before the intersection.
        foreground: (S, S) bool foreground mask of the source image.
        beta: the blending weight used.
        fg_fallback: True when no draw hit the foreground and the un-intersected mask was used
            (docs/method-notes.md §11 item 10 asks for a non-empty masked area; this is the bounded fallback).
    """

    image: np.ndarray
    mask: np.ndarray
    raw_mask: np.ndarray
    foreground: np.ndarray
    beta: float
    fg_fallback: bool


@dataclass
class PseudoEpisode:
    """One pretraining episode (docs/method-notes.md §7); items are (class_idx, source_idx) pairs.

    Attributes:
        classes: the chosen pseudo classes (generator class indices), fresh per episode.
        support: n_groups groups; group g holds one image of every class in ``classes`` (same order), all made
            from the same normal source image.
        queries: random (class, source) items of the chosen classes.
        query_labels: index into ``classes`` of each query.
    """

    classes: list[int]
    support: list[list[tuple[int, int]]]
    queries: list[tuple[int, int]]
    query_labels: list[int]

    def items(self) -> list[tuple[int, int]]:
        """Every distinct (class, source) item of the episode, support first, in first-use order."""
        return list(dict.fromkeys([it for group in self.support for it in group] + self.queries))


class PseudoDefectGenerator:
    """Deterministic, lazily evaluated pseudo-defect dataset for one category.

    Perlin variant: class k = texture k (class name = texture name). Polygon variant: class k = (texture
    k // 4, n = 3 + k % 4) named like ``"banded/4-gon"`` (the reference interleaves the n-gons fastest).
    Each (class, source) pair is exactly one image: every class has ``n_sources`` images (docs/method-notes.md §6.3).

    Args:
        normal_paths: the category's normal training images (sorted ``train/good``); source i = path i.
        textures: texture bank (one image per texture class).
        category: category name; selects the foreground method and enters the seed.
        config: generator settings.
        seed: non-negative seed of the data-generation stream.
        cache_size: decoded (image, foreground) pairs kept in memory.
    """

    def __init__(
        self,
        normal_paths: Sequence[str],
        textures: TextureBank,
        category: str,
        config: PseudoConfig = PseudoConfig(),
        seed: int = 0,
        cache_size: int = 64,
    ) -> None:
        if not normal_paths:
            raise DatasetError(f"no normal images for category {category!r}: pseudo defects need train/good images")
        if len(textures) == 0:
            raise DatasetError("the texture bank is empty: pass a DTD folder with texture sub-folders")
        if seed < 0:
            raise ConfigError(f"the pseudo-data seed must be non-negative, got {seed}")
        self.normal_paths = [str(p) for p in normal_paths]
        self.textures, self.category, self.config, self.seed = textures, category, config, int(seed)
        swap = config.texture_bgr and not textures.bgr  # a bank loaded with bgr=True is not swapped twice
        self._tex = [np.ascontiguousarray(resize_square(t, config.size)[..., ::-1 if swap else 1]) for t in textures.images]
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def n_classes(self) -> int:
        """Number of pseudo classes: textures (Perlin) or 4 × textures (polygon)."""
        return len(self.textures) * (len(POLYGON_SIDES) if self.config.mask == "polygon" else 1)

    @property
    def class_names(self) -> list[str]:
        """Class names: the texture names, or ``"<texture>/<n>-gon"``."""
        if self.config.mask == "perlin":
            return list(self.textures.names)
        return [f"{t}/{n}-gon" for t in self.textures.names for n in POLYGON_SIDES]

    @property
    def n_sources(self) -> int:
        """Number of normal source images."""
        return len(self.normal_paths)

    def texture_of(self, class_idx: int) -> int:
        """Texture index of a class."""
        return class_idx if self.config.mask == "perlin" else class_idx // len(POLYGON_SIDES)

    def _check(self, class_idx: int, source_idx: int) -> None:
        if not (0 <= class_idx < self.n_classes and 0 <= source_idx < self.n_sources):
            raise IndexError(f"(class {class_idx}, source {source_idx}) outside {self.n_classes} × {self.n_sources}")

    def source(self, source_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized normal image (S, S, 3) uint8 and its foreground mask (S, S) bool, via a small LRU."""
        if source_idx in self._cache:
            self._cache.move_to_end(source_idx)
            return self._cache[source_idx]
        size, path = self.config.size, self.normal_paths[source_idx]
        img, hw = load_resized(path, size)
        if self.config.use_foreground:
            fg = cached_foreground(path, self.category, size, image=img, orig_hw=hw)
        else:
            fg = np.ones((size, size), bool)
        img.setflags(write=False)
        fg.setflags(write=False)
        self._cache[source_idx] = (img, fg)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img, fg

    def sample(self, class_idx: int, source_idx: int) -> PseudoSample:
        """Generate the pseudo image of (class, source) with everything that went into it (deterministic)."""
        self._check(class_idx, source_idx)
        cfg = self.config
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, class_idx, source_idx, stable_int(self.category)])
        )
        img, fg = self.source(source_idx)
        polygon = cfg.mask == "polygon"
        min_pixels = POLYGON_MIN_AREA * cfg.size**2 if polygon else 0
        best: tuple[np.ndarray, np.ndarray] | None = None
        for _ in range(MAX_FG_REDRAWS):
            if polygon:
                raw = polygon_mask(rng, cfg.size, POLYGON_SIDES[class_idx % len(POLYGON_SIDES)])
            else:
                raw = perlin_mask(rng, cfg.size, cfg.threshold, cfg.area_min, cfg.area_max)
            mask = raw & fg
            if best is None or mask.sum() > best[1].sum():
                best = (raw, mask)
            if mask.sum() > min_pixels:
                break
        else:
            raw, mask = best  # type: ignore[misc]  # largest intersection seen (polygon on a thin object)
        fallback = not mask.any()
        if fallback:
            log.warning(
                "%s: no %s mask hit the foreground of %s in %d draws; using the mask without the foreground",
                self.category, cfg.mask, self.normal_paths[source_idx], MAX_FG_REDRAWS,
            )  # fmt: skip
            mask = raw
        beta = float(rng.random() * cfg.beta_max)
        out = blend(img, self._tex[self.texture_of(class_idx)], mask, beta)
        return PseudoSample(out, mask, raw, np.array(fg), beta, fallback)

    def image(self, class_idx: int, source_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the pseudo image (S, S, 3) uint8 RGB and its mask (S, S) bool for (class, source).

        Deterministic given (seed, config, category, class_idx, source_idx): the RNG is
        ``default_rng(SeedSequence([seed, class_idx, source_idx, stable_int(category)]))``.
        """
        s = self.sample(class_idx, source_idx)
        return s.image, s.mask

    def content_key(self, class_idx: int, source_idx: int) -> str:
        """Stable hash (32 hex) of everything that determines ``image(class_idx, source_idx)``, for caches."""
        self._check(class_idx, source_idx)
        payload = [
            GENERATOR_VERSION, FOREGROUND_VERSION, self.config.key(), self.textures.source, self.textures.names,
            self.textures.digest(), self.seed, self.category, source_content(self.normal_paths[source_idx]),
            int(class_idx), int(source_idx),
        ]  # fmt: skip
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]

    def _class_pool(self, only: Sequence[int] | None, exclude: Sequence[int] | None) -> np.ndarray:
        pool = set(range(self.n_classes)) if only is None else {int(c) for c in only}
        return np.array(sorted(pool - set(exclude or ())), dtype=np.int64)

    def sample_episode(
        self,
        rng: np.random.Generator,
        n_classes: int = 10,
        n_groups: int = 9,
        n_queries: int = 9,
        *,
        only_classes: Sequence[int] | None = None,
        exclude_classes: Sequence[int] | None = None,
        sources: Sequence[int] | None = None,
    ) -> PseudoEpisode:
        """Draw one pretraining episode (docs/method-notes.md §7): support groups plus random queries.

        ``n_classes`` classes are drawn afresh from the allowed pool. Group g pairs every chosen class with one
        random source image s_g (all 10 images of a group share their normal image). Queries are distinct
        random (class, source) pairs; when there are more sources than groups they come from sources not used
        by the support, so a query is never the very same image as a support item.

        Args:
            rng: the episode sampler's stream.
            n_classes, n_groups, n_queries: episode shape (paper: 10, 9, 9).
            only_classes, exclude_classes: restrict the class pool (held-out textures, §12.2a).
            sources: restrict the source images (held-out normal images).
        """
        pool = self._class_pool(only_classes, exclude_classes)
        if len(pool) < n_classes:
            raise ConfigError(
                f"an episode needs {n_classes} pseudo classes but only {len(pool)} are available; use more "
                "textures (a DTD folder) or fewer classes per episode"
            )
        src = np.arange(self.n_sources) if sources is None else np.array(sorted(set(sources)), dtype=np.int64)
        if len(src) == 0:
            raise ConfigError("an episode needs at least one source image")
        classes = [int(c) for c in rng.choice(pool, n_classes, replace=False)]
        if len(src) > n_groups:
            perm = rng.permutation(src)
            support_src, query_src = perm[:n_groups], perm[n_groups:]
        else:
            support_src = rng.choice(src, n_groups, replace=len(src) < n_groups)
            query_src = src  # too few sources: queries may repeat support images
        support = [[(c, int(s)) for c in classes] for s in support_src]
        n_pairs = n_classes * len(query_src)
        flat = rng.choice(n_pairs, n_queries, replace=n_pairs < n_queries)
        queries = [(classes[f % n_classes], int(query_src[f // n_classes])) for f in flat]
        return PseudoEpisode(classes, support, queries, [int(f % n_classes) for f in flat])

    def split_classes(self, n_val: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Hold out ``n_val`` whole textures (all their classes) for synthetic validation (docs/method-notes.md §12.2 (a)).

        Returns:
            (train_classes, val_classes), sorted class indices.
        """
        if not 0 < n_val < len(self.textures):
            raise ConfigError(f"n_val must be in [1, {len(self.textures) - 1}], got {n_val}")
        held = set(rng.permutation(len(self.textures))[:n_val].tolist())
        val = [c for c in range(self.n_classes) if self.texture_of(c) in held]
        return [c for c in range(self.n_classes) if self.texture_of(c) not in held], val

    def split_sources(self, n_val: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Hold out ``n_val`` normal source images; returns (train_sources, val_sources), sorted."""
        if not 0 < n_val < self.n_sources:
            raise ConfigError(f"n_val must be in [1, {self.n_sources - 1}], got {n_val}")
        perm = rng.permutation(self.n_sources)
        return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def save_examples(
    gen: PseudoDefectGenerator, out_path: Path, n_classes: int = 8, n_sources: int = 3, seed: int = 0
) -> Path:
    """Save a PNG grid of pseudo-defect examples, so a user sees what the model is pretrained on.

    Layout: the first row shows the normal source images (foreground contour in cyan); every further row is one
    pseudo class (its texture in the first column, its name on the left) and its images on those sources, with
    the final mask contour in red. Classes and sources are drawn with ``default_rng(seed)``.

    Returns:
        ``out_path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    classes = sorted(rng.choice(gen.n_classes, min(n_classes, gen.n_classes), replace=False).tolist())
    sources = sorted(rng.choice(gen.n_sources, min(n_sources, gen.n_sources), replace=False).tolist())
    rows, cols = len(classes) + 1, len(sources) + 1
    fig = Figure(figsize=(1.9 * cols, 1.9 * rows + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    axes[0, 0].axis("off")
    for j, s in enumerate(sources, start=1):
        img, fg = gen.source(s)
        axes[0, j].imshow(img)
        if not fg.all():
            axes[0, j].contour(fg.astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
        axes[0, j].set_title(f"normal: {Path(gen.normal_paths[s]).name}", fontsize=7)
    for i, c in enumerate(classes, start=1):
        axes[i, 0].imshow(gen._tex[gen.texture_of(c)])
        axes[i, 0].set_ylabel(gen.class_names[c], fontsize=8)
        for j, s in enumerate(sources, start=1):
            smp = gen.sample(c, s)
            axes[i, j].imshow(smp.image)
            axes[i, j].contour(smp.mask.astype(float), levels=[0.5], colors="red", linewidths=0.6)
            axes[i, j].set_xlabel(f"β={smp.beta:.2f}" + (" (no fg)" if smp.fg_fallback else ""), fontsize=6)
    key = textwrap.wrap(f"textures {gen.textures.source}, seed {gen.seed} · rows: one class each, its texture left · "
                        "cyan: foreground, red: defect mask · β: the original image's weight inside the mask",
                        int(fig.get_figwidth() * 14))  # fmt: skip
    fig.suptitle("\n".join([f"Pseudo-defect classes on {gen.category} ({gen.config.mask} masks)", *key]), fontsize=8)
    fig.tight_layout()  # makes room for the suptitle
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", bbox_inches="tight", pad_inches=0.1)  # the title's second line kept
    return out_path
