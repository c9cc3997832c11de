"""AnomalyNCD (Huang, Zhao, Wang, Zhou, Liu, Liu, Shen, "AnomalyNCD: Towards Novel Anomaly Class Discovery in
Industrial Scenarios", CVPR 2025, arXiv 2410.14379; code HUST-SLOW/AnomalyNCD, MIT), re-implemented from the
description in docs/tasks.md ("Anomaly class discovery": MEBin, crops, mask-guided representation learning).

1. **MEBin + crops** (:mod:`bench.discovery.mebin`, :mod:`bench.discovery.crops`): the set's anomaly maps (the
   harness's PatchCore or ``--maps``) are binarised per image; every image gives at most MEBin's count + 1
   anomaly-centred crops (the whole image when nothing is found), each with its mask crop and score.
2. **Mask-guided ViT** (:class:`MaskGuidedViT`): a timm Vision Transformer in whose last ``mask_layers`` blocks the
   class token may not attend to patch tokens whose patch-pooled mask is < 0.5 (it always attends to itself, so a
   crop without mask pixels has a class token that never looks at the patches). Only the last ``train_blocks``
   blocks train. The paper: DINO ViT-B/8, 9 masked blocks, 1 trained block.
3. **Heads** (:class:`Heads`): a projector MLP (E → 2048 → 2048 → 256, GELU) for the contrastive loss and
   ``n_head`` = 4 cosine classifiers (weight-normalised, norm fixed at 1) over K classes on the normalised class
   token.
4. **Loss** per step, on two augmented views of 32 crops (random 224 crop of the 256-resized crop, flips, quarter
   turns, colour jitter, Gaussian blur; the mask follows the geometry): for each head a self-distillation clustering
   loss, the cross-entropy of each view's student softmax(logits / 0.1) against the other view's sharpened teacher
   softmax(logits / τ_t) (τ_t from 0.07 down to 0.04 over the first 40 epochs, the reference's schedule), with
   *pseudo-label correction* (the teacher target is pulled towards cluster 0, "normal", with weight
   max(0, 0.5 − crop score): crops whose anomaly score is low are normal ones) plus 4 × (log K − entropy of the mean
   prediction) against collapse; and an InfoNCE loss between the two views' projections (temperature 1).
   Total = (1 − w) · (mean clustering loss + InfoNCE) with w = 0.3. The reference adds w · (cross-entropy +
   supervised contrastive loss) on a labelled *base* set of other anomaly classes; none is used here (docs/tasks.md
   calls the base set optional and it is not obtainable here), and unlike the reference, which silently skips every
   step whose batch lacks base crops (so without a base set it trains nothing), every step trains.
5. SGD (lr 0.003, momentum 0.9, weight decay 5e-5 except biases and norms), cosine decay to lr · 10⁻³ over the
   epochs; the head with the lowest clustering loss in the last epoch is used.
6. **Region merging** (:func:`bench.discovery.crops.merge_regions`): per crop softmax(logits / 0.1), crops of an
   image weighted by softmax(√(mask area in source pixels) / T), T = 100 on MVTec AD, 50 elsewhere; label = argmax.

On this harness's CPU the defaults are a *small, short* version: ``vit_tiny_patch16_224`` with random weights (no ViT
ImageNet or DINO weights can be downloaded here) and 5 epochs; every row and the run's printed notes say that it is not
the paper's pretrained DINO ViT-B/8 and 50 epochs. A user with the DINO weights runs the paper's configuration with
``--set vit=vit_base_patch8_224 --set vit_weights=PATH --set epochs=50`` (``vit_weights``, not ``--weights``: the
run's ``--weights`` belong to the PatchCore backbone that makes the maps). ``python -m bench perf anomalyncd``
measures what a step costs.

Shapes: crops (C, 3, S, S) + masks (C, 1, S, S) → class tokens (C, E) → logits n_head × (C, K) → image ids (N,).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.discovery.contract import Discoverer, DiscoverySet, register_discoverer
from bench.discovery.crops import CropImages, area_temperature, crop_masks, merge_regions, set_crops
from bench.discovery.mebin import RANGE_LOWS
from bench.errors import ConfigError, WeightsError

PAPER_VIT = "vit_base_patch8_224"
"""The architecture of the paper's DINO ViT-B/8 in timm."""
CROP_PCT = 0.875  # crops are resized to S / 0.875 (256 for S = 224) and cut to S, as the reference's transforms
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINO's (ImageNet) normalisation


