"""PatchCore patch features: the feature configuration, the extractor network and the grid layout helpers.

Follows PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) and its
reference code, as used by the paper's code (docs/method-notes.md §4.2): a frozen backbone up to ``layer3``; each of
``layer2`` / ``layer3`` is aggregated over a 3×3 neighbourhood (``PatchMaker.patchify``: unfold, stride 1,
zero padding 1), ``layer3`` is brought to the ``layer2`` grid by bilinear interpolation
(``align_corners=False``), each layer's C·9 patch vector is pooled to 1024 with ``adaptive_avg_pool1d``
(``MeanMapper``), the two are stacked and pooled again to 1024 (``Aggregator``). Output: (B, 1024, 28, 28)
for a 224 crop, channels = feature dims, dims 0–511 from ``layer2`` and 512–1023 from ``layer3``.

Any timm backbone: without ``layers`` the stages at strides 8 and 16 of timm's ``feature_info`` are used
(:func:`bench.features.backbones.default_layers`: a ResNet's ``layer2`` / ``layer3``, an EfficientNet's ``blocks.2`` /
``blocks.4``), and the input is normalised with the backbone's own pretrained mean/std (timm's
``pretrained_cfg``: the ImageNet statistics for ResNets, 0.5 / 0.5 for the TF-ported ``tf_efficientnet_lite*``), at
its own input size (timm's pretrained ``input_size``: :func:`bench.features.backbones.native_input`). A plain vision
transformer's maps are its patch tokens from two blocks (:func:`bench.features.backbones.token_backbone`), both on
the (H/p, W/p) grid: DINOv2 ViT-S/14 at 518 px gives 37 × 37 (16 × 16 at 224), a ViT-B/16 at 224 14 × 14.

Deviations, all exact up to float rounding (``tests/test_features.py`` checks against a direct
transcription of ``PatchCore._embed``):

* every step after the backbone is linear, so the 3×3 unfold, both average pools and the channel-wise
  interpolation commute: each layer is pooled on its own grid first and only its pooled result is
  interpolated (the reference interpolates all 9216 unfolded ``layer3`` channels);
* when the pooling windows never mix channel groups (ResNet-50 / WRN-50: C·9 = 4608 → 1024 → 512 and
  9216 → 1024 → 512) the unfold + two pools are folded into one grouped 3×3 convolution with fixed weights
  (depthwise for ``layer2``, 2 channels per group for ``layer3``); other widths (ResNet-18) use unfold +
  adaptive pooling on the native grid;
* the backbone is timm's ``features_only`` model (torchvision-compatible ResNets) in eval mode,
  channels-last, without gradients; ``precision="bf16"`` (opt-in) runs the backbone under bf16 autocast and
  the aggregation in float32;
* random weights are drawn under a fixed torch seed (``init_seed``) so every process builds the same network
  (otherwise cached features of two processes would not match).

One deliberate departure, only for narrow backbones (:attr:`FeatureConfig.layer_dims`). When a layer's patch
vector has fewer values than ``pretrain_dim`` (C·k² < 1024: EfficientNet-Lite0's ``blocks.2``, 40·9 = 360, and
``blocks.4``, 112·9 = 1008), ``MeanMapper`` would "pool" 360 values up to 1024, i.e. repeat each about three
times (windows of one or two inputs): no information is added, but D, the memory bank, every nearest-neighbour
search and every method's first layer grow 7×, and each value is weighted by how often it happens to be repeated.
Instead, every layer of such a configuration is reduced to min(C, ``pretrain_dim``) dims, each the 3×3
neighbourhood mean of one channel (pooling C·k² values in windows of exactly k²), and D = min(``target_dim``, sum of
the layers' dims): lite0 40 + 112 = 152, lite2 48 + 120 = 168. That is what PatchCore's own pooling computes for
ResNet-50's ``layer2`` (512·9 → 1024 → aggregator pairs: each of its 512 dims is exactly one channel's 3×3 mean);
it keeps every channel, weights each equally, and treats all layers of a configuration alike (lite2's ``blocks.4``,
120·9 = 1080, is reduced with its narrow ``blocks.2`` rather than pooled to 1024 beside 48 channel means). When no
layer is narrow (every ResNet-18/34/50 and WRN-50 default: 1152 to 9216 values per layer) the aggregation is the
reference's, so those features and their cache keys are unchanged; a configuration the rule changes gets a new key
(:meth:`FeatureConfig.key`).

Measured with ImageNet lite0 on the real MTD tiles (``--image-fit squash``), this rule (D = 152) against the
reference pooling (D = 1024): defect-type classification, 5 types, ``--protocol random``, seeds 1–3, coreset 2 %,
mean accuracy at 1 / 5 shots: protonet 0.26 / 0.38 vs 0.25 / 0.35, protonet-residual 0.32 / 0.50 vs 0.32 / 0.45,
knn-residual 0.37 / 0.54 vs 0.30 / 0.49, logreg-residual 0.33 / 0.54 vs 0.31 / 0.51 (the rule ahead or level in
all 12 method × shot cells, within a few seeds' noise), the run 1.8× faster (199 s vs 364 s on 2 cores). PatchCore
detection (image AUROC, 120 train / 60 good / 90 defective images, two draws) is slightly lower: 0.934 and 0.927 vs
0.942 and 0.949, the reference keeping each 3×3 position apart. This benchmark classifies defect types, so the
classification figures and the cost decide.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.features.backbones import (
    WORKING_BACKBONES, WeightsInfo, channels_last_maps, check_layers, create_backbone, default_layers, feature_stages,
    imagenet_source, map_layout, native_input, supports_zero_init_last, token_backbone, token_feature_model,
    weights_tag,
)  # fmt: skip
from bench.cache import file_sha256, stable_hash
from bench.errors import BenchError, ConfigError, brief
from bench.images import DECODING, FITS, IMAGENET_MEAN, IMAGENET_STD, Preprocess

FEATURE_VERSION = 2
"""Bump when the features produced for a given config change; part of :meth:`FeatureConfig.key`.

