"""Few-shot anomaly detection (docs/tasks.md §A): the losses on hand-built vectors, the Mahalanobis score, the k-shot
draws, the metrics and maps, determinism per seed, that fine-tuning moves embeddings the way its losses say, the
registry and the command line (``--task detection``), rows, report and leaderboard. Real data: test_detection_real.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.datasets import load_dataset
from bench.detection import DETECTORS, get_detector, make_normal_shots
from bench.detection.maps import map_to_image, write_maps
from bench.metrics.detection import auroc_per_type, fast_auroc, image_auroc, mask_frame, pixel_auroc
from bench.features.embed import Gaussian, ViewParams, augment, mahalanobis, view_key
from bench.detectors.coft_ad import contrastive_losses
from bench.errors import ConfigError, DatasetError
from bench.images import Preprocess
from bench.registry import UnknownNameError
from bench.results import read_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tensors: a second thread only waits

LITE0 = ["--backbone", "tf_efficientnet_lite0", "--weights", "imagenet"]


# ------------------------------------------------------------------------------------------ losses and scores
def test_losses_on_hand_built_vectors() -> None:
    """k = 2 shots × V = 2 views: shot 0 at (1, 0), shot 1 at (0, 1), one negative at (−1, 0), τ = 1."""
    e = math.e
    z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    neg = torch.tensor([[-1.0, 0.0]])
    out = contrastive_losses(z, neg, temperature=1.0)
    # anchor a0: the other views are a1 (s = 1), b0, b1 (s = 0): denominator e + 2 for every anchor (symmetric)
    assert out["con"].item() == pytest.approx(math.log((e + 2) / e))  # positive = the other view of the same shot
    assert out["pp"].item() == pytest.approx(math.log(e + 2))  # positives = the two views of the other shot (s = 0)
    # L_NP: anchors of shot 0 see the negative at s = −1, those of shot 1 at s = 0; Σ_pos = e + 2 for all
    np_expected = (2 * math.log(1 + math.exp(-1) / (e + 2)) + 2 * math.log(1 + 1 / (e + 2))) / 4
    assert out["np"].item() == pytest.approx(np_expected)
    # one shot: no cross-instance positive, L_PP is 0; no negatives, L_NP is 0; NT-Xent of two identical views is 0
    one = contrastive_losses(z[:1], None, 1.0)
    assert one["pp"].item() == 0 and one["np"].item() == 0 and one["con"].item() == pytest.approx(0.0)
    # the temperature sharpens: the same geometry at τ = 0.1 gives a smaller L_con (the positive dominates more)
    assert contrastive_losses(z, neg, 0.1)["con"].item() < out["con"].item()
    # moving the negative towards the normals raises L_NP, moving the shots apart raises L_PP
    assert contrastive_losses(z, torch.tensor([[0.7071, 0.7071]]), 1.0)["np"] > out["np"]
    apart = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[-1.0, 0.0], [-1.0, 0.0]]])
    assert contrastive_losses(apart, None, 1.0)["pp"] > out["pp"]


def test_mahalanobis_with_identity_covariance_is_euclidean() -> None:
    rng = np.random.default_rng(0)
    x, mu = rng.normal(size=(7, 5)), rng.normal(size=5)
    assert np.allclose(mahalanobis(x, mu, np.eye(5)), np.linalg.norm(x - mu, axis=1))
    assert np.allclose(mahalanobis(x, mu, 4 * np.eye(5)), 2 * np.linalg.norm(x - mu, axis=1))  # Σ = I/4


def test_gaussian_is_ledoit_wolf_in_woodbury_form() -> None:
    """The n ≪ D shortcut gives sklearn's LedoitWolf Mahalanobis distances (and the n > D case too)."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    for n, d in ((16, 200), (300, 20)):
        v = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d)
        x = rng.normal(size=(9, d))
        lw = LedoitWolf().fit(v)
        g = Gaussian().fit(v)
        assert g.shrinkage == pytest.approx(lw.shrinkage_)
        assert np.allclose(g.score(x), mahalanobis(x, lw.location_, lw.precision_), rtol=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        Gaussian().fit(np.zeros((1, 4)))


def test_views_are_mild_deterministic_and_keyed_by_content() -> None:
    img = (np.random.default_rng(0).uniform(size=(60, 90, 3)) * 255).astype(np.uint8)
    p = ViewParams()
    a = augment(img, np.random.default_rng(5), p)
    b = augment(img, np.random.default_rng(5), p)
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert 0.85 * 60 * 90 * 0.97 <= a.shape[0] * a.shape[1] <= 60 * 90  # a crop of 85-100 % of the area
    assert view_key("abc", 0, p) == "abc" and view_key("abc", 1, p) != view_key("abc", 2, p)
    assert ViewParams().for_category("transistor").rotate_deg == 0  # rotation is a defect type there
    assert ViewParams().for_category("screw").rotate_deg == 10


# ------------------------------------------------------------------------------------------ protocol and metrics
@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic-tiny")


def test_shots_are_seeded_persisted_and_never_test_images(tiny, tmp_path: Path) -> None:
    a = make_normal_shots(tiny, "tile", 2, seed=1)
    assert a == make_normal_shots(tiny, "tile", 2, seed=1)  # deterministic per (category, k, seed)
    assert len(a.support) == 2 and set(a.support) <= set(tiny.train_paths("tile"))
    assert not set(a.support) & set(a.test)
    others = {make_normal_shots(tiny, "tile", 2, seed=s).support for s in range(1, 6)}
    assert len(others) > 1  # the draws differ between seeds
    t = tiny.table
    assert len(a.test) == ((t.category == "tile") & (t.split == "test")).sum()  # every test image, good and defects
    assert sum(a.y) == len(a.test) - a.test_labels.count("good") and "good" in a.test_labels
    saved = json.loads(a.save(tmp_path).read_text())
    assert saved["support"] == [str(Path(p).relative_to(tiny.root.resolve())) for p in a.support]
    assert saved["task"] == "detection" and len(saved["test"]) == len(a.test) and a.hash in str(a.save(tmp_path))
    with pytest.raises(DatasetError, match="8-shot detection draws 9|has 8 normal"):
        make_normal_shots(tiny, "tile", 9, seed=1)


def test_auroc_metrics() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5 and math.isnan(image_auroc([1, 1], [0.1, 0.2]))
    per = auroc_per_type(["good", "good", "a", "b"], [0.1, 0.3, 0.2, 0.9])
    assert per == {"a": 0.5, "b": 1.0}
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y, s = rng.random(5000) < 0.3, np.round(rng.normal(size=5000), 1)  # many ties
    assert fast_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_masks_follow_the_image_geometry_and_pixel_auroc(tmp_path: Path) -> None:
    """A mask is brought to the input frame as its image is (squash / centre crop); a map equal to the mask gives
    pixel AUROC 1."""
    mask = np.zeros((40, 120), np.uint8)
    mask[:, :20] = 255  # the left sixth of a wide image
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    squash = Preprocess(256, 224, "squash")
    crop = Preprocess(256, 224, "crop")
    f = mask_frame(str(path), squash, 24)
    assert f[:, :4].all() and not f[:, 5:].any()  # the whole width is kept: the defect is the left sixth
    assert not mask_frame(str(path), crop, 24).any()  # a centre crop of a 3:1 image drops the left sixth
    maps = np.stack([f.astype(np.float32), np.zeros((24, 24), np.float32)])
    auc, n = pixel_auroc(maps, ["crack", "good"], [str(path), ""], squash, 24)
    assert auc == pytest.approx(1.0) and n == 2
    assert pixel_auroc(maps, ["crack", "good"], ["", ""], squash, 24) == (None, 0)  # no defect has a mask


def test_maps_are_written_in_the_discovery_layout(tmp_path: Path) -> None:
    imgs = []
    for i, (label, size) in enumerate([("good", (90, 30)), ("crack", (90, 30)), ("crack", (40, 40))]):
        p = tmp_path / "src" / f"{label}_{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(p)
        imgs.append((str(p), label))
    maps = np.stack([np.full((7, 7), v, np.float32) for v in (1.0, 3.0, 2.0)])
    maps[1, 3, 3] = 5.0
    pre = Preprocess(256, 224, "squash", (0.5,) * 3, (0.5,) * 3)
    out = write_maps(tmp_path / "maps", "tiles", [p for p, _ in imgs], [lab for _, lab in imgs], maps, pre, meta={"k": 2})
    assert [o.relative_to(tmp_path / "maps").as_posix() for o in out] == [
        "tiles/good/good_0.png", "tiles/crack/crack_1.png", "tiles/crack/crack_2.png"]  # fmt: skip
    a = [np.asarray(Image.open(o)) for o in out]
    assert a[0].shape == (30, 90) and a[2].shape == (40, 40) and a[0].dtype == np.uint8
    assert a[0].max() == 0 and a[1].max() == 255 and 0 < a[2].max() < 255  # joint min-max over the set
    info = json.loads((tmp_path / "maps" / "tiles" / "normalisation.json").read_text())
    assert info["min"] == 1.0 and 3.0 < info["max"] <= 5.0 and (info["bits"], info["k"]) == (8, 2)
    # the inverse fit: a centre-cropped map goes back into its window, the rest is the fill value
    full = map_to_image(np.ones((7, 7), np.float32), Preprocess(256, 224, "crop"), (300, 100), fill=0.0)
    assert full.shape == (100, 300) and full[50, 110:190].min() == 1.0 and full[:, :100].max() == 0.0 and full[0].max() == 0.0
    lb = map_to_image(np.ones((7, 7), np.float32), Preprocess(256, 224, "letterbox"), (300, 100), fill=0.0)
    assert lb.shape == (100, 300) and np.allclose(lb, 1.0)
    out16 = write_maps(tmp_path / "m16", "tiles", [imgs[0][0]], ["good"], maps[:1] + np.arange(49).reshape(1, 7, 7), pre, bits=16)
    assert np.asarray(Image.open(out16[0])).max() == 65535


# ------------------------------------------------------------------------------------------ registry and CLI
def test_registry_and_wrong_task_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    DETECTORS.import_all()
    assert {"patchcore-kshot", "gaussian", "coft-ad", "coft-ad-no-pp", "coft-ad-no-neg", "coft-ad-frozen"} <= set(DETECTORS.names())
    assert get_detector("coft-ad-no-pp").default_config().lambda_pp == 0
    assert get_detector("coft-ad-frozen").default_config().steps == 0
    assert get_detector("coft-ad").cls.uses_synthetic_negatives(get_detector("coft-ad").default_config())
    assert not get_detector("coft-ad-no-neg").cls.uses_synthetic_negatives(get_detector("coft-ad-no-neg").default_config())
    import bench.detectors.coft_ad as coft

    assert "A RECONSTRUCTION" in coft.__doc__ and "[guess]" in coft.__doc__  # says so plainly, marks its guesses
    with pytest.raises(UnknownNameError, match="Did you mean 'gaussian'"):
        get_detector("gausian")
    with pytest.raises(ConfigError, match="solves the task 'classification'"):
        get_detector("protonet")
    common = ["--dataset", "synthetic-tiny", "--no-progress", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    for argv, expected in (
        (["run", "--task", "detection", "--method", "protonet", *common], "solves the task 'classification'"),
        (["run", "--method", "patchcore-kshot", *common], "solves the task 'detection'"),
        (["run", "--task", "detection", "--method", "coft-ad", "--set", "stepz=3", *common], "no method of this run has an option 'stepz'"),
        (["run", "--task", "detection", "--method", "gaussian", "--include-good", *common], "--include-good"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "o" / "results.jsonl").exists()  # refused before any job
    assert main(["list", "detectors"]) == 0
    assert "coft-ad-no-neg" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ detectors on tiny data
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for this module's detectors: an image's features and views are computed once for all its tests."""
    return tmp_path_factory.mktemp("detection-cache")


def _detector(name: str, cache: Path, shots: int = 2, seed: int = 1, category: str = "tile", **options):
    """A fitted detector of a planned detection job on synthetic-tiny (built the way bench run builds it)."""
    from bench.run.config import RunConfig
    from bench.run.detection import build_detector, plan_detection
    from bench.run.job import feature_store, make_context

    cfg = RunConfig(task="detection", methods=[name], method_options=options, dataset="synthetic-tiny",
                    categories=[category], shots=[shots], seeds=[seed], backbone="tf_efficientnet_lite0",
                    weights="imagenet", device="cpu", cache_dir=str(cache))  # fmt: skip
    samples = load_dataset("synthetic-tiny", None, cfg.dataset_options())
    (job,) = plan_detection(cfg, samples)
    store = feature_store(cfg)
    ctx = make_context(cfg, samples, job, store, train_paths=list(job.episode.support))
    det = build_detector(job, ctx)
    det.fit(list(job.episode.support))
    return det, job.episode


FAST = {"steps": 6, "views": 8, "negative_pool": 4, "lr": 1e-3}


def test_coft_ad_is_deterministic_per_seed_and_frozen_equals_gaussian(cache: Path) -> None:
    a, ep = _detector("coft-ad", cache, **FAST)
    b, _ = _detector("coft-ad", cache, **FAST)
    sa, sb = a.score(list(ep.test)), b.score(list(ep.test))
    assert np.array_equal(sa, sb) and a.log["loss"] == b.log["loss"]
    c, ep2 = _detector("coft-ad", cache, seed=2, **FAST)  # another seed: another draw, another head init
    assert ep2.support != ep.support and c.log["loss"] != a.log["loss"]
    frozen, _ = _detector("coft-ad-frozen", cache, views=8)
    gauss, _ = _detector("gaussian", cache, views=8)
    assert np.allclose(frozen.score(list(ep.test)), gauss.score(list(ep.test)), rtol=1e-5)
    assert frozen.extra_info()["embed_cache"]["hits"] > 0  # the frozen embeddings are the gaussian's, cached


def test_finetuning_moves_embeddings_the_way_the_losses_say(cache: Path) -> None:
    """After fine-tuning, on a fixed probe batch: views of different shots closer together (L_PP), views of one shot
    closer (L_con), pseudo anomalies farther from the normals (L_NP); the loss falls."""
    det, _ = _detector("coft-ad", cache, shots=2, steps=40, views=8, negative_pool=4, lr=1e-3)
    before, after = det.log["probe"]["before"], det.log["probe"]["after"]
    assert after["other_shots"] > before["other_shots"] + 0.05
    assert after["same_shot"] > before["same_shot"]
    assert after["negatives"] < before["negatives"] - 0.05
    assert np.mean(det.log["loss"][-3:]) < np.mean(det.log["loss"][:3])
    assert set(det.log["final"]) == {"loss", "con", "pp", "np"}


def test_patchcore_kshot_maps_and_scores(cache: Path) -> None:
    det, ep = _detector("patchcore-kshot", cache, shots=2)
    maps = det.anomaly_maps(list(ep.test))
    assert maps.shape == (len(ep.test), 28, 28) and (maps >= 0).all()
    assert np.allclose(det.score(list(ep.test)), maps.reshape(len(maps), -1).max(1))
    assert len(det.bank) == 2 * 28 * 28  # every patch of the 2 shots, no coreset


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_bench_run_detection_rows_report_leaderboard_and_resume(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["run", "--task", "detection", "--method", "patchcore-kshot", "gaussian", "coft-ad", "--dataset", "synthetic-tiny",
            "--categories", "tile", "--shots", "1,2", "--seeds", "1", *LITE0, "--set", "coft-ad.steps=3",
            "--set", "views=4", "--no-progress", "--out", str(out), "--cache-dir", str(cache)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "image AUROC %" in printed and "k=2" in printed
    rows = read_rows([out]).rows
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["task"] == "detection" and 0 <= r["image_auroc"] <= 1 and r["extra_data"] == "imagenet"
        assert len(r["support"]) == r["shots"] and len(r["scores"]) == len(r["y_true"]) == r["n_test"]
        assert r["protocol"] == "kshot_normals" and (out / r["episode"]["file"]).is_file()
        assert r["synthetic_negatives"] == (r["method"] == "coft-ad")
        assert (r["pixel_auroc"] is not None) == (r["method"] == "patchcore-kshot")
        assert set(r["auroc_per_type"]) == {"contamination", "crack", "stain"}
    coft = next(r for r in rows if r["method"] == "coft-ad")
    assert coft["train_log"]["finetune"]["steps"] == 3 and coft["method_info"]["reconstruction"] is True
    # resume: nothing runs again
    assert main(argv) == 0
    assert "6 already finished" in capsys.readouterr().out
    # report and leaderboard: detection tables, published figures beside ours, never mixed with accuracy
    assert main(["report", str(out), "--compare", "published", "--out", str(tmp_path / "rep"), "--boot", "200"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Few-shot anomaly detection: report" in text and "Image AUROC: configurations × k" in text
    assert "RegAD (published; MVTec AD, 15 categories)" in text and "other-categories" in text and "accuracy" not in text.split("## detection")[1]
    assert list((tmp_path / "rep" / "plots").glob("det-auroc-vs-k-*.png"))
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "lb.md"), "--boot", "200"]) == 0
    lb = (tmp_path / "lb.md").read_text()
    assert "rank (within extra data)" in lb and "k=1" in lb and "k=2" in lb
    # maps for the discovery task
    assert main(["maps", "--method", "patchcore-kshot", "--dataset", "synthetic-tiny", "--categories", "tile", "--shots", "2",
                 "--out", str(tmp_path / "maps"), "--cache-dir", str(cache)]) == 0  # fmt: skip
    pngs = sorted((tmp_path / "maps" / "tile").rglob("*.png"))
    assert len(pngs) == rows[0]["n_test"] and {p.parent.name for p in pngs} == {"good", "contamination", "crack", "stain"}
    assert main(["maps", "--method", "gaussian", "--dataset", "synthetic-tiny", "--categories", "tile", "--shots", "1",
                 "--out", str(tmp_path / "maps2"), "--cache-dir", str(cache)]) == 2  # fmt: skip
    assert "no anomaly maps" in capsys.readouterr().err