@dataclass(frozen=True)
class AnomalyNCDConfig:
    vit: str = "vit_tiny_patch16_224"  # any timm ViT; the paper: vit_base_patch8_224 with DINO weights
    vit_weights: str = ""  # a local state-dict file (timm or DINO layout); "" = random init
    vit_img_size: int = 224
    vit_depth: int = 0  # 0 = the architecture's own depth (tests use a shallower ViT)
    mask_layers: int = 9  # the last N blocks use mask-guided attention
    train_blocks: int = 1  # the last N blocks train
    n_head: int = 4
    epochs: int = 5  # the paper: 50
    batch_size: int = 32
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 5e-5
    sup_weight: float = 0.3  # w: the clustering and InfoNCE terms get (1 - w)
    memax_weight: float = 4.0
    anomaly_thred: float = 0.5  # pseudo-label correction: weight max(0, thred - crop score); < 0 turns it off
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 40
    keep_extra: bool = True
    range_low: str = "set"
    area_temperature: float = 0.0  # 0 = the reference's (100 on MVTec AD, 50 elsewhere)

    def __post_init__(self) -> None:
        import timm

        if not timm.is_model(self.vit):
            raise ValueError(f"vit {self.vit!r} is not a timm model name (e.g. vit_tiny_patch16_224, {PAPER_VIT})")
        if self.vit_weights and not Path(self.vit_weights).expanduser().is_file():
            raise ValueError(f"vit_weights file not found: {self.vit_weights}")
        if min(self.vit_img_size, self.n_head, self.epochs, self.batch_size, self.train_blocks) < 1 or self.mask_layers < 0:
            raise ValueError("vit_img_size, n_head, epochs, batch_size and train_blocks must be ≥ 1, mask_layers ≥ 0")
        if self.range_low not in RANGE_LOWS:
            raise ValueError(f"range_low must be one of {', '.join(RANGE_LOWS)}")
        if self.lr <= 0 or not 0 <= self.sup_weight < 1:
            raise ValueError("lr must be > 0 and sup_weight in [0, 1)")