2: cache entries carry a CRC-32 trailer (:func:`bench.cache.save_npy`); images are decoded with their EXIF
orientation applied and float images scaled (:data:`bench.images.DECODING`)."""


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the patch features of an image.

    Attributes:
        backbone: timm model name (``resnet50`` as the paper's code; ``wide_resnet50_2``, ``resnet18``,
            ``tf_efficientnet_lite0``...).
        weights: ``imagenet`` | ``random`` | a weights file path (see :mod:`bench.features.backbones`).
        zero_init_last: only for random weights (``None`` = False: no identity blocks, see backbones).
        layers: backbone stages to aggregate (timm ``feature_info`` module names); the first sets the output grid.
            ``None`` (default): the stages at strides 8 and 16 (:func:`bench.features.backbones.default_layers`;
            ResNets ``layer2``, ``layer3``). :attr:`resolved_layers` holds the names used.
        resize: shorter side after resizing (docs/method-notes.md §4.1); ``None`` (default): the backbone's native
            one (:func:`bench.features.backbones.native_input`: 256 for every 224 backbone).
        crop: center-crop side, the network's input side; ``None`` (default): the backbone's native input size,
            timm's pretrained ``input_size`` (224 for ResNets and Lite0, 260 for Lite2, 518 for DINOv2 ViTs). Both
            are resolved when the configuration is made, so :meth:`key` and :meth:`record` hold the sizes used.
        patch_size: local neighbourhood (3 → 3×3, padding 1).
        pretrain_dim: each layer's patch vector is pooled to this (``MeanMapper``); when some layer has fewer
            values, every layer is reduced to its channel means instead (:attr:`layer_dims`, module docstring).
        target_dim: the concatenated layers are pooled to at most this (``Aggregator``); the feature dim D is
            :attr:`dim`.
        precision: ``fp32`` or ``bf16`` (backbone under bf16 autocast; opt-in).
        storage: dtype of cached feature files, ``fp32`` (default) or ``fp16``.
        init_seed: torch seed for random weights (ignored otherwise).
        image_fit: how an image becomes the square input (``crop`` | ``squash`` | ``letterbox``, see
            :class:`bench.images.Preprocess`); left out of :meth:`key` when ``crop`` so earlier caches stay valid.
        mean, std: per-channel input normalisation; ``None`` (default): the backbone's own pretrained
            configuration in timm (:attr:`normalisation`). Give both or neither.

    Derived values (:attr:`resolved_layers`, :attr:`normalisation`, :attr:`layer_channels`, :attr:`layer_dims`,
    :attr:`dim`) are computed on first use from timm's metadata (no weights are loaded) and are part of
    :meth:`key` and :meth:`record`. ``dataclasses.replace`` keeps ``layers=None`` / ``mean=None`` as they were
    given, so a replaced backbone gets its own stages and normalisation; not its input size (``resize`` and ``crop``
    are numbers once made): pass them again, or build a new configuration.
    """

    backbone: str = "resnet50"
    weights: str = "imagenet"
    zero_init_last: bool | None = None
    layers: tuple[str, ...] | None = None
    resize: int | None = None
    crop: int | None = None
    patch_size: int = 3
    pretrain_dim: int = 1024
    target_dim: int = 1024
    precision: str = "fp32"
    storage: str = "fp32"
    init_seed: int = 0
    image_fit: str = "crop"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.resize is None or self.crop is None:
            # the backbone's native input; resolved here (not lazily) because every reader takes .crop as a number.
            # dataclasses.replace(config, backbone=...) therefore keeps the old backbone's sizes: pass them again.
            resize, crop = native_input(self.backbone)
            object.__setattr__(self, "resize", resize if self.resize is None else self.resize)
            object.__setattr__(self, "crop", crop if self.crop is None else self.crop)
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.storage not in ("fp32", "fp16"):
            raise ConfigError(f"feature storage must be 'fp32' or 'fp16', got {self.storage!r}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be a positive odd number, got {self.patch_size}")
        if self.layers is not None:
            if isinstance(self.layers, str):
                object.__setattr__(self, "layers", (self.layers,))
            if not self.layers:
                raise ConfigError("at least one backbone layer is needed (--layers NAME ...), or leave --layers out")
            object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))
        if self.image_fit not in FITS:
            raise ConfigError(f"image fit must be one of {', '.join(FITS)}, got {self.image_fit!r} (--image-fit)")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std for the input normalisation, or neither (the backbone's own)")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(x) for x in v)
                if len(v) != 3 or (name == "std" and min(v) <= 0):
                    raise ConfigError(f"{name} must be 3 numbers (one per RGB channel){', all > 0' if name == 'std' else ''}, got {v}")
                object.__setattr__(self, name, v)

    # ------------------------------------------------------------------ derived from timm's metadata
    @functools.cached_property
    def resolved_layers(self) -> tuple[str, ...]:
        """The stages aggregated, shallowest first: ``layers`` checked and ordered by depth
        (:func:`bench.features.backbones.check_layers` says why), or the stages at strides 8 and 16.

        Raises:
            ConfigError: a name the backbone does not have (the message lists the available ones).
        """
        if self.layers is None:
            return default_layers(self.backbone)
        return check_layers(self.backbone, self.layers)

    @functools.cached_property
    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) of the input normalisation: as given, else from timm's pretrained config of the backbone.

        The pretrained weights were trained with that normalisation (ResNets: the ImageNet statistics; the
        TF-ported EfficientNet-Lite weights: 0.5 / 0.5, i.e. inputs in [-1, 1]); random weights use it too, so a
        backbone's features differ between weights only by the weights.
        """
        if self.mean is not None and self.std is not None:
            return tuple(self.mean), tuple(self.std)  # type: ignore[return-value]
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(self.backbone)
        except Exception:  # noqa: BLE001
            cfg = None
        mean = tuple(float(x) for x in getattr(cfg, "mean", None) or IMAGENET_MEAN)
        std = tuple(float(x) for x in getattr(cfg, "std", None) or IMAGENET_STD)
        return mean, std  # type: ignore[return-value]

    @functools.cached_property
    def layer_channels(self) -> tuple[int, ...]:
        """Channel count C of each resolved layer (timm ``feature_info``)."""
        by_name = {st.name: st.channels for st in feature_stages(self.backbone)}
        return tuple(by_name[layer] for layer in self.resolved_layers)

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """Dims each layer's patch vector (C·k² values) is reduced to.

        ``pretrain_dim`` for every layer (PatchCore's ``MeanMapper``) unless some layer has fewer than
        ``pretrain_dim`` values; then min(C, ``pretrain_dim``) for every layer: the 3×3 neighbourhood mean of each
        channel (the reason is in the module docstring).
        """
        k2 = self.patch_size**2
        if all(c * k2 >= self.pretrain_dim for c in self.layer_channels):
            return (self.pretrain_dim,) * len(self.layer_channels)
        return tuple(min(c, self.pretrain_dim) for c in self.layer_channels)

    @property
    def dim(self) -> int:
        """Feature dim D: ``target_dim``, or the sum of :attr:`layer_dims` when that is smaller."""
        return min(self.target_dim, sum(self.layer_dims))

    @property
    def reference_aggregation(self) -> bool:
        """Whether the aggregation is PatchCore's as written (every layer pooled to ``pretrain_dim``, D =
        ``target_dim``): true for every ResNet default; false only where the narrow-layer rule applies."""
        return self.layer_dims == (self.pretrain_dim,) * len(self.layer_dims) and self.dim == self.target_dim

    def preprocess(self) -> Preprocess:
        """The image transform of these features (fit, sizes and this backbone's normalisation)."""
        mean, std = self.normalisation
        return Preprocess(self.resize, self.crop, self.image_fit, mean=mean, std=std)

    # ------------------------------------------------------------------ identity
    @property
    def effective_zero_init_last(self) -> bool | None:
        """What the backbone is built with: False for random ResNets unless set, None when meaningless."""
        if self.weights != "random" or not supports_zero_init_last(self.backbone):
            return None
        return bool(self.zero_init_last) if self.zero_init_last is not None else False

    def weights_identity(self) -> str:
        """What identifies the weights: a file's sha256, the ImageNet weights' source, or the random init.

        ImageNet weights from timm's hub are identified by timm's default pretrained tag (as before weights
        packages existed, so those keys are unchanged); from a weights package by its name, version and the
        sha256 of its file (:func:`bench.features.backbones.imagenet_source` decides which, once per process).
        """
        if self.weights == "random":
            return f"random:seed={self.init_seed}:zero_init_last={self.effective_zero_init_last}"
        if self.weights == "imagenet":
            import timm

            src = imagenet_source(self.backbone)
            if src.kind == "package" and src.package is not None:
                pkg = src.package
                return f"imagenet:package:{pkg.distribution}=={pkg.version}:sha256={pkg.sha256()}:timm={timm.__version__}"
            try:
                cfg = timm.models.get_pretrained_cfg(self.backbone)
                tag = (cfg.hf_hub_id or cfg.url or "") if cfg is not None else ""
            except Exception:  # noqa: BLE001 - unknown names fail later in create_backbone with a clear message
                tag = ""
            return f"imagenet:{tag or self.backbone}:timm={timm.__version__}"
        return "file:" + file_sha256(weights_tag(self.weights))

    def key(self) -> str:
        """Stable hash of everything that changes the features (+ :data:`FEATURE_VERSION`, weights identity).

        Byte-identical to the keys of earlier versions for what they could express: the resolved layers stand
        where the explicit default ``("layer2", "layer3")`` stood; the normalisation enters only when it is not the
        ImageNet mean/std every earlier key was made with; the per-layer dims only when the narrow-layer rule
        changes the aggregation (:attr:`reference_aggregation`).
        """
        d = asdict(self)
        for k in ("weights", "zero_init_last", "init_seed", "mean", "std"):
            d.pop(k)
        d["layers"] = list(self.resolved_layers)
        if d["image_fit"] == "crop":  # the original pipeline: keys (and caches) from before the field are unchanged
            d.pop("image_fit")
        mean, std = self.normalisation
        if (mean, std) != (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)):
            d["normalisation"] = {"mean": list(mean), "std": list(std)}
        if not self.reference_aggregation:
            d["aggregation"] = {"layer_dims": list(self.layer_dims), "dim": self.dim}
        d.update(version=FEATURE_VERSION, weights=self.weights_identity(), decoding=DECODING)
        return stable_hash(d, 24)

    def record(self) -> dict[str, Any]:
        """The configuration as stored in result rows: the fields with the resolved layers and normalisation, plus
        the per-layer dims and the feature dim D."""
        d = asdict(self)
        mean, std = self.normalisation
        d.update(layers=list(self.resolved_layers), mean=list(mean), std=list(std), layer_dims=list(self.layer_dims),
                 dim=self.dim)  # fmt: skip
        return d


