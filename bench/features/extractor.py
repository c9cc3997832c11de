"""PatchCore patch features: the feature configuration, the extractor network and the grid layout helpers.

Follows PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) and its
reference code, as used by the paper's code (docs/method-notes.md §4.2): a frozen backbone up to ``layer3``; each of
``layer2`` / ``layer3`` is aggregated over a 3×3 neighbourhood (``PatchMaker.patchify``: unfold, stride 1,
zero padding 1), ``layer3`` is brought to the ``layer2`` grid by bilinear interpolation
(``align_corners=False``), each layer's C·9 patch vector is pooled to 1024 with ``adaptive_avg_pool1d``
(``MeanMapper``), the two are stacked and pooled again to 1024 (``Aggregator``). Output: (B, 1024, 28, 28)
for a 224 crop, channels = feature dims, dims 0–511 from ``layer2`` and 512–1023 from ``layer3``.

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
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.features.backbones import WeightsInfo, create_backbone, supports_zero_init_last, weights_tag
from bench.cache import file_sha256, stable_hash
from bench.errors import ConfigError
from bench.images import DECODING, FITS

FEATURE_VERSION = 2
"""Bump when the features produced for a given config change; part of :meth:`FeatureConfig.key`.

2: cache entries carry a CRC-32 trailer (:func:`bench.cache.save_npy`); images are decoded with their EXIF
orientation applied and float images scaled (:data:`bench.images.DECODING`)."""

_RESNET_LAYER_NAMES = re.compile(r"(resnet\d|wide_resnet|resnext|seresnet\d)")  # timm ResNet: act1, layer1..layer4


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the patch features of an image.

    Attributes:
        backbone: timm model name (``resnet50`` as the paper's code; ``wide_resnet50_2``, ``resnet18``...).
        weights: ``imagenet`` | ``random`` | a weights file path (see :mod:`bench.features.backbones`).
        zero_init_last: only for random weights (``None`` = False: no identity blocks, see backbones).
        layers: backbone stages to aggregate; the first sets the output grid.
        resize: shorter side after resizing (docs/method-notes.md §4.1).
        crop: center-crop side.
        patch_size: local neighbourhood (3 → 3×3, padding 1).
        pretrain_dim: each layer's patch vector is pooled to this (``MeanMapper``).
        target_dim: the stacked layers are pooled to this (``Aggregator``): the feature dim D.
        precision: ``fp32`` or ``bf16`` (backbone under bf16 autocast; opt-in).
        storage: dtype of cached feature files, ``fp32`` (default) or ``fp16``.
        init_seed: torch seed for random weights (ignored otherwise).
        image_fit: how an image becomes the square input (``crop`` | ``squash`` | ``letterbox``, see
            :class:`bench.images.Preprocess`); left out of :meth:`key` when ``crop`` so earlier caches stay valid.
    """

    backbone: str = "resnet50"
    weights: str = "imagenet"
    zero_init_last: bool | None = None
    layers: tuple[str, ...] = ("layer2", "layer3")
    resize: int = 256
    crop: int = 224
    patch_size: int = 3
    pretrain_dim: int = 1024
    target_dim: int = 1024
    precision: str = "fp32"
    storage: str = "fp32"
    init_seed: int = 0
    image_fit: str = "crop"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.storage not in ("fp32", "fp16"):
            raise ConfigError(f"feature storage must be 'fp32' or 'fp16', got {self.storage!r}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be a positive odd number, got {self.patch_size}")
        if not self.layers:
            raise ConfigError("at least one backbone layer is needed")
        if self.image_fit not in FITS:
            raise ConfigError(f"image fit must be one of {', '.join(FITS)}, got {self.image_fit!r} (--image-fit)")
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def effective_zero_init_last(self) -> bool | None:
        """What the backbone is built with: False for random ResNets unless set, None when meaningless."""
        if self.weights != "random" or not supports_zero_init_last(self.backbone):
            return None
        return bool(self.zero_init_last) if self.zero_init_last is not None else False

    def weights_identity(self) -> str:
        """What identifies the weights: a file's sha256, timm's default pretrained tag, or the random init."""
        if self.weights == "random":
            return f"random:seed={self.init_seed}:zero_init_last={self.effective_zero_init_last}"
        if self.weights == "imagenet":
            import timm

            try:
                cfg = timm.models.get_pretrained_cfg(self.backbone)
                tag = (cfg.hf_hub_id or cfg.url or "") if cfg is not None else ""
            except Exception:  # noqa: BLE001 - unknown names fail later in create_backbone with a clear message
                tag = ""
            return f"imagenet:{tag or self.backbone}:timm={timm.__version__}"
        return "file:" + file_sha256(weights_tag(self.weights))

    def key(self) -> str:
        """Stable hash of everything that changes the features (+ :data:`FEATURE_VERSION`, weights identity)."""
        d = asdict(self)
        d.pop("weights")
        d.pop("zero_init_last")
        d.pop("init_seed")
        if d["image_fit"] == "crop":  # the original pipeline: keys (and caches) from before the field are unchanged
            d.pop("image_fit")
        d.update(version=FEATURE_VERSION, weights=self.weights_identity(), decoding=DECODING)
        return stable_hash(d, 24)


