"""Cheap reference baselines on pooled PatchCore features: k-NN and a logistic-regression probe.

Neither is in the paper (Liu et al., arXiv 2406.05645); they answer "how much do the trained heads add over a
standard few-shot probe on the same features?" and run in seconds. Each image is the spatial mean (or max) of
its (D, H, W) grid of raw PatchCore features f or residuals f − NN_bank(f) (paper Eq. 2), as ``protonet``.

* ``knn-residual`` (and ``knn``): k nearest support images by cosine similarity (k = 1 by default; Snell et
  al.'s ProtoNet without averaging). Score of class c = the number of the k neighbours in c, plus 10⁻³ × the best
  similarity to c (breaks ties, and makes k = 1 rank all classes by their nearest support image).
* ``logreg`` / ``logreg-residual``: scikit-learn ``LogisticRegression`` (L2, lbfgs) on standardised pooled features
  (the scaler is fitted on the support only), ``random_state`` drawn from the run seed's ``logreg`` stream;
  scores = class probabilities (Q, C). A linear-probe baseline in the style of Tian et al., ECCV 2020.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from bench.method import Method, SupportSet, register_method
from bench.methods.protonet import pooled_features


def _check(features: str, pool: str) -> None:
    if features not in ("raw", "residual"):
        raise ValueError(f"features must be 'raw' or 'residual', got {features!r}")
    if pool not in ("mean", "max"):
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")


@dataclass(frozen=True)
class KNNConfig:
    features: str = "residual"  # "residual" | "raw"
    pool: str = "mean"  # "mean" | "max"
    k: int = 1

    def __post_init__(self) -> None:
        _check(self.features, self.pool)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@register_method("knn-residual", description="k-NN (k=1, cosine) on pooled PatchCore residuals (training-free)")
@register_method("knn", overrides={"features": "raw"}, description="k-NN (k=1, cosine) on pooled raw features")
class KNN(Method):
    """Cosine k-nearest-neighbour classifier over the support images."""

    Config = KNNConfig

    def _embed(self, paths: Sequence[str]) -> torch.Tensor:
        x = pooled_features(self, paths, self.config.features, self.config.pool)
        return torch.nn.functional.normalize(x, dim=1)

    def fit(self, support: SupportSet) -> None:
        self.x = self._embed(support.paths)  # (S, D)
        self.y = torch.tensor(support.labels)
        self.n_classes = support.n_classes

    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        return knn_scores(self._embed(query_paths) @ self.x.T, self.y, self.n_classes, self.config.k)


def knn_scores(sim: torch.Tensor, y: torch.Tensor, n_classes: int, k: int) -> np.ndarray:
    """(Q, C) k-NN scores from query–support similarities ``sim`` (Q, S) and support labels ``y`` (S,): the votes
    of the k most similar supports plus 10⁻³ × the best similarity to each class (module docstring; ``knn`` and
    ``region-knn``)."""
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Q, k)
    votes = torch.zeros(len(sim), n_classes).scatter_add_(1, y[top], torch.ones(top.shape))
    best = torch.full((len(sim), n_classes), -1.0)
    best = best.scatter_reduce(1, y.expand(len(sim), -1), sim, reduce="amax", include_self=True)
    return (votes + 1e-3 * best).numpy()


@dataclass(frozen=True)
class LogRegConfig:
    features: str = "raw"  # "raw" | "residual"
    pool: str = "mean"  # "mean" | "max"
    C: float = 1.0  # inverse L2 strength (scikit-learn's C)
    max_iter: int = 1000

    def __post_init__(self) -> None:
        _check(self.features, self.pool)
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")


@register_method("logreg", description="logistic-regression probe on standardised pooled raw PatchCore features")
@register_method(
    "logreg-residual", overrides={"features": "residual"}, description="logistic-regression probe on pooled residuals"
)
class LogReg(Method):
    """Linear probe: StandardScaler + LogisticRegression fitted on the n-shot support."""

    Config = LogRegConfig

    def fit(self, support: SupportSet) -> None:
        x = pooled_features(self, support.paths, self.config.features, self.config.pool)
        self.model = fit_probe(self, x, support.labels, self.config.C, self.config.max_iter)
        self.n_classes = support.n_classes

    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        x = pooled_features(self, query_paths, self.config.features, self.config.pool)
        return probe_scores(self.model, x, self.n_classes)


def fit_probe(method: Method, x: torch.Tensor, labels: Sequence[int], C: float, max_iter: int) -> Any:
    """The linear probe of ``logreg`` and ``region-logreg``: StandardScaler + LogisticRegression (L2, lbfgs) fitted on
    the support's (N, D) features, ``random_state`` from the run seed's ``logreg`` stream."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = int(method.ctx.rng("logreg").integers(2**31 - 1))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with method.ctx.timer("finetune"):
        model.fit(x.numpy().astype(np.float64), np.asarray(labels))
    return model


def probe_scores(model: Any, x: torch.Tensor, n_classes: int) -> np.ndarray:
    """(Q, C) class probabilities of a :func:`fit_probe` model (every class has support items, but stay explicit)."""
    proba = model.predict_proba(x.numpy().astype(np.float64))
    out = np.zeros((len(proba), n_classes))
    out[:, model.classes_] = proba
    return out
