"""Anomaly class discovery (``bench run --task discovery``): MEBin and the crop rules pinned on hand-made maps, the
metrics on permuted perfect labels and on the one-cluster row, the protocols, and the command end to end on the
built-in data (rows, resume, reports, ``--maps``, bad input as one error line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.datasets import load_dataset
from bench.discovery.crops import crop_boxes, merge_boxes, merge_regions, image_crops, rect_gap
from bench.discovery.maps import Frame
from bench.discovery.mebin import count_sequence, mebin, stable_interval, threshold_from
from bench.metrics.discovery import discovery_metrics, hungarian_match
from bench.discovery.protocol import discovery_set
from bench.results import read_rows
from tests.test_datasets import make_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 224


def blob(cy: float, cx: float, sigma: float = 10.0, peak: float = 230.0) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    return peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


# --------------------------------------------------------------------------------------------- MEBin and crops
def test_two_separated_blobs_give_two_crops_containing_them() -> None:
    two = np.clip(20 + blob(60, 60) + blob(160, 170), 0, 255).astype(np.uint8)  # peaks 250, background 20
    flat = np.full((S, S), 30, np.uint8)  # a normal image: its maximum is the set's min_th
    r = mebin(np.stack([two, flat]))
    assert (r.min_th, r.max_th) == (30.0, 250.0)
    seq = r.sequences[0]
    # the tops of both blobs survive the 6 x 6 erosion from the 7th level on (t = 231), together, and stay apart
    assert len(seq) == 64 and seq == [0] * 6 + [2] * 58
    assert r.est_nums == [2, 0]
    assert r.thresholds[0] == threshold_from(63, 30.0, 250.0) == int(3 * 220 / 255 + 30) == 32
    assert r.thresholds[1] == 255 and not r.masks[1].any()
    crops = image_crops(0, r.masks[0], r.est_nums[0], r.normalised(two))
    assert len(crops) == 2
    for c, (cy, cx) in zip(sorted(crops, key=lambda c: c.box[0]), [(60, 60), (160, 170)]):
        left, top, right, bottom = c.box
        assert right - left == bottom - top  # square
        assert left <= cx - 20 and right >= cx + 20 and top <= cy - 20 and bottom >= cy + 20  # the whole blob
        assert c.mask.any() and c.score == pytest.approx(1.0, abs=0.01) and c.area == c.mask.sum()


def test_a_flat_map_has_no_stable_interval_and_one_whole_image_crop() -> None:
    flat = np.full((S, S), 100, np.uint8)
    peaked = np.clip(blob(100, 100), 0, 255).astype(np.uint8)
    r = mebin(np.stack([flat, peaked]))
    assert r.sequences[0] == [0] * 64 and r.est_nums[0] == 0 and r.thresholds[0] == 255 and not r.masks[0].any()
    (crop,) = image_crops(0, r.masks[0], r.est_nums[0], r.normalised(flat))
    assert crop.box == (0.0, 0.0, float(S), float(S)) and not crop.mask.any() and crop.area == 0
    alone = mebin(flat[None])  # a set of one flat map: no range to search (the reference divides by zero)
    assert alone.est_nums == [0] and alone.thresholds == [255]


def test_the_interval_rule_on_given_count_sequences() -> None:
    seq = [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 1, 1, 1, 3, 3, 3, 3, 3, 3]
    # count 1: runs of 5 and 3 (too short); count 2: 6 (indices 7-12); count 3: 6 (16-21): 2 was seen first
    assert stable_interval(seq) == (12, 2)
    assert threshold_from(12, 0, 255) == 255 - 12 * 4
    assert stable_interval([2, 2, 2, 2, 0, 2, 2, 2, 2]) == (8, 2)  # equal runs of one count: the last (lowest t)
    assert stable_interval([0, 0, 1, 1, 1, 0]) is None  # a run of 3 < 4
    assert stable_interval([0] * 64) is None  # zero counts never form an interval
    assert stable_interval([3, 3, 3, 3, 1, 1, 1, 1, 1]) == (8, 1)  # the longest run wins over the first seen


def test_count_sequence_erodes_specks_away() -> None:
    a = np.zeros((S, S), np.uint8)
    a[50:53, 50:53] = 255  # a 3 x 3 speck: gone after the 6 x 6 erosion
    a[100:140, 100:140] = 255
    assert set(count_sequence(a, 0.0, 255.0)) == {0, 1}
    assert set(count_sequence(a, 0.0, 255.0, erosion=False)) == {0, 2}


def test_crop_rules_merge_close_boxes_and_keep_est_plus_one() -> None:
    assert rect_gap((0, 0, 10, 10), (12, 0, 20, 10)) == 2 and rect_gap((0, 0, 10, 10), (5, 5, 15, 15)) == -1
    (m,) = merge_boxes([(0.0, 0.0, 10.0, 10.0), (11.0, 0.0, 31.0, 10.0)], (224, 224))  # gap 1 < int(0.01 * 224) = 2
    assert m == (0.0, -10.5, 31.0, 20.5)  # the union (31 x 10), squared around its centre
    assert len(merge_boxes([(0.0, 0.0, 10.0, 10.0), (40.0, 0.0, 50.0, 10.0)], (224, 224))) == 2
    mask = np.zeros((S, S), bool)
    for y, x, s in ((20, 20, 60), (130, 20, 50), (20, 150, 12), (150, 150, 8)):  # two large, two small regions
        mask[y : y + s, x : x + s] = True
    assert len(crop_boxes(mask, est_num=4)) == 4
    kept = crop_boxes(mask, est_num=1)  # more boxes than estimated: est_num + 1, the largest
    assert len(kept) == 2 and all(b[0] <= 20 and b[2] >= 70 for b in kept)  # the two left-hand regions
    assert kept[0][2] - kept[0][0] == 2 * int(60 * 1.1 * 0.5) and kept[1][2] - kept[1][0] == 2 * int(50 * 1.1 * 0.5)
    assert len(crop_boxes(mask, est_num=1, keep_extra=False)) == 1
    small = crop_boxes(mask[:, 100:], est_num=0)  # two small regions: both boxes have the minimum half-side,
    assert [b[2] - b[0] for b in small] == [2 * int(224 * 0.1)] * 1  # 10 % of the side; est 0 keeps one: equal areas
    assert small[0][1] > 100  # keep the order of ascending contour area (the reference's stable sorts): the smaller


def test_region_merging_weighs_crops_by_area() -> None:
    from bench.discovery.crops import Crop

    empty = np.zeros((1, 1), bool)
    crops = [Crop(0, (0, 0, 1, 1), empty, 0.0, 10000.0), Crop(0, (0, 0, 1, 1), empty, 0.0, 1.0), Crop(1, (0, 0, 1, 1), empty, 0.0, 4.0)]
    probs = np.array([[0.4, 0.6], [0.9, 0.1], [0.7, 0.3]])
    assert merge_regions(probs, crops, 2, temperature=50.0).tolist() == [1, 0]  # the big crop decides image 0
    assert merge_regions(probs, crops, 2, temperature=1e9).tolist() == [0, 0]  # equal weights: the mean decides


# --------------------------------------------------------------------------------------------- metrics
def test_metrics_on_permuted_perfect_labels_and_on_one_cluster() -> None:
    names = ["crack", "hole", "good"]
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    perm = {0: 2, 1: 0, 2: 1}
    m = discovery_metrics(y, [perm[v] for v in y], names)
    assert (m["cluster_accuracy"], m["nmi"], m["ari"]) == (1.0, 1.0, 1.0)
    assert m["y_pred"] == y and m["confusion"] == [[3, 0, 0], [0, 2, 0], [0, 0, 5]] and m["confusion_columns"] == names
    assert m["cluster_to_class"] == {"0": "hole", "1": "good", "2": "crack"}
    one = discovery_metrics(y, [0] * len(y), names)
    assert one["cluster_accuracy"] == one["largest_class_share"] == 0.5
    assert one["nmi"] == 0.0 and one["ari"] == 0.0 and one["n_clusters_used"] == 1
    assert one["confusion"] == [[0, 0, 3], [0, 0, 2], [0, 0, 5]]  # everything matched to the largest class, good
    more = discovery_metrics([0, 0, 1, 1], [0, 1, 2, 3], ["a", "b"])  # more ids than classes: an unmatched column
    assert more["confusion_columns"] == ["a", "b", "unmatched"] and more["cluster_accuracy"] == 0.5
    assert hungarian_match(np.array([1, 1, 0]), np.array([5, 5, 7]), 2) == {5: 1, 7: 0}


# --------------------------------------------------------------------------------------------- protocols and frame
def test_protocols_drop_combined_and_keep_good_as_a_class(tmp_path: Path) -> None:
    s = load_dataset("folder", make_tree(tmp_path, types=("crack", "hole", "combined")))
    ncd = discovery_set(s, "prod", "ncd")
    assert ncd.class_names == ("crack", "hole", "good") and ncd.k == 3 and len(ncd.paths) == 10
    assert ncd.labels == (0,) * 4 + (1,) * 4 + (2,) * 2 and all(m for m in ncd.mask_paths[:8]) and not any(ncd.mask_paths[8:])
    only = discovery_set(s, "prod", "defects-only")
    assert only.class_names == ("crack", "hole") and len(only.paths) == 8 and only.hash != ncd.hash
    assert discovery_set(s, "prod", "ncd").hash == ncd.hash and "combined" not in json.dumps(ncd.manifest())


def test_frame_maps_geometry_of_each_fit() -> None:
    a = np.zeros((100, 300), np.uint8)
    a[:, :100] = 255  # the left third of a 3 : 1 strip
    squash = Frame("squash", side=60).to_frame(a, nearest=True)
    assert squash[:, :20].min() == 255 and squash[:, 21:].max() == 0
    crop = Frame("crop", side=56, resize=64).to_frame(a, nearest=True)  # the centre crop misses the left third
    assert crop.max() == 0
    box = Frame("letterbox", side=60).to_frame(a, nearest=True)  # 60 x 20 content between padding rows
    assert box[:20].max() == 0 and box[40:].max() == 0 and box[20:40, :20].min() == 255
    assert Frame("squash", side=60).source_box((0, 0, 60, 60), (300, 100)) == (0.0, 0.0, 300.0, 100.0)
    assert Frame("letterbox", side=60).source_pixels_per_frame_pixel((300, 100)) == pytest.approx(25.0)


# --------------------------------------------------------------------------------------------- the command
TINY = ["--dataset", "synthetic-tiny", "--backbone", "resnet18", "--weights", "random", "--no-progress"]
CHEAP = ["one-cluster", "random-ids", "kmeans", "kmeans-residual", "anomaly-clustering", "anomaly-clustering-semi",
         "mebin-kmeans", "oracle-mask-kmeans"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> tuple[Path, int, str]:
    d = tmp_path_factory.mktemp("discovery")
    out = d / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["run", "--task", "discovery", *TINY, "--categories", "tile", "--method", *CHEAP, "--seeds", "1", "2",
                     "--out", str(out), "--cache-dir", str(d / "cache")])  # fmt: skip
    return out, code, buf.getvalue()


def test_run_discovery_rows_on_the_builtin_data(tiny_run: tuple[Path, int, str]) -> None:
    out, code, printed = tiny_run
    assert code == 0, printed
    rows = read_rows([out]).rows
    assert len(rows) == len(CHEAP) * 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["task"] == "discovery" and r["protocol"] == "ncd" and r["transductive"] is True and r["k_known"] is True
        assert r["class_names"][-1] == "good" and r["n_classes"] == 4 and r["shots"] == 0
        assert 0 <= r["cluster_accuracy"] <= 1 and len(r["confusion"]) == 4 and len(r["clusters"]) == r["n_images"]
        assert r["class_set"] == {"combined": "excluded", "good": "included", "min_defect_types": 1}
        assert (r["maps"] is not None) == (r["method"] == "mebin-kmeans")
        assert (tmp := out / r["episode"]["file"]).is_file() and json.loads(tmp.read_text())["task"] == "discovery"
    one = [r for r in rows if r["method"] == "one-cluster"]
    assert all(r["cluster_accuracy"] == r["largest_class_share"] and r["nmi"] == 0 for r in one)
    maps = next(r["maps"] for r in rows if r["maps"])
    assert maps["source"] == "patchcore" and maps["normalisation"].startswith("joint min-max")
    oracle = [r for r in rows if r["method"] == "oracle-mask-kmeans"]
    assert all(r["oracle"] and r["cluster_accuracy"] > r["largest_class_share"] for r in oracle)
    assert "task discovery, protocol 'ncd'" in printed and "### one-cluster" in printed
    assert "ACC" in (out / "summary.md").read_text()


def test_run_discovery_resumes_and_reports(tiny_run: tuple[Path, int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = tiny_run
    cache = out.parent / "cache"
    code = main(["run", "--task", "discovery", *TINY, "--categories", "tile", "--method", *CHEAP, "--seeds", "1-2",
                 "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    assert code == 0 and f"resuming: {len(CHEAP) * 2} of {len(CHEAP) * 2} jobs already finished" in capsys.readouterr().out
    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep), "--compare", "paper", "--category", "tile"]) == 0
    text = (rep / "report.md").read_text()
    assert text.startswith("# Anomaly class discovery: report")
    assert "discovery · synthetic-tiny · ncd · combined excluded, good included" in text
    assert "matched confusion matrix, tile" in text and "no published discovery numbers" in text
    assert any(p.name.startswith("discovery-confusion-oracle-mask-kmeans-tile") for p in (rep / "plots").glob("*.png"))
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "lb.md")]) == 0
    lb = (tmp_path / "lb.md").read_text()
    assert "ranked by ACC" in lb and "| ref." in lb


def test_discovery_report_never_shows_cluster_ids(tiny_run: tuple[Path, int, str]) -> None:
    from bench.report.discovery import confusion_table
    from bench.report.load import load_results

    res = load_results([tiny_run[0]])
    for cid in res.configs:
        t, counts, rows, cols = confusion_table(res, cid, "tile")
        assert set(cols) <= {*rows, "unmatched"} and list(t.display.columns) == cols and counts.sum() == 2 * 24


def test_published_numbers_beside_ours() -> None:
    from bench.report.discovery import load_published

    pub = load_published()
    mtd = pub[(pub.dataset == "mtd") & (pub.category == "mean")].set_index("method")
    assert mtd.loc["PatchCore + AnomalyNCD", ["acc", "nmi", "ari"]].tolist() == [0.617, 0.380, 0.390]
    assert mtd.loc["Anomaly Clustering (semi-supervised)", "counterpart"] == "anomaly-clustering-semi"
    mv = pub[(pub.dataset == "mvtec_ad") & (pub.category == "mean")].set_index("method")
    assert mv.loc["CPR + AnomalyNCD", "acc"] == 0.805 and len(mv) == 8


def test_png_maps_from_another_detector(tiny_run: tuple[Path, int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``--maps PATH``: maps written as <maps>/<category>/<type>/<name>.png are read instead of PatchCore's; a
    missing map fails the jobs that read maps, with its path, and no other job."""
    from bench.discovery.protocol import discovery_set
    from scipy.ndimage import gaussian_filter

    cache = tiny_run[0].parent / "cache"  # the data set and the features of the module's run
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    s = load_dataset("synthetic-tiny")
    ls = discovery_set(s, "tile", "ncd")
    maps = tmp_path / "maps"
    for p, m, y in zip(ls.paths, ls.mask_paths, ls.labels):
        a = np.zeros((128, 128), np.float64) if not m else np.asarray(Image.open(m).convert("L"), np.float64)
        target = maps / "tile" / ls.class_names[y] / f"{Path(p).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(gaussian_filter(a, 3) + 10, 0, 255).astype(np.uint8)).save(target)
    capsys.readouterr()
    code = main(["run", "--task", "discovery", *TINY, "--method", "mebin-kmeans", "one-cluster", "--seeds", "1",
                 "--categories", "tile", "--maps", str(maps), "--out", str(tmp_path / "out"), "--cache-dir", str(cache)])  # fmt: skip
    assert code == 0
    assert f"PNG files under {maps}" in capsys.readouterr().out
    (row,) = [r for r in read_rows([tmp_path / "out"]).rows if r["method"] == "mebin-kmeans"]
    assert row["maps"]["source"] == "png" and row["maps"]["root"] == str(maps)
    assert row["cluster_accuracy"] > row["largest_class_share"]
    next((maps / "tile" / "crack").glob("*.png")).unlink()
    code = main(["run", "--task", "discovery", *TINY, "--method", "mebin-kmeans", "one-cluster", "--seeds", "1",
                 "--categories", "tile", "--maps", str(maps), "--out", str(tmp_path / "out2"), "--cache-dir", str(cache)])  # fmt: skip
    assert code == 1 and "anomaly maps are missing" in capsys.readouterr().err
    status = {r["method"]: r["status"] for r in read_rows([tmp_path / "out2"]).rows}
    assert status == {"mebin-kmeans": "error", "one-cluster": "ok"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "protonet"], "method 'protonet' solves the task 'classification', not 'discovery'"),
        (["--method", "kmean"], "unknown discoverer 'kmean'. Did you mean 'kmeans'"),
        (["--method", "kmeans", "--shots", "1"], "--shots does not apply to --task discovery"),
        (["--method", "kmeans", "--protocol", "paper"], "--protocol 'paper' is not allowed: ncd or defects-only"),
        (["--method", "kmeans", "--include-good"], "--include-good and --exclude-combined do not apply"),
        (["--method", "kmeans", "--set", "n_init=0"], "n_init must be at least 1"),
    ],
)
def test_bad_discovery_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code = main(["run", "--task", "discovery", *TINY, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1, err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_maps_and_classification_methods_stay_in_their_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", *TINY, "--method", "protonet", "--maps", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "--maps gives the estimated masks of region methods" in capsys.readouterr().err  # #22
    code = main(["run", *TINY, "--task", "detection", "--method", "patchcore-kshot", "--maps", str(tmp_path), "--out",
                 str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and "anomaly maps are read by --task classification or discovery only" in capsys.readouterr().err
    code = main(["run", *TINY, "--method", "kmeans", "--out", str(tmp_path / "o")])
    assert code == 2 and "solves the task 'discovery', not 'classification'" in capsys.readouterr().err
    assert main(["list", "discoverers"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in [*CHEAP, "anomalyncd"])


def test_show_crops_saves_a_picture(tiny_run: tuple[Path, int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crops.png"
    code = main(["show-crops", "--category", "tile", "--dataset", "synthetic-tiny", "--backbone", "resnet18", "--weights",
                 "random", "--images", "4", "--cache-dir", str(tiny_run[0].parent / "cache"), "--out", str(out)])  # fmt: skip
    assert code == 0 and out.is_file() and Image.open(out).size[1] > 400
    assert "4 of 24 images of tile" in capsys.readouterr().out
    from bench.discovery.pictures import pick
    from bench.discovery.protocol import LabelledSet

    ls = LabelledSet("d", "c", "ncd", "/", ("a", "b", "good"), tuple("pqrstu"), (0, 0, 0, 1, 2, 2), ("",) * 6)
    assert pick(ls, 4) == [0, 3, 4, 1]  # one per class in turn
