"""COFT-AD-style detector: contrastive fine-tuning on the k shots, Mahalanobis scoring. A RECONSTRUCTION.

COFT-AD is Liao et al., "COFT-AD: COntrastive Fine-Tuning for Few-Shot Anomaly Detection", IEEE TIP 33, 2024
(arXiv 2402.18998; the issue calls it "Few-shot anomaly detection on industrial images through contrastive
fine-tuning"). **No implementation of it is public and its loss forms, temperatures, weights, augmentations,
schedule and numbers are not known to us** (docs/tasks.md §A.2). What is known: an ImageNet-pretrained backbone
is fine-tuned contrastively on the k normal images; *cross-instance positive pairs* (views of different normal
images pulled together) tighten the normal cluster; *negative pairs* separate normals from synthesised anomalies;
the score is a distance to the normal embeddings (secondary summaries: L = L_con + λ_PP·L_PP + λ_NP·L_NP, a
Mahalanobis distance to a Gaussian of augmented embeddings of the shots, a ResNet-18 backbone). This file is the
reconstruction of docs/tasks.md §A.2, every setting marked [guess] below a documented default with a switch. Its
numbers are ours, not the paper's, and must never be reported as COFT-AD's.

Algorithm (shapes for k shots, V views, M negatives, D = the pooled embedding's size, E = 128):

1. **Network** [guess: which layers train]. The run's pretrained backbone (``--backbone``; EfficientNet-Lite0 by
   default, the paper reportedly a ResNet-18), whole, pooled over space: h = pool(f(x)) (D,) (``pooling`` ``mean`` =
   global average pooling, §A.2 item 1). Only the last ``train_stages`` = 1 stage and the head convolution are
   fine-tuned (Lite0: ``blocks.6`` and ``conv_head``, 1.0 M weights; ResNets: ``layer4``); the frozen
   prefix's output of every picture is computed once and cached (``bench/features/embed.py``), which is what makes 200
   steps affordable on a CPU. ``train_stages`` = all stages is full fine-tuning. Projection head g: Linear(D, D) →
   ReLU → Linear(D, E), z = g(h)/‖g(h)‖. BatchNorm in eval mode throughout [guess: 2k views give noise
   statistics].
2. **Batch** [guess]. Each step: V = ``train_views`` = 2 views of each shot (mild augmentations: a crop of 0.85–1
   of the area, ±10° rotation, brightness/contrast ±10 %, no flips or hue; rotation off for transistor), drawn from
   the shot's ``views`` = 32 pictures, and M = ``negatives_per_shot``·k = 2k synthetic anomalies drawn from a pool of
   ``negative_pool`` = 8 per shot, made by the project's pseudo-defect generator (DRAEM-style Perlin masks and
   textures pasted into the shot, ``bench.datasets.pseudo``; procedural textures unless ``--textures``). Normals
   (k·V, E), negatives (M, E).
3. **Losses** on cosine similarities s/τ, τ = ``temperature`` = 0.1 [guess] (:func:`contrastive_losses`):
   L_con = NT-Xent between the views of the same shot (the denominator runs over the other normal views);
   L_PP = supervised-contrastive term whose positives for a normal view are the views of the *other* shots (same
   denominator; zero at k = 1); L_NP = for each normal anchor, −log(Σ_pos e^{s/τ} / (Σ_pos e^{s/τ} +
   Σ_neg e^{s/τ})), positives = every other normal view, negatives = the pseudo-anomalies. L = L_con + λ_PP·L_PP +
   λ_NP·L_NP with λ_PP = λ_NP = 1 [guess]. Negatives enter L_NP only [guess], so ``lambda_np=0`` removes them (none
   is generated then, and the row says ``synthetic_negatives: false``).
4. **Optimisation** [guess]: Adam, lr 1e-4, ``steps`` full-batch steps, seeded (head init, batch draws).
5. **Score**: the 32 pictures of each shot are embedded by the fine-tuned network, a Gaussian is fitted to these
   k·32 embeddings (mean, Ledoit–Wolf covariance), and a test image's score is its Mahalanobis distance. Which
   embedding is scored is unknown; ``score_space`` = ``h`` (the backbone's pooled output, as contrastive anomaly
   detectors usually score, and so that ``steps=0`` is exactly the ``gaussian`` detector) or ``z`` (the head's).

Ablations (docs/tasks.md §A.2 item 3), as options and registered variants: ``coft-ad-no-pp`` (λ_PP = 0: no
cross-instance term), ``coft-ad-no-neg`` (λ_NP = 0: no negatives), ``coft-ad-frozen`` (steps = 0: no fine-tuning,
the same scores as ``gaussian``). A known failure mode of contrastive fine-tuning of pretrained features is
collapse or poor conditioning (mean-shifted contrastive loss, arXiv 2106.03844): report the frozen row beside it.

Default schedule: ``steps`` = 200 as docs/tasks.md guesses. It was affordable because only the tail trains (see the
README's detection section for the measured time per k on our 2-core CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.detection.detector import Detector, register_detector
from bench.features.embed import POOLINGS, Embedder, Gaussian, ViewParams, shared_embedder
from bench.seeding import numpy_rng


@dataclass(frozen=True)
class CoftAdConfig:
    steps: int = 200  # full-batch Adam steps [guess]; 0 = no fine-tuning
    lr: float = 1e-4  # [guess]
    temperature: float = 0.1  # τ [guess]
    lambda_pp: float = 1.0  # cross-instance positive term [guess]; 0 = ablation
    lambda_np: float = 1.0  # negative-pair term [guess]; 0 = ablation (no pseudo anomalies at all)
    train_stages: int = 1  # last backbone stages fine-tuned with the head conv [guess]; CPU cost grows fast with it
    head_dim: int = 128  # E, the projection's output [guess]
    train_views: int = 2  # V views of each shot per step [guess]
    negatives_per_shot: int = 2  # M = 2k negatives per step [guess]
    negative_pool: int = 8  # pseudo anomalies made per shot, the steps draw from them
    views: int = 32  # N_A pictures per shot for the Gaussian (and the pool of the training views)
    pooling: str = "mean"  # mean (global average pooling) | max | meanmax
    score_space: str = "h"  # h (backbone, pooled) | z (projection head)
    pseudo_mask: str = "perlin"  # perlin | polygon (pseudo-defect masks)
    pseudo_seed: int = 0  # the pseudo images are the same for every run seed
    crop_scale: float = 0.85
    rotate_deg: float = 10.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("steps must be ≥ 0, lr and temperature > 0")
        if self.lambda_pp < 0 or self.lambda_np < 0:
            raise ValueError("lambda_pp and lambda_np must be ≥ 0")
        if self.train_views < 2 or self.views < self.train_views:
            raise ValueError(f"need 2 ≤ train_views ≤ views, got train_views={self.train_views}, views={self.views}")
        if self.negatives_per_shot < 1 or self.negative_pool < 1 or self.head_dim < 1 or self.train_stages < 0:
            raise ValueError("negatives_per_shot, negative_pool and head_dim must be ≥ 1, train_stages ≥ 0")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.score_space not in ("h", "z"):
            raise ValueError(f"score_space must be h or z, got {self.score_space!r}")
        if self.score_space == "z" and not self.trains:
            raise ValueError("score_space=z needs fine-tuning (steps > 0, train_stages > 0): the head is trained only then")
        if self.pseudo_mask not in ("perlin", "polygon"):
            raise ValueError(f"pseudo_mask must be perlin or polygon, got {self.pseudo_mask!r}")
        ViewParams(self.crop_scale, self.rotate_deg, self.jitter)

    @property
    def trains(self) -> bool:
        return self.steps > 0 and self.train_stages > 0

    @property
    def negatives(self) -> bool:
        return self.trains and self.lambda_np > 0

    def view_params(self, category: str) -> ViewParams:
        return ViewParams(self.crop_scale, self.rotate_deg, self.jitter).for_category(category)


def contrastive_losses(z: torch.Tensor, z_neg: torch.Tensor | None, temperature: float) -> dict[str, torch.Tensor]:
    """The three losses of docs/tasks.md §A.2 item 3 on L2-normalised embeddings.

    Args:
        z: (k, V, E) normal views, shot-major.
        z_neg: (M, E) pseudo anomalies, or ``None``.
        temperature: τ.

    Returns:
        ``con``, ``pp``, ``np`` scalar losses (means over the anchors that have positives; 0 where none has:
        ``pp`` at k = 1, ``np`` without negatives).
    """
    k, v, e = z.shape
    n = k * v
    flat = z.reshape(n, e)
    s = flat @ flat.T / temperature  # (n, n)
    shot = torch.arange(k, device=z.device).repeat_interleave(v)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    same = (shot[:, None] == shot[None, :]) & ~eye
    other = shot[:, None] != shot[None, :]
    log_den = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)  # over every other normal view

    def supcon(pos: torch.Tensor) -> torch.Tensor:
        has = pos.any(1)
        if not has.any():
            return s.new_zeros(())
        log_prob = s - log_den[:, None]
        per_anchor = -(log_prob * pos).sum(1) / pos.sum(1).clamp(min=1)
        return per_anchor[has].mean()

    out = {"con": supcon(same), "pp": supcon(other)}
    if z_neg is None or len(z_neg) == 0 or n < 2:
        out["np"] = s.new_zeros(())
    else:
        pos = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)  # log Σ_pos e^{s/τ}
        neg = torch.logsumexp(flat @ z_neg.T / temperature, dim=1)  # log Σ_neg e^{s/τ}
        out["np"] = (torch.logaddexp(pos, neg) - pos).mean()
    return out


class ProjectionHead(nn.Module):
    """g: Linear(D, D) → ReLU → Linear(D, E); :meth:`forward` returns z = g(h)/‖g(h)‖ (B, E)."""

    def __init__(self, dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)


_TEXTURES: dict[tuple[str, int], Any] = {}


def textures_for(path: str | None, seed: int) -> Any:
    """The pseudo-defect texture bank (DTD folder or procedural), loaded once per process."""
    from bench.datasets.pseudo.textures import load_textures

    key = (str(path), seed)
    if key not in _TEXTURES:
        _TEXTURES[key] = load_textures(Path(path) if path else None, seed=seed)
    return _TEXTURES[key]


@register_detector("coft-ad", description="COFT-AD-style reconstruction: contrastive fine-tuning on the shots + Mahalanobis")
@register_detector("coft-ad-no-pp", overrides={"lambda_pp": 0.0}, description="coft-ad without the cross-instance term (λ_PP = 0)")
@register_detector("coft-ad-no-neg", overrides={"lambda_np": 0.0}, description="coft-ad without pseudo-anomaly negatives (λ_NP = 0)")
@register_detector("coft-ad-frozen", overrides={"steps": 0}, description="coft-ad without fine-tuning (= gaussian)")
class CoftAD(Detector):
    """COFT-AD-style reconstruction (docs/tasks.md §A.2): contrastive fine-tuning on the k shots, Mahalanobis score."""

    Config = CoftAdConfig
    config: CoftAdConfig

    @classmethod
    def uses_synthetic_negatives(cls, config: Any) -> bool:
        return bool(config.negatives)

    def embedder(self) -> Embedder:
        ctx, cfg = self.ctx, self.config
        stages = cfg.train_stages if cfg.trains else 0
        return shared_embedder(ctx.features.config, ctx.device, ctx.cache_root, stages, cfg.pooling)

    def fit(self, normal_paths: Sequence[str]) -> None:
        cfg, ctx = self.config, self.ctx
        emb = self.embedder()
        self.stats0 = dict(emb.stats)
        shots = list(normal_paths)
        k = len(shots)
        items = emb.view_items(shots, cfg.views, cfg.view_params(ctx.category))  # (k·views), shot-major
        self.tail = None
        self.head = None
        self.log: dict[str, Any] = {"steps": 0}
        if cfg.trains:
            with ctx.timer("prefix"):
                views = emb.prefix_outputs(items)  # (k·views, C', h', w')
                views = views.view(k, cfg.views, *views.shape[1:])
                negs = self.negative_prefixes(emb, shots) if cfg.negatives else None
            with ctx.timer("finetune"):
                self.finetune(emb, views, negs)
        with ctx.timer("embed_shots"):
            self.gaussian = Gaussian().fit(self.embed(emb, items))
        self.n_fit = k * cfg.views

    def negative_prefixes(self, emb: Embedder, shots: list[str]) -> torch.Tensor:
        """(k·negative_pool, C', h', w') prefix outputs of the pseudo anomalies made from the shots (cached).

        Per shot, ``negative_pool`` pseudo classes (textures) drawn from a generator seeded by the shot's content
        and ``pseudo_seed``: the same pictures for that shot in every job, k and seed.
        """
        from bench.datasets.pseudo.generator import PseudoConfig, PseudoDefectGenerator

        cfg, ctx = self.config, self.ctx
        textures = textures_for(ctx.textures, cfg.pseudo_seed)
        out = []
        for p in shots:
            gen = PseudoDefectGenerator([p], textures, ctx.category, PseudoConfig(mask=cfg.pseudo_mask), seed=cfg.pseudo_seed)
            rng = numpy_rng(cfg.pseudo_seed, "coft-ad-negatives", emb.content(p))
            classes = rng.choice(gen.n_classes, cfg.negative_pool, replace=gen.n_classes < cfg.negative_pool).tolist()
            keys = [gen.content_key(c, 0) for c in classes]
            out.append(emb.prefix_outputs(emb.array_items(lambda i, g=gen, c=classes: g.image(c[i], 0)[0], keys)))
        return torch.cat(out)

    def finetune(self, emb: Embedder, views: torch.Tensor, negs: torch.Tensor | None) -> None:
        """``steps`` Adam steps of the tail and the head on the losses of :func:`contrastive_losses`."""
        cfg, ctx = self.config, self.ctx
        k = views.shape[0]
        ctx.seed_torch("coft-ad-head")
        self.tail = emb.trainable_tail()
        self.head = ProjectionHead(emb.dim, cfg.head_dim).to(ctx.device)
        params = [p for p in self.tail.parameters() if p.requires_grad] + list(self.head.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        rng = ctx.rng("coft-ad-batches")
        m = cfg.negatives_per_shot * k
        curves: dict[str, list[float]] = {"loss": [], "con": [], "pp": [], "np": []}
        from tqdm import tqdm

        probe_x = views[:, : cfg.train_views].flatten(0, 1)  # a fixed batch: the first views and negatives
        probe_n = negs[:m] if negs is not None else None
        before = self.probe(probe_x, probe_n, k)
        bar = tqdm(range(cfg.steps), desc=f"coft-ad {ctx.category} k={k} seed={ctx.seed}", unit="step", leave=False,
                   disable=None, mininterval=2.0)  # fmt: skip
        for _ in bar:
            pick = np.stack([rng.choice(cfg.views, cfg.train_views, replace=False) for _ in range(k)])
            x = views[torch.arange(k)[:, None], torch.from_numpy(pick)].flatten(0, 1)  # (k·V, C', h', w')
            if negs is not None:
                ni = torch.from_numpy(rng.choice(len(negs), m, replace=len(negs) < m))
                x = torch.cat([x, negs[ni]])
            z = self.head(self.tail(x))
            zn = z[: k * cfg.train_views].view(k, cfg.train_views, -1)
            parts = contrastive_losses(zn, z[k * cfg.train_views :] if negs is not None else None, cfg.temperature)
            loss = parts["con"] + cfg.lambda_pp * parts["pp"] + cfg.lambda_np * parts["np"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curves["loss"].append(loss.detach().item())
            for name in ("con", "pp", "np"):
                curves[name].append(parts[name].detach().item())
        bar.close()
        every = max(1, cfg.steps // 20)
        self.log = {"steps": cfg.steps, "every": every, **{n: [round(v, 5) for v in c[::every]] for n, c in curves.items()},
                    "final": {n: round(c[-1], 5) for n, c in curves.items()},
                    "probe": {"before": before, "after": self.probe(probe_x, probe_n, k)}}  # fmt: skip
        ctx.log["finetune"] = self.log

    @torch.no_grad()
    def probe(self, x: torch.Tensor, negs: torch.Tensor | None, k: int) -> dict[str, float]:
        """Mean cosine similarities in z of a fixed batch: views of the same shot, views of different shots, and
        normal views against pseudo anomalies (what the losses pull together and push apart)."""
        z = self.head(self.tail(x)).view(k, -1, self.config.head_dim)
        v = z.shape[1]
        flat = z.flatten(0, 1)
        sim = flat @ flat.T
        shot = torch.arange(k, device=z.device).repeat_interleave(v)
        same = (shot[:, None] == shot[None, :]) & ~torch.eye(len(flat), dtype=torch.bool, device=z.device)
        other = shot[:, None] != shot[None, :]
        out = {"same_shot": float(sim[same].mean()) if same.any() else float("nan"),
               "other_shots": float(sim[other].mean()) if other.any() else float("nan")}  # fmt: skip
        if negs is not None and len(negs):
            out["negatives"] = float((flat @ self.head(self.tail(negs)).T).mean())
        return {key: round(val, 5) for key, val in out.items()}

    def embed(self, emb: Embedder, items: Sequence[Any]) -> np.ndarray:
        """(N, D) h, or (N, E) z with ``score_space=z``, of ``items`` through the (fine-tuned) network."""
        if self.config.score_space == "h" or self.head is None:
            return emb.pooled(items, self.tail)
        h = torch.from_numpy(emb.pooled(items, self.tail)).to(self.ctx.device)
        with torch.no_grad():
            return self.head(h).cpu().numpy()

    def score(self, paths: Sequence[str]) -> np.ndarray:
        emb = self.embedder()
        with self.ctx.timer("embed_test"):
            x = self.embed(emb, emb.image_items(list(paths)))
        return self.gaussian.score(x).astype(np.float32)

    def extra_info(self) -> dict[str, Any]:
        emb = self.embedder()
        return {"embedding": emb.record(), "n_fit": self.n_fit, "shrinkage": round(self.gaussian.shrinkage, 5),
                "embed_cache": emb.stats_since(self.stats0), "finetune_final": self.log.get("final"), "reconstruction": True}  # fmt: skip