def to_patches(x: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) grid → (N·h·w, D) patches in row-major order (``x.flatten(2).transpose(1, 2)``)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_patches(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`: (N·h·w, D) → (N, D, h, w) (a channels-last view when possible)."""
    return p.reshape(-1, h, w, p.shape[-1]).permute(0, 3, 1, 2)


def pool_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Windows of ``F.adaptive_avg_pool1d`` from n_in to n_out: output i averages [⌊i·n_in/n_out⌋, ⌈(i+1)·n_in/n_out⌉)."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def layer_pooling_map(layer: int, channels: int, k2: int, layer_dims: Sequence[int], target_dim: int) -> list[list[tuple[int, int, float]]]:
    """The linear map from one layer's unfolded patch vector (C·k², channel-major) to the D output dims.

    ``MeanMapper`` (C·k² → ``layer_dims[layer]``) followed by this layer's share of ``Aggregator``
    (sum(layer_dims) → target_dim, the layers concatenated in order), kept sparse. With every layer at
    ``pretrain_dim`` this is PatchCore's stack-and-pool exactly.

    Returns:
        For each of the target_dim outputs, its terms (start, end, weight): weight × sum of inputs [start, end).
    """
    d = layer_dims[layer]
    a_win = pool_windows(channels * k2, d)
    lo = sum(layer_dims[:layer])
    hi = lo + d
    rows = []
    for s, e in pool_windows(sum(layer_dims), target_dim):
        rows.append([(a_win[j - lo][0], a_win[j - lo][1], 1.0 / ((e - s) * (a_win[j - lo][1] - a_win[j - lo][0])))
                     for j in range(max(s, lo), min(e, hi))])
    return rows


def _grouped_plan(rows: list[list[tuple[int, int, float]]], channels: int, k2: int, max_group_channels: int = 8) -> tuple[int, int, int, torch.Tensor] | None:
    """Express a layer's sparse pooling map as a grouped k×k conv, if its non-zero rows allow it.

    Returns:
        (row_start, row_end, groups, weight (rows, C/groups, k, k)) or None.
    """
    nz = [t for t, terms in enumerate(rows) if terms]
    if not nz or nz != list(range(nz[0], nz[-1] + 1)):
        return None
    r0, r1 = nz[0], nz[-1] + 1
    n_rows = r1 - r0
    lo = [min(s for s, _, _ in rows[t]) // k2 for t in nz]  # first and last channel each row reads
    hi = [(max(e for _, e, _ in rows[t]) - 1) // k2 for t in nz]
    for groups in sorted({g for g in range(1, channels + 1) if channels % g == 0 and n_rows % g == 0}, reverse=True):
        cg, rg = channels // groups, n_rows // groups
        if cg > max_group_channels:
            break
        if any(lo[r] // cg != r // rg or hi[r] // cg != r // rg for r in range(n_rows)):
            continue
        weight = torch.zeros(n_rows, cg * k2, dtype=torch.float64)
        for r in range(n_rows):
            base = (r // rg) * cg * k2
            for s, e, v in rows[r0 + r]:
                weight[r, s - base : e - base] += v
        k = int(round(math.sqrt(k2)))
        return r0, r1, groups, weight.reshape(n_rows, cg, k, k).float()
    return None


class PatchCoreExtractor(nn.Module):
    """Backbone + PatchCore local aggregation; pure torch, no caching.

    Args:
        backbone: a timm ``features_only`` model returning the maps of ``channels`` (in order).
        channels: channel count of each returned layer.
        patch_size: neighbourhood side (3).
        pretrain_dim: per-layer pooled dim (1024), used for every layer unless ``layer_dims`` is given.
        target_dim: output dim D (1024).
        precision: ``fp32`` or ``bf16`` (backbone autocast).
        fast: use the grouped-convolution form when the pooling windows allow it (False: always unfold +
            adaptive pooling; for tests).
        layer_dims: per-layer pooled dims (:attr:`FeatureConfig.layer_dims`); ``None`` = ``pretrain_dim`` for
            every layer (PatchCore's reference aggregation).
        channels_last_maps: the backbone returns (B, H, W, C) maps (Swin-like timm models,
            :func:`bench.features.backbones.channels_last_maps`); they are permuted to (B, C, H, W) views.

    ``forward(images (B, 3, H, W)) -> (B, D, h, w)`` float32, channels-last memory, where (h, w) is the
    grid of the first layer (28×28 for a 224 input and ``layer2``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: Sequence[int],
        patch_size: int = 3,
        pretrain_dim: int = 1024,
        target_dim: int = 1024,
        precision: str = "fp32",
        fast: bool = True,
        layer_dims: Sequence[int] | None = None,
        channels_last_maps: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last_maps = channels_last_maps
        self.backbone = backbone.eval().to(memory_format=torch.channels_last)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.channels = list(channels)
        self.patch_size = patch_size
        self.pretrain_dim = pretrain_dim
        self.layer_dims = list(layer_dims) if layer_dims is not None else [pretrain_dim] * len(self.channels)
        if len(self.layer_dims) != len(self.channels):
            raise ValueError(f"layer_dims {self.layer_dims} must give one dim per layer ({len(self.channels)})")
        self.target_dim = target_dim
        self.precision = precision
        k2 = patch_size * patch_size
        plans = [
            _grouped_plan(layer_pooling_map(i, c, k2, self.layer_dims, target_dim), c, k2)
            for i, c in enumerate(self.channels)
        ]
        contiguous = all(p is not None for p in plans) and [p[0] for p in plans] == [0] + [p[1] for p in plans[:-1]]
        self.fast = bool(fast and contiguous and plans[-1][1] == target_dim)
        self.groups: list[int] = []
        if self.fast:
            for i, (_, _, groups, weight) in enumerate(plans):
                self.register_buffer(f"agg_weight{i}", weight)
                self.groups.append(groups)

    def train(self, mode: bool = True) -> "PatchCoreExtractor":  # always eval: frozen feature extractor
        return super().train(False)

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone maps (float32, (B, C, h, w)) of (B, 3, H, W) images."""
        x = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            if self.precision == "bf16":
                with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                    feats = self.backbone(x)
            else:
                feats = self.backbone(x)
        if self.channels_last_maps:  # a free view: (B, C, h, w) logically, channels-last in memory as the CNNs' maps
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return [f.float() for f in feats]

    def aggregate(self, feats: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """PatchCore local aggregation of backbone maps.

        Args:
            feats: [(B, C_l, h_l, w_l)] float32 backbone maps, first layer's grid is the output grid.
            out: optional (B, h_0, w_0, D) float32 contiguous buffer to write into (saves a copy).

        Returns:
            (B, D, h_0, w_0) float32 in channels-last memory (a permuted view of ``out`` when given).
        """
        b = feats[0].shape[0]
        ref = tuple(feats[0].shape[-2:])
        pad = self.patch_size // 2
        if out is None:
            out = torch.empty((b, *ref, self.target_dim), dtype=torch.float32, device=feats[0].device)
        with torch.no_grad():
            if self.fast:
                start = 0
                for i, f in enumerate(feats):
                    y = F.conv2d(f, getattr(self, f"agg_weight{i}"), padding=pad, groups=self.groups[i])
                    if tuple(y.shape[-2:]) != ref:
                        y = F.interpolate(y, size=ref, mode="bilinear", align_corners=False)
                    out[..., start : start + y.shape[1]] = y.permute(0, 2, 3, 1)
                    start += y.shape[1]
            else:
                pooled = []
                for f, d in zip(feats, self.layer_dims):
                    _, c, h, w = f.shape
                    u = F.unfold(f.contiguous(), self.patch_size, padding=pad).view(b, 1, c * self.patch_size**2, h, w)
                    y = F.adaptive_avg_pool3d(u, (d, h, w)).view(b, d, h, w)
                    if tuple(y.shape[-2:]) != ref:
                        y = F.interpolate(y, size=ref, mode="bilinear", align_corners=False)
                    pooled.append(y)
                x = torch.cat(pooled, 1)
                n = x.shape[1]
                x = F.adaptive_avg_pool3d(x.contiguous().view(b, 1, n, *ref), (self.target_dim, *ref))
                out.copy_(x.view(b, self.target_dim, *ref).permute(0, 2, 3, 1))
        return out.permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images → (B, D, h, w) float32 patch features."""
        return self.aggregate(self.backbone_features(images))


def _out_indices(name: str, layers: Sequence[str]) -> list[int]:
    """timm ``features_only`` indices of the named layers (positions in its ``feature_info``)."""
    names = [st.name for st in feature_stages(name)]
    return [names.index(layer) for layer in layers]


def build_extractor(config: FeatureConfig) -> tuple[PatchCoreExtractor, WeightsInfo]:
    """Build the extractor for ``config`` (weights through :func:`bench.features.backbones.create_backbone`).

    Returns:
        The extractor (eval mode, CPU) and what weights were loaded.
    """
    idx = _out_indices(config.backbone, config.resolved_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        if token_backbone(config.backbone):  # the whole ViT gets the weights (strictly), then its blocks are taken
            vit, info = create_backbone(config.backbone, config.weights, dynamic_img_size=True)
            backbone = token_feature_model(vit, tuple(idx))
        else:
            backbone, info = create_backbone(
                config.backbone, config.weights, zero_init_last=config.zero_init_last, features_only=True,
                out_indices=tuple(idx),
            )  # fmt: skip
    channels = list(backbone.feature_info.channels())
    nhwc = channels_last_maps(config.backbone)
    # the meta-device probe and the real model must agree
    if tuple(channels) != config.layer_channels or (map_layout(backbone) == "NHWC") != nhwc:
        raise RuntimeError(f"{config.backbone}: feature channels {channels} ({map_layout(backbone)}) differ from the "
                           f"probe's {config.layer_channels}")  # fmt: skip
    extractor = PatchCoreExtractor(
        backbone, channels, config.patch_size, config.pretrain_dim, config.dim, config.precision,
        layer_dims=config.layer_dims, channels_last_maps=nhwc,
    )  # fmt: skip
    return extractor.eval(), info


def probe_grid(extractor: PatchCoreExtractor, config: FeatureConfig, device: torch.device) -> tuple[int, int]:
    """The patch grid (h, w) of ``config``'s input size, from one blank image through the whole extractor.

    Run once per feature store, i.e. at a run's preflight, so a backbone whose maps the aggregation cannot take
    (another layout, channels other than its ``feature_info`` says, a model that refuses this input size) stops
    the run with one message before the first job, instead of failing every job the same way.

    Raises:
        ConfigError: the backbone cannot give the maps at this input size (its error, and backbones that work).
    """
    side = config.crop
    fix = f"Choose another --backbone (e.g. {WORKING_BACKBONES}) or other --layers."
    try:
        with torch.no_grad():
            maps = extractor.backbone_features(torch.zeros(1, 3, side, side, device=device))
            got = [tuple(m.shape) for m in maps]
            want = extractor.channels
            if len(got) != len(want) or any(len(g) != 4 or g[1] != c for g, c in zip(got, want)):
                raise ConfigError(
                    f"backbone {config.backbone!r} returned feature maps of shapes {brief(got)} for layers "
                    f"{', '.join(config.resolved_layers)}, not (1, C, h, w) with C = {want}. {fix}"
                )
            extractor.aggregate(maps)
    except (BenchError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, every job would raise it too
        raise ConfigError(
            f"backbone {config.backbone!r} cannot compute feature maps of a {side}x{side} image "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). {fix}"
        ) from None
    return int(maps[0].shape[-2]), int(maps[0].shape[-1])
