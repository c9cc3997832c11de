"""The paper's trained classifiers (RelationNet baseline, contrastive method) and the cheap baselines.

Pure torch checks run on random tensors with tiny shapes; the end-to-end checks go through the real runner on
``synthetic-tiny`` with a random ResNet-18 and a handful of pretraining episodes.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.method import get_method
from bench.methods._pretrain import PretrainBatch, apply_layout, make_adam
from bench.methods.contrastive import (
    ContrastiveEncoder,
    contrastive_episode_loss,
    finetune_contrastive,
    info_nce_logits,
)
from bench.methods.relationnet import RelationHead, finetune_relation, relation_episode_loss, weighted_bce

D, H, W = 6, 3, 3


def _enc(**kw: Any) -> ContrastiveEncoder:
    torch.manual_seed(0)
    return ContrastiveEncoder(D, H, W, hidden=8, mid=4, embed_dim=5, **kw)


def _head() -> RelationHead:
    torch.manual_seed(0)
    return RelationHead(D, H, W, hidden=8, mid=4, fc_dim=5)


def _batch(g: int = 2, k: int = 4, q: int = 3, seed: int = 1) -> PretrainBatch:
    gen = torch.Generator().manual_seed(seed)
    return PretrainBatch(torch.randn(g, k, D, H, W, generator=gen), torch.randn(q, D, H, W, generator=gen),
                         torch.randint(0, k, (q,), generator=gen))  # fmt: skip


# ----------------------------------------------------------------------------------------------- models


def test_encoder_shapes_init_and_every_parameter_trains() -> None:
    torch.manual_seed(0)
    big = ContrastiveEncoder(256, 4, 4)  # paper widths 256/128/128 on a small grid
    assert big.conv1.weight.shape == (256, 256, 1, 1) and big.conv2.weight.shape == (128, 256, 1, 1)
    assert big.fc.weight.shape == (128, 128 * 16)
    for m, fan_in in ((big.conv1, 256), (big.conv2, 256), (big.fc, 128 * 16)):  # Kaiming normal: std sqrt(2/fan_in)
        assert abs(m.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.05
    out = big(torch.randn(3, 256, 4, 4))
    assert out.shape == (3, 128) and (out >= 0).all()
    enc = _enc()
    enc(torch.randn(4, D, H, W)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())  # no dead layers


@pytest.mark.parametrize("chunk_bytes", [1, 10**9])  # one support per chunk; all pairs in one chunk
def test_relation_head_pairs_equal_explicit_concat_values_and_gradients(monkeypatch, chunk_bytes: int) -> None:
    import bench.methods.relationnet as rn

    monkeypatch.setattr(rn, "PAIR_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(5)
    pattern = 2 * torch.randn(1, D, H, W)  # a spatial pattern both halves share: BatchNorm's variance has a cross term
    s, q = torch.randn(3, D, H, W) + pattern + 0.5, torch.randn(4, D, H, W) + pattern - 0.3
    s_cl, q_cl = (t.contiguous(memory_format=torch.channels_last) for t in (s, q))
    pairs = torch.cat([s.repeat_interleave(4, 0), q.repeat(3, 1, 1, 1)], dim=1)  # support-major, (12, 2D, H, W)
    for train in (True, False):
        a, b = _head(), _head()
        a.train(train), b.train(train)
        if not train:  # eval mode reads the running statistics: make them non-trivial
            for bn in (a.bn1, a.bn2):
                bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
            b.load_state_dict(a.state_dict())
        la, lb = a.forward_pairs(s_cl, q_cl), b(pairs).view(3, 4)
        assert la.shape == (3, 4)
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-4)
        if train:
            la.pow(2).sum().backward()
            lb.pow(2).sum().backward()
            scale = max(p.grad.abs().max().item() for p in b.parameters())  # float32 rounding, at the gradients' scale
            for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
                torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5 * scale, rtol=1e-4, msg=name)
            for bn in ("bn1", "bn2"):  # BatchNorm2d's running-statistics updates, done by hand
                for name, ba in getattr(a, bn).named_buffers():
                    torch.testing.assert_close(ba, getattr(getattr(b, bn), name), atol=1e-5, rtol=1e-4, msg=bn + name)
    inputs = [t.clone().requires_grad_() for t in (s_cl, q_cl)]  # gradients reach the grids too
    _head().forward_pairs(*inputs).pow(2).sum().backward()
    explicit = [t.clone().requires_grad_() for t in (s, q)]
    _head()(torch.cat([explicit[0].repeat_interleave(4, 0), explicit[1].repeat(3, 1, 1, 1)], 1)).pow(2).sum().backward()
    for x, y in zip(inputs, explicit):
        torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=1e-4)
    head = _head()
    assert head.conv1.weight.shape == (8, 2 * D, 1, 1) and isinstance(head.bn3, nn.BatchNorm1d)
    assert ((torch.sigmoid(head.eval()(pairs)) > 0) & (torch.sigmoid(head(pairs)) < 1)).all()


def test_raw_reshape_layout_reproduces_the_code() -> None:
    x = torch.randn(2, D, H, W)
    flat = x.permute(0, 2, 3, 1).reshape(2, H * W, D)  # the code's (H·W patches × D dims) per image
    assert torch.equal(apply_layout(x, "raw_reshape"), flat.reshape(2, -1).reshape(2, D, H, W))
    assert torch.equal(apply_layout(x, "proper"), x)


# ----------------------------------------------------------------------------------------------- losses


def test_info_nce_matches_manual_computation() -> None:
    b = _batch()
    enc = _enc()
    loss, acc = contrastive_episode_loss(enc, b, 0.07)
    with torch.no_grad():
        k = enc(b.keys.flatten(0, 1)).view(2, 4, -1)
    q = enc(b.queries)
    rows, target = [], []
    for g in range(2):  # group-major rows: (G·Q) × K
        for i in range(3):
            rows.append(torch.stack([F.cosine_similarity(q[i], k[g, c], dim=0) / 0.07 for c in range(4)]))
            target.append(int(b.labels[i]))
    logits = torch.stack(rows)
    manual = -torch.log_softmax(logits, 1)[torch.arange(6), torch.tensor(target)].mean()
    torch.testing.assert_close(loss, manual, atol=1e-5, rtol=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == torch.tensor(target)).float().mean()))
    assert info_nce_logits(q, k, 0.07).shape == (6, 4) and info_nce_logits(q, k[0], 0.07).shape == (3, 4)


def test_keys_are_detached() -> None:
    b = _batch()
    enc = _enc()
    loss, _ = contrastive_episode_loss(enc, b, 0.07)
    grads = torch.autograd.grad(loss, list(enc.parameters()))
    with torch.no_grad():
        k = enc(b.keys.flatten(0, 1)).view(2, 4, -1)
    manual = F.cross_entropy(info_nce_logits(enc(b.queries), k.clone(), 0.07), b.labels.repeat(2))
    for g1, g2 in zip(grads, torch.autograd.grad(manual, list(enc.parameters()))):
        torch.testing.assert_close(g1, g2)


def test_weighted_bce_matches_manual_and_bceloss() -> None:
    x, y = torch.randn(12), (torch.rand(12) < 0.3).float()
    w = torch.where(y > 0, 3.0, 1.0)
    p = torch.sigmoid(x)
    manual = -(w * (y * p.log() + (1 - y) * (1 - p).log())).mean()
    torch.testing.assert_close(weighted_bce(x, y, 3), manual)
    torch.testing.assert_close(weighted_bce(x, y, 3), nn.BCELoss(weight=w)(p, y))


def test_relation_episode_loss_targets_and_metrics() -> None:
    b = _batch()
    head = _head()
    loss, acc = relation_episode_loss(head, b, "way")
    logits = head.forward_pairs(b.keys.flatten(0, 1), b.queries).view(2, 4, 3)
    y = torch.zeros(2, 4, 3)
    for i, lab in enumerate(b.labels.tolist()):
        y[:, lab, i] = 1
    assert y.sum() == 2 * 3  # one positive per (group, query)
    torch.testing.assert_close(loss, weighted_bce(logits, y, 3))
    assert acc == pytest.approx(float((logits.argmax(1) == b.labels).float().mean()))
    _, pair_acc = relation_episode_loss(head, b, "pair")
    assert pair_acc == pytest.approx(float(((logits > 0) == (y > 0)).float().mean()))


# ----------------------------------------------------------------------------------------------- fine-tuning


class _Recorder(nn.Module):
    """Wraps an encoder and records which support items (encoded in the input's first value) it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x[:, 0, 0, 0].round().long().tolist())
        return self.inner(x)


@pytest.mark.parametrize("c, n, passes", [(3, 1, 5), (3, 2, 2), (2, 3, 1), (3, 4, 1)])
def test_contrastive_finetune_step_counts_and_keys(c: int, n: int, passes: int) -> None:
    support = torch.randn(c, n, D, H, W)
    support[:, :, 0, 0, 0] = (torch.arange(c).view(-1, 1) * 10 + torch.arange(n)).float()  # item id = 10·class + j
    model = _Recorder(_enc())
    opt = make_adam(model.parameters(), 1e-3)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    losses = finetune_contrastive(model, opt, support, passes, 0.07)
    assert len(losses) == len(steps) == passes * c * n * (n - 1)  # C·n·(n−1) Adam steps per pass, none at n = 1
    if n == 1:
        assert model.calls == []
        return
    expected = []
    for i in range(c):
        for j in range(n):
            for l in [l for l in range(n) if l != j]:
                expected.append([10 * cc + (l if cc == i else n - 1 - l) for cc in range(c)])  # keys, class order
                expected.append([10 * i + j])  # the query
    assert model.calls[: len(expected)] == expected


def test_contrastive_finetune_reduces_loss() -> None:
    torch.manual_seed(0)
    support = torch.randn(3, 2, D, H, W) + torch.arange(3).view(3, 1, 1, 1, 1)
    model = _enc()
    losses = finetune_contrastive(model, make_adam(model.parameters(), 1e-2), support, 20, 0.07)
    assert sum(losses[-6:]) < sum(losses[:6])


@pytest.mark.parametrize("n, expected", [(1, 0), (2, 45), (5, 45)])
def test_relation_finetune_steps(n: int, expected: int) -> None:
    head = _head()
    losses = finetune_relation(head, make_adam(head.parameters(), 1e-3), torch.randn(3, n, D, H, W), 45)
    assert len(losses) == expected
    if expected:
        assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------------------------- registry / configs


def test_registered_variants_and_config_validation() -> None:
    expect = {
        "contrastive": {"features": "residual", "pretrain": True, "pseudo_mask": "perlin"},
        "contrastive-residual": {"pretrain": False},
        "contrastive-raw-pretrain": {"features": "raw", "pretrain": True},
        "contrastive-raw": {"features": "raw", "pretrain": False},
        "contrastive-polygon": {"pseudo_mask": "polygon", "pretrain": True},
        "contrastive-maml": {"pretrain": True, "first_order": False, "maml_query_classes": "disjoint",
                             "inner_lr": 0.001},  # fmt: skip
        "relationnet": {"features": "residual", "pretrain": False},
        "relationnet-raw": {"features": "raw", "pretrain": False},
        "relationnet-residual-pretrain": {"features": "residual", "pretrain": True},
        "relationnet-raw-pretrain": {"features": "raw", "pretrain": True},
        "knn-residual": {"features": "residual", "k": 1},
        "logreg": {"features": "raw"},
        "logreg-residual": {"features": "residual"},
    }
    for name, fields in expect.items():
        cfg = get_method(name).default_config()
        assert {k: getattr(cfg, k) for k in fields} == fields, name
    c = get_method("contrastive").default_config()
    assert c.temperature == 0.07 and c.lr == 1e-4 and c.max_episodes == 1000 and c.stop_accuracy == 0.4
    assert [c.passes(n) for n in range(1, 7)] == [0, 45, 25, 15, 15, 15]
    assert get_method("relationnet").default_config().finetune_steps == 45
    assert "finetune_passes" not in c.pretrain_identity() and "max_episodes" in c.pretrain_identity()
    for name, bad in [("contrastive", {"residual_layout": "nope"}), ("relationnet", {"relation_stop_metric": "x"}),
                      ("contrastive-maml", {"maml_query_classes": "x"}), ("contrastive", {"finetune_passes": [-1]}),
                      ("knn-residual", {"k": 0})]:  # fmt: skip
        with pytest.raises(ConfigError):
            get_method(name).make_config(bad)


# ----------------------------------------------------------------------------------------------- glue (fake store)


class _FakeStore:
    """The FeatureStore interface on tiny grids (8 dims × 4 × 4): 4×4-pixel blocks of a 16-px thumbnail, projected."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(key=lambda: "fake-store-v1")
        self.proj = torch.randn(48, 8, generator=torch.Generator().manual_seed(0))
        self.keys: list[str] = []

    def _grid(self, img: np.ndarray) -> torch.Tensor:
        from PIL import Image

        x = torch.from_numpy(np.asarray(Image.fromarray(img).resize((16, 16)), np.float32) / 255)  # (16, 16, 3)
        blocks = x.view(4, 4, 4, 4, 3).permute(0, 2, 1, 3, 4).reshape(4, 4, 48)
        return (blocks @ self.proj).permute(2, 0, 1)  # (8, 4, 4)

    def patch_features(self, paths: list[str]) -> torch.Tensor:
        from bench.images import load_rgb

        return torch.stack([self._grid(np.asarray(load_rgb(p))) for p in paths])

    def patch_features_arrays(self, images: list[np.ndarray], keys: list[str]) -> torch.Tensor:
        self.keys += keys
        return torch.stack([self._grid(i) for i in images])

    def bank(self, train_paths: list[str], seed: int, coreset_ratio: float) -> torch.Tensor:
        return self.patch_features(train_paths).mean(0)

    def residuals(self, paths: list[str], bank: torch.Tensor) -> torch.Tensor:
        return self.patch_features(paths) - bank

    def residuals_arrays(self, images: list[np.ndarray], keys: list[str], bank: torch.Tensor) -> torch.Tensor:
        return self.patch_features_arrays(images, keys) - bank


def _fake_job(tmp_path: Path, name: str, shots: int, options: dict[str, Any], store: _FakeStore) -> tuple[Any, Any]:
    from bench.datasets import DatasetOptions, load_dataset
    from bench.episodes import make_episode
    from bench.method import SupportSet, TaskContext

    samples = load_dataset("synthetic-tiny", None, DatasetOptions())
    ep = make_episode(samples, "tile", shots, 1)
    ctx = TaskContext(
        dataset="synthetic-tiny", category="tile", seed=1, shots=shots, train_paths=samples.train_paths("tile"),
        store_factory=lambda: store, cache_root=tmp_path,
    )  # fmt: skip
    spec = get_method(name)
    method = spec.cls(spec.make_config(options), ctx)
    method.name = name
    method.fit(SupportSet(tuple(ep.support_paths()), tuple(ep.support_labels()), ep.class_names))
    scores = method.predict(list(ep.queries))
    assert scores.shape == (len(ep.queries), ep.n_classes) and np.isfinite(scores).all()
    return method, ctx


@pytest.mark.parametrize(
    "name",
    [
        "contrastive",
        pytest.param("relationnet-residual-pretrain", marks=pytest.mark.slow),
        pytest.param("contrastive-maml", marks=pytest.mark.slow),
    ],
)
def test_glue_pretrain_cache_and_prototypes_with_a_fake_store(tmp_path: Path, name: str) -> None:
    store = _FakeStore()
    opts: dict[str, Any] = {**SMALL, "max_episodes": 4, "prototype": "pixel_mean"}
    opts.update({"finetune_steps": 3} if name.startswith("relationnet") else {"finetune_passes": [0, 1, 1]})
    if name == "contrastive-maml":
        opts["maml_tasks"] = 2
    m1, ctx1 = _fake_job(tmp_path, name, 1, opts, store)
    pre = ctx1.log["pretrain"]
    assert pre["from_cache"] is False and 1 <= pre["episodes"] <= 4 and len(pre["loss"]) >= 1
    assert ctx1.log["finetune"]["steps"] == 0 and "as is" in ctx1.log["finetune"]["note"]
    assert store.keys, "pseudo images must go through the store under content keys"
    n_keys = len(store.keys)
    m2, ctx2 = _fake_job(tmp_path, name, 3, {**opts, "prototype": "embedding_mean"}, store)  # other shots and prototype
    assert ctx2.log["pretrain"]["from_cache"] is True and ctx2.log["pretrain"]["cache_key"] == pre["cache_key"]
    assert ctx2.log["finetune"]["steps"] > 0
    assert all(k.startswith("pixel-mean:") for k in store.keys[n_keys:])  # no pseudo image made again (cache hit)
    assert len(list((tmp_path / "pretrained").glob("*.pt"))) == 1
    _, ctx3 = _fake_job(tmp_path, name, 2, {**opts, "pretrain_residual": "paired_source"}, store)  # pretraining differs
    assert ctx3.log["pretrain"]["from_cache"] is False
    if name == "contrastive":  # a corrupt cache file is rebuilt, not fatal
        for f in (tmp_path / "pretrained").glob("*.pt"):
            f.write_bytes(b"not a checkpoint")
        _, ctx4 = _fake_job(tmp_path, name, 2, opts, store)
        assert ctx4.log["pretrain"]["from_cache"] is False and ctx4.log["pretrain"]["loss"] == pre["loss"]


def test_contrastive_embed_and_pixel_mean(tmp_path: Path) -> None:
    store = _FakeStore()
    method, _ = _fake_job(tmp_path, "contrastive-residual", 2, {"finetune_passes": [0, 1]}, store)
    from bench.datasets import DatasetOptions, load_dataset

    paths = load_dataset("synthetic-tiny", None, DatasetOptions()).train_paths("tile")[:3]
    z = method.embed(paths)
    assert z.shape == (3, 128) and z.dtype == np.float32 and (z >= 0).all()
    assert len([k for k in store.keys if k.startswith("pixel-mean:")]) == 3  # one mean image per class


# ----------------------------------------------------------------------------------------------- end to end


SMALL = {"max_episodes": 2, "episode_classes": 4, "episode_groups": 2, "episode_queries": 3}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One feature cache for the end-to-end tests of this module (features are computed once, not per test).

    Removed after the module: pretrained checkpoints are ~150 MB each and CI disks are finite.
    """
    path = tmp_path_factory.mktemp("e2e-cache")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(tmp_path: Path, method: str, shots: list[int], options: dict[str, Any], categories: list[str] | None = None,
         cache: Path | None = None) -> list[dict]:  # fmt: skip
    from bench.results import read_rows
    from bench.run import RunConfig, execute

    cfg = RunConfig(
        methods=[method], method_options=options, dataset="synthetic-tiny", categories=categories, shots=shots,
        seeds=[1], backbone="resnet18", weights="random", out=str(tmp_path / "out"),
        cache_dir=str(cache or tmp_path / "cache"),
    )  # fmt: skip
    execute(cfg, progress=False)
    rows = read_rows([tmp_path / "out" / "results.jsonl"]).rows
    assert rows and all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    return rows


@pytest.mark.slow
def test_pretrained_model_is_cached_across_shots(tmp_path: Path) -> None:
    opts = {**SMALL, "finetune_passes": [0, 2]}
    rows = _run(tmp_path, "contrastive", [1, 2], opts, ["tile"])
    by_shot = {r["shots"]: r for r in rows}
    first, second = by_shot[1]["train_log"]["pretrain"], by_shot[2]["train_log"]["pretrain"]
    assert first["from_cache"] is False and second["from_cache"] is True
    assert first["cache_key"] == second["cache_key"] and first["loss"] == second["loss"]
    assert 1 <= first["episodes"] <= 2
    assert by_shot[1]["train_log"]["finetune"]["steps"] == 0  # 1-shot: the pretrained model as is
    assert by_shot[2]["train_log"]["finetune"]["steps"] == 2 * 3 * 2 * 1  # passes · C·n·(n−1)
    assert list((tmp_path / "cache" / "pretrained").glob("*.pt"))


FAST_OPTS: dict[str, dict[str, Any]] = {
    "contrastive": {**SMALL, "finetune_passes": [0, 4]},
    "contrastive-residual": {"finetune_passes": [0, 4]},
    "contrastive-raw-pretrain": {**SMALL, "finetune_passes": [0, 4]},
    "contrastive-raw": {"finetune_passes": [0, 4]},
    "contrastive-polygon": {**SMALL, "finetune_passes": [0, 4]},
    "contrastive-maml": {**SMALL, "max_episodes": 4, "maml_tasks": 2, "finetune_passes": [0, 4]},
    "relationnet": {"finetune_steps": 10},
    "relationnet-raw": {"finetune_steps": 10},
    "relationnet-residual-pretrain": {**SMALL, "finetune_steps": 10},
    "relationnet-raw-pretrain": {**SMALL, "finetune_steps": 10},
    "knn-residual": {},
    "knn": {},
    "logreg": {},
    "logreg-residual": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FAST_OPTS))
def test_end_to_end_through_the_runner(tmp_path: Path, shared_cache: Path, method: str) -> None:
    rows = _run(tmp_path, method, [2], FAST_OPTS[method], cache=shared_cache)
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["y_pred"]) == r["n_queries"]
        log = r.get("train_log", {})
        ft = log.get("finetune")
        if ft is not None:
            curve = ft.get("loss_per_pass") or ft.get("loss_per_step")
            assert ft["steps"] > 0 and curve[-1] < curve[0], (method, curve)
        if "pretrain" in log:
            assert log["pretrain"]["episodes"] >= 1 and all(math.isfinite(v) for v in log["pretrain"]["loss"])