def to_patches(x: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) grid → (N·h·w, D) patches in row-major order (``x.flatten(2).transpose(1, 2)``)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_patches(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`: (N·h·w, D) → (N, D, h, w) (a channels-last view when possible)."""
    return p.reshape(-1, h, w, p.shape[-1]).permute(0, 3, 1, 2)


def pool_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Windows of ``F.adaptive_avg_pool1d`` from n_in to n_out: output i averages [⌊i·n_in/n_out⌋, ⌈(i+1)·n_in/n_out⌉)."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def layer_pooling_map(layer: int, channels: int, k2: int, n_layers: int, pretrain_dim: int, target_dim: int) -> list[list[tuple[int, int, float]]]:
    """The linear map from one layer's unfolded patch vector (C·k², channel-major) to the D output dims.

    ``MeanMapper`` (C·k² → pretrain_dim) followed by this layer's share of ``Aggregator``
    (n_layers·pretrain_dim → target_dim), kept sparse.

    Returns:
        For each of the target_dim outputs, its terms (start, end, weight): weight × sum of inputs [start, end).
    """
    a_win = pool_windows(channels * k2, pretrain_dim)
    lo, hi = layer * pretrain_dim, (layer + 1) * pretrain_dim
    rows = []
    for s, e in pool_windows(n_layers * pretrain_dim, target_dim):
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
        pretrain_dim: per-layer pooled dim (1024).
        target_dim: output dim D (1024).
        precision: ``fp32`` or ``bf16`` (backbone autocast).
        fast: use the grouped-convolution form when the pooling windows allow it (False: always unfold +
            adaptive pooling; for tests).

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
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().to(memory_format=torch.channels_last)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.channels = list(channels)
        self.patch_size = patch_size
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim
        self.precision = precision
        k2 = patch_size * patch_size
        plans = [
            _grouped_plan(layer_pooling_map(i, c, k2, len(self.channels), pretrain_dim, target_dim), c, k2)
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
        """Backbone maps (float32) of (B, 3, H, W) images."""
        x = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            if self.precision == "bf16":
                with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                    feats = self.backbone(x)
            else:
                feats = self.backbone(x)
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
                for f in feats:
                    _, c, h, w = f.shape
                    u = F.unfold(f.contiguous(), self.patch_size, padding=pad).view(b, 1, c * self.patch_size**2, h, w)
                    y = F.adaptive_avg_pool3d(u, (self.pretrain_dim, h, w)).view(b, self.pretrain_dim, h, w)
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


def _out_indices(name: str, layers: Sequence[str], init_seed: int) -> list[int]:
    """timm ``features_only`` indices of the named layers."""
    if _RESNET_LAYER_NAMES.match(name) and all(re.fullmatch(r"layer[1-4]", layer) for layer in layers):
        return [int(layer[-1]) for layer in layers]  # feature_info: act1, layer1, ..., layer4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        probe, _ = create_backbone(name, "random", features_only=True)
    names = probe.feature_info.module_name()
    missing = [layer for layer in layers if layer not in names]
    if missing:
        raise ConfigError(f"backbone {name!r} has no feature layer(s) {missing}; available: {', '.join(names)}")
    return [names.index(layer) for layer in layers]


def build_extractor(config: FeatureConfig) -> tuple[PatchCoreExtractor, WeightsInfo]:
    """Build the extractor for ``config`` (weights through :func:`bench.features.backbones.create_backbone`).

    Returns:
        The extractor (eval mode, CPU) and what weights were loaded.
    """
    idx = _out_indices(config.backbone, config.layers, config.init_seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        backbone, info = create_backbone(
            config.backbone, config.weights, zero_init_last=config.zero_init_last, features_only=True, out_indices=tuple(idx)
        )
    extractor = PatchCoreExtractor(
        backbone, backbone.feature_info.channels(), config.patch_size, config.pretrain_dim, config.target_dim, config.precision
    )
    return extractor.eval(), info