# ------------------------------------------------------------------------------------------------ the network
def build_vit(config: AnomalyNCDConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The timm ViT of ``config`` (random init, or ``vit_weights``) and a record of what was loaded.

    Raises:
        ConfigError: not a plain class-token ViT; WeightsError: a weights file that does not fit.
    """
    import timm

    from bench.cache import file_sha256

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": config.vit_img_size}
    if config.vit_depth:
        kwargs["depth"] = config.vit_depth
    torch.manual_seed(0)  # the init of the frozen blocks is part of the configuration, not of the run seed
    vit = timm.create_model(config.vit, **kwargs)
    plain = all(hasattr(vit, a) for a in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm"))
    if not plain or vit.cls_token is None or getattr(vit, "reg_token", None) is not None or getattr(vit, "no_embed_class", False):
        raise ConfigError(f"vit {config.vit!r}: AnomalyNCD needs a plain class-token Vision Transformer (e.g. "
                          f"vit_tiny_patch16_224, {PAPER_VIT}).")  # fmt: skip
    info: dict[str, Any] = {"name": config.vit, "img_size": config.vit_img_size, "depth": len(vit.blocks),
                            "embed_dim": int(vit.embed_dim), "paper_backbone": False}  # fmt: skip
    if config.vit_weights:
        path = Path(config.vit_weights).expanduser()
        info.update(weights=str(path), sha256=file_sha256(path), pretrained=True)
        load_vit_weights(vit, path)
        info["paper_backbone"] = config.vit == PAPER_VIT and not config.vit_depth
    else:
        info.update(weights="random", pretrained=False)
    if not info["paper_backbone"]:
        info["note"] = vit_note(config)
    return vit, info


def vit_note(config: AnomalyNCDConfig) -> str:
    """What a row of this configuration is, next to the paper's DINO ViT-B/8."""
    what = "RANDOM init (not pretrained)" if not config.vit_weights else f"weights {Path(config.vit_weights).name}"
    return (f"{config.vit} with {what}, {config.epochs} epoch(s): not the paper's pretrained DINO ViT-B/8 "
            "(vit_base_patch8_224) and 50 epochs; not comparable with its published numbers")  # fmt: skip


def load_vit_weights(vit: nn.Module, path: Path) -> None:
    """Load a timm-layout or DINO-layout ViT state dict (a DINO training checkpoint's ``teacher`` included)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise WeightsError(f"cannot read the ViT weights {path} ({type(exc).__name__}: {exc}).") from None
    for key in ("teacher", "model", "state_dict", "student"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items() if torch.is_tensor(v)}
    try:
        result = vit.load_state_dict(checkpoint_filter_fn(sd, vit), strict=False)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise WeightsError(f"the ViT weights {path} do not fit this configuration's ViT ({str(exc)[:300]}). Check "
                           "--set vit=... (the paper's DINO ViT-B/8 is vit_base_patch8_224).") from None
    missing = [k for k in result.missing_keys if not k.startswith("head")]
    if missing:
        raise WeightsError(f"the ViT weights {path} do not fit {type(vit).__name__} of this configuration: "
                           f"{len(missing)} missing key(s), e.g. {', '.join(missing[:4])}. Check --set vit=...")  # fmt: skip


class MaskGuidedViT(nn.Module):
    """A timm ViT whose class token attends only to masked-in patches in its last ``mask_layers`` blocks.

    Args:
        vit: a plain class-token timm VisionTransformer.
        mask_layers: how many of the last blocks are mask-guided.
        train_blocks: how many of the last blocks train (the rest is frozen and run without gradients).
    """

    def __init__(self, vit: nn.Module, mask_layers: int, train_blocks: int) -> None:
        super().__init__()
        self.vit = vit
        depth = len(vit.blocks)
        self.first_masked = depth - min(mask_layers, depth)
        self.first_trained = depth - min(train_blocks, depth)
        self.patch = int(vit.patch_embed.patch_size[0])
        for p in vit.parameters():
            p.requires_grad = False
        for blk in list(vit.blocks)[self.first_trained :]:
            for p in blk.parameters():
                p.requires_grad = True
        for p in vit.norm.parameters():
            p.requires_grad = True

    def attention_bias(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) mask in [0, 1] → (B, 1, 1 + n, 1 + n) additive bias: -1e9 where the class token (row 0) would
        attend a patch whose patch-pooled mask is < 0.5."""
        pooled = F.avg_pool2d(mask, self.patch).flatten(1)  # (B, n)
        keep = torch.cat([torch.ones_like(pooled[:, :1], dtype=torch.bool), pooled >= 0.5], dim=1)  # (B, 1 + n)
        n = keep.shape[1]
        bias = torch.zeros(mask.shape[0], 1, n, n, dtype=mask.dtype, device=mask.device)
        bias[:, 0, 0, :] = (~keep).to(mask.dtype) * -1e9
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images, (B, 1, S, S) masks → (B, E) class tokens (after the final norm)."""
        vit = self.vit
        bias = self.attention_bias(mask)
        with torch.set_grad_enabled(False):
            h = vit.patch_embed(x)
            h = torch.cat([vit.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + vit.pos_embed
            h = vit.norm_pre(vit.patch_drop(vit.pos_drop(h)))
            for i, blk in enumerate(list(vit.blocks)[: self.first_trained]):
                h = blk(h, attn_mask=bias) if i >= self.first_masked else blk(h)
        for i, blk in enumerate(list(vit.blocks)[self.first_trained :], start=self.first_trained):
            h = blk(h, attn_mask=bias) if i >= self.first_masked else blk(h)
        return vit.norm(h)[:, 0]


class Heads(nn.Module):
    """Projector MLP (E → 2048 → 2048 → 256, GELU; InfoNCE) and ``n_head`` cosine classifiers over K classes on the
    normalised class token (the reference's weight-normalised linear layers with the norm fixed at 1)."""

    def __init__(self, dim: int, k: int, n_head: int, hidden: int = 2048, bottleneck: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))  # fmt: skip
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.ParameterList([nn.Parameter(nn.Linear(dim, k, bias=False).weight.detach().clone()) for _ in range(n_head)])

    def forward(self, cls: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, E) → projections (B, 256), n_head × logits (B, K) (cosine similarities in [-1, 1])."""
        z = F.normalize(cls, dim=-1)
        return self.mlp(cls), [z @ F.normalize(w, dim=-1).T for w in self.prototypes]


# ------------------------------------------------------------------------------------------------ the losses
def info_nce(proj: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SimCLR's InfoNCE between two views: ``proj`` (2B, d) = view 1 then view 2; each row's positive is its twin."""
    z = F.normalize(proj, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def teacher_temperature(epoch: int, config: AnomalyNCDConfig) -> float:
    """The reference's schedule: linear from the warm-up to the final temperature over the warm-up epochs."""
    w = config.warmup_teacher_temp_epochs
    if epoch >= w:
        return config.teacher_temp
    return float(np.linspace(config.warmup_teacher_temp, config.teacher_temp, max(w, 1))[epoch])


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, t_temp: float, weights: torch.Tensor) -> torch.Tensor:
    """Self-distillation clustering loss with pseudo-label correction (module docstring, step 4).

    Args:
        student, teacher: (2B, K) logits of view 1 then view 2 (the teacher's are detached).
        t_temp: teacher temperature.
        weights: (2B,) correction weights pulling the target towards cluster 0.
    """
    target = F.softmax(teacher / t_temp, dim=-1)
    normal = torch.zeros_like(target)
    normal[:, 0] = 1.0
    target = (normal * weights[:, None] + target * (1 - weights[:, None])).detach()
    logp = F.log_softmax(student / 0.1, dim=-1)
    t1, t2 = target.chunk(2)
    s1, s2 = logp.chunk(2)
    return 0.5 * ((-t1 * s2).sum(-1).mean() + (-t2 * s1).sum(-1).mean())


def memax(student: torch.Tensor) -> torch.Tensor:
    """log K − entropy of the mean prediction softmax(student / 0.1): 0 when the clusters are used evenly."""
    p = F.softmax(student / 0.1, dim=1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum() + math.log(p.numel())


# ------------------------------------------------------------------------------------------------ augmentation
def augment(img: torch.Tensor, mask: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view of a batch (the reference's training transform, without sharpness and posterize).

    Args:
        img: (B, 3, R, R) float in [0, 1], R = size / 0.875; mask: (B, 1, R, R).
        size: output side S.

    Returns:
        normalised images (B, 3, S, S) and masks (B, 1, S, S).
    """
    b, r = img.shape[0], img.shape[-1]
    out_i, out_m = [], []
    for j in range(b):
        ox, oy = (int(torch.randint(0, r - size + 1, (1,), generator=g)) for _ in range(2))
        x, m = img[j, :, oy : oy + size, ox : ox + size], mask[j, :, oy : oy + size, ox : ox + size]
        if torch.rand(1, generator=g) < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        if torch.rand(1, generator=g) < 0.5:
            x, m = x.flip(-2), m.flip(-2)
        bright, contrast, sat = (float(lo + (hi - lo) * torch.rand(1, generator=g)) for lo, hi in ((0.6, 1.4), (0.6, 1.4), (0.6, 1.8)))
        x = (x * bright).clamp(0, 1)
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])
        x = ((x - grey.mean()) * contrast + grey.mean()).clamp(0, 1)
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = ((x - grey) * sat + grey).clamp(0, 1)
        k = int(torch.randint(0, 4, (1,), generator=g))
        x, m = torch.rot90(x, k, (-2, -1)), torch.rot90(m, k, (-2, -1))
        ks = int([9, 13, 17, 21, 25, 29, 33][int(torch.randint(0, 7, (1,), generator=g))] * size / 224) // 2 * 2 + 1
        sigma = float(0.1 + 1.9 * torch.rand(1, generator=g)) * size / 224
        if ks >= 3:
            t = torch.arange(ks, dtype=x.dtype) - ks // 2
            kern = torch.exp(-(t**2) / (2 * sigma**2))
            kern = kern / kern.sum()
            x = F.conv2d(F.pad(x[None], (ks // 2,) * 4, mode="reflect"), kern.view(1, 1, 1, -1).expand(3, 1, 1, ks), groups=3)
            x = F.conv2d(x, kern.view(1, 1, -1, 1).expand(3, 1, ks, 1), groups=3)[0]
        out_i.append(x)
        out_m.append(m)
    return normalise(torch.stack(out_i)), torch.stack(out_m)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def centre(img: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test view: the centre ``size`` crop (the reference's test transform)."""
    o = (img.shape[-1] - size) // 2
    return normalise(img[..., o : o + size, o : o + size]), mask[..., o : o + size, o : o + size]


# ------------------------------------------------------------------------------------------------ the method
@register_discoverer("anomalyncd", description="AnomalyNCD: MEBin crops, mask-guided ViT trained without labels, region merging")
class AnomalyNCD(Discoverer):
    """AnomalyNCD (Huang et al., CVPR 2025): see the module docstring for the algorithm and the CPU defaults."""

    Config = AnomalyNCDConfig

    @classmethod
    def reads(cls, config: AnomalyNCDConfig) -> set[str]:
        return {"maps", "bank"}

    @classmethod
    def notes(cls, config: AnomalyNCDConfig) -> list[str]:
        if config.vit_weights and config.vit == PAPER_VIT and not config.vit_depth and config.epochs >= 50:
            return []
        return [f"WARNING: anomalyncd uses {vit_note(config)}; every row records it (method_info.vit)."]

    def fit_predict(self, data: DiscoverySet) -> np.ndarray:
        cfg = self.config
        dev = self.ctx.device
        with self.ctx.timer("crops"):
            crops, self.crop_info = set_crops(data, "mebin", cfg.keep_extra, cfg.range_low)
        k = data.k
        s = cfg.vit_img_size
        r = int(s / CROP_PCT)
        with self.ctx.timer("crop_images"):
            imgs = CropImages(data, crops, r)
            img = torch.from_numpy(np.stack([imgs[i] for i in range(len(imgs))])).permute(0, 3, 1, 2).float().div_(255)
            msk = torch.from_numpy(crop_masks(crops, r))[:, None]
        scores = torch.tensor([c.score for c in crops], dtype=torch.float32)
        thred = cfg.anomaly_thred if data.includes_good else -1.0
        corr = (thred - scores).clamp_min(0) if thred >= 0 else torch.zeros_like(scores)

        vit, self.vit_info = build_vit(cfg)  # a random ViT is the same for every seed (part of the configuration)
        model = MaskGuidedViT(vit, cfg.mask_layers, cfg.train_blocks).to(dev)
        self.ctx.seed_torch("anomalyncd-heads")
        heads = Heads(int(vit.embed_dim), k, cfg.n_head).to(dev)
        params = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        opt = torch.optim.SGD([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                              momentum=cfg.momentum, weight_decay=cfg.weight_decay)  # fmt: skip
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 1e-3)
        g = self.ctx.torch_generator("anomalyncd-batches")
        w = cfg.sup_weight
        curves: dict[str, list[float]] = {"loss": [], "cluster": [], "contrastive": []}
        step_seconds: list[float] = []
        head_loss = np.zeros(cfg.n_head)
        with self.ctx.timer("train"):
            for epoch in range(cfg.epochs):
                model.train()
                heads.train()
                t_temp = teacher_temperature(epoch, cfg)
                order = torch.randperm(len(crops), generator=g)
                sums = {key: 0.0 for key in curves}
                per_head = np.zeros(cfg.n_head)
                n_steps = 0
                for b0 in range(0, len(crops), cfg.batch_size):
                    t0 = time.perf_counter()
                    idx = order[b0 : b0 + cfg.batch_size]  # the last batch may be smaller (drop_last=False)
                    v1, m1 = augment(img[idx], msk[idx], s, g)
                    v2, m2 = augment(img[idx], msk[idx], s, g)
                    x, m = torch.cat([v1, v2]).to(dev), torch.cat([m1, m2]).to(dev)
                    proj, logits = heads(model(x, m))
                    weights = torch.cat([corr[idx], corr[idx]]).to(dev)
                    cluster = torch.zeros((), device=dev)
                    for h, lg in enumerate(logits):
                        lh = distill_loss(lg, lg.detach(), t_temp, weights) + cfg.memax_weight * memax(lg)
                        per_head[h] += lh.item()
                        cluster = cluster + lh
                    cluster = cluster / len(logits)
                    contrastive = info_nce(proj)
                    loss = (1 - w) * cluster + (1 - w) * contrastive
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    for key, v in (("loss", loss), ("cluster", cluster), ("contrastive", contrastive)):
                        sums[key] += v.item()
                    n_steps += 1
                    step_seconds.append(time.perf_counter() - t0)
                sched.step()
                for key in curves:
                    curves[key].append(round(sums[key] / max(n_steps, 1), 5))
                head_loss = per_head / max(n_steps, 1)
        best = int(np.argmin(head_loss))
        with self.ctx.timer("predict"), torch.no_grad():
            model.eval()
            heads.eval()
            probs = []
            for b0 in range(0, len(crops), 64):
                xi, mi = centre(img[b0 : b0 + 64], msk[b0 : b0 + 64], s)
                probs.append(F.softmax(heads(model(xi.to(dev), mi.to(dev)))[1][best] / 0.1, dim=-1).cpu())
            p = torch.cat(probs).numpy()
        t = cfg.area_temperature or area_temperature(data.dataset)
        self.ctx.log.update(epoch_loss=curves["loss"], epoch_cluster_loss=curves["cluster"],
                            epoch_contrastive_loss=curves["contrastive"])  # fmt: skip
        self.train_info = {"steps": len(step_seconds), "seconds_per_step": round(float(np.median(step_seconds)), 4) if step_seconds else None,
                           "steps_per_epoch": math.ceil(len(crops) / cfg.batch_size), "head": best,
                           "head_cluster_loss": [round(float(v), 5) for v in head_loss], "base_set": None,
                           "area_temperature": t, "pseudo_label_correction": thred >= 0}  # fmt: skip
        return merge_regions(p, crops, len(data), t)

    def extra_info(self) -> dict[str, Any]:
        return {"vit": getattr(self, "vit_info", None), "crops": getattr(self, "crop_info", None),
                "training": getattr(self, "train_info", None)}  # fmt: skip
