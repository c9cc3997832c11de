"""Tests of the synthetic MVTec-layout generator (datasets/synthetic.py) and the adapters that read it."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import bench  # noqa: F401  (sets up bench.datasets and the torchvision patch before timm is imported)
import numpy as np
import pytest
from PIL import Image

from bench.datasets import DatasetOptions, load_dataset
from bench.datasets.synthetic import (
    GENERATOR_VERSION,
    MARKER,
    WORK_MARKER,
    MVTEC_AD_COUNTS,
    PRESETS,
    default_root,
    generate,
    stable_int,
    write_mvtec3d,
)
from bench.errors import DatasetError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_tiny_layout_counts_and_masks(tmp_path: Path) -> None:
    root = generate(tmp_path, "tiny")
    preset = PRESETS["tiny"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(preset.categories)
    kinds = {spec.is_texture for spec in preset.categories.values()}
    assert kinds == {True, False}  # one texture, one object
    for name, spec in preset.categories.items():
        cdir = root / name
        assert len(spec.defects) >= 3
        assert _pngs(cdir / "train" / "good") == [f"{i:03d}.png" for i in range(8)]
        assert _pngs(cdir / "test" / "good") == [f"{i:03d}.png" for i in range(3)]
        types = sorted(p.name for p in (cdir / "test").iterdir() if p.name != "good")
        assert types == sorted(spec.defects)
        for t in types:
            assert _pngs(cdir / "test" / t) == [f"{i:03d}.png" for i in range(7)]
            assert _pngs(cdir / "ground_truth" / t) == [f"{i:03d}_mask.png" for i in range(7)]
            for i in range(7):
                img = np.asarray(Image.open(cdir / "test" / t / f"{i:03d}.png"))
                mask = np.asarray(Image.open(cdir / "ground_truth" / t / f"{i:03d}_mask.png"))
                assert img.shape == (128, 128, 3) and img.dtype == np.uint8
                assert mask.shape == (128, 128)
                assert set(np.unique(mask)) == {0, 255}, f"{name}/{t}/{i}: mask must be binary and non-empty"
        assert not (cdir / "ground_truth" / "good").exists()
        marker = json.loads((cdir / MARKER).read_text())
        assert marker["preset"] == "tiny" and marker["seed"] == 0 and marker["generator_version"] == GENERATOR_VERSION
        assert marker["resolution"] == 128
        assert marker["counts"]["train/good"] == 8 and marker["counts"]["test/good"] == 3
    assert not list(root.glob(".*.tmp-*")), "no temporary folder may be left behind"


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", "tiny", seed=0))
    b = _files(generate(tmp_path / "b", "tiny", seed=0))
    c = _files(generate(tmp_path / "c", "tiny", seed=1))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) > 0.9 * len(pngs)
    assert stable_int("wood") == stable_int("wood") != stable_int("tile")


def test_second_call_reuses_without_rewriting(tmp_path: Path) -> None:
    generate(tmp_path, "tiny")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    generate(tmp_path, "tiny")
    load_dataset("synthetic-tiny", tmp_path)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            generate(tmp_path / "shared", "tiny", categories=("screw",))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ref = _files(generate(tmp_path / "ref", "tiny", categories=("screw",)))
    assert _files(tmp_path / "shared") == ref


def test_load_synthetic_tiny(tmp_path: Path) -> None:
    samples = load_dataset("synthetic-tiny", tmp_path)
    t = samples.table
    assert set(t.dataset) == {"synthetic-tiny"}
    assert samples.categories() == sorted(PRESETS["tiny"].categories)
    for cat in samples.categories():
        assert len(samples.defect_types(cat)) >= 3
        assert len(samples.train_paths(cat)) == 8
    defect = t[(t.split == "test") & (t.label != "good")]
    assert len(defect) == 2 * 3 * 7
    assert (defect.mask_path != "").all() and all(Path(p).is_file() for p in defect.mask_path)
    assert (t[t.label == "good"].mask_path == "").all()
    only = load_dataset("synthetic-tiny", tmp_path, DatasetOptions(categories=("screw",)))
    assert only.categories() == ["screw"]


def test_default_root_is_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "synthetic" / f"tiny-v{GENERATOR_VERSION}-seed0"
    assert default_root("tiny") == expected
    samples = load_dataset("synthetic-tiny", None, DatasetOptions(categories=("tile",)))
    assert samples.root == expected
    assert (expected / "tile" / MARKER).is_file() and not (expected / "screw").exists()  # lazy per category


def test_mvtec_table_and_one_category_counts(tmp_path: Path) -> None:
    assert len(MVTEC_AD_COUNTS) == 15
    assert sum(v[0] for v in MVTEC_AD_COUNTS.values()) == 3629
    assert sum(v[1] for v in MVTEC_AD_COUNTS.values()) == 467
    assert sum(sum(v[2].values()) for v in MVTEC_AD_COUNTS.values()) == 1258
    assert sum(len(v[2]) for v in MVTEC_AD_COUNTS.values()) == 73
    assert len(MVTEC_AD_COUNTS["cable"][2]) == 8

    generate(tmp_path, "mvtec", categories=("bottle",), resolution=64)
    samples = load_dataset("synthetic-mvtec", tmp_path, DatasetOptions(categories=("bottle",)))
    t = samples.table
    assert set(t.dataset) == {"synthetic-mvtec"} and samples.categories() == ["bottle"]
    assert (t.split == "train").sum() == 209
    test = t[t.split == "test"]
    assert test.label.value_counts().to_dict() == {
        "good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21,
    }  # fmt: skip
    assert Image.open(t.image_path.iloc[0]).size == (64, 64), "the adapter must reuse the 64 px generation"
    assert not (tmp_path / "cable").exists()


def test_mvtec_3d_adapter_reads_write_mvtec3d(tmp_path: Path) -> None:
    root = write_mvtec3d(tmp_path)
    assert (root / "toy_bagel" / "test" / "crack" / "xyz" / "000.tiff").is_file()
    assert not (root / "toy_rope" / "test" / "crack" / "xyz").exists()  # xyz is never needed
    samples = load_dataset("mvtec_3d", root)
    t = samples.table
    assert samples.categories() == ["toy_bagel", "toy_rope"]
    for cat in samples.categories():
        assert samples.defect_types(cat) == ["crack", "hole", "stain"]
        assert len(samples.train_paths(cat)) == 4
    assert all("/rgb/" in Path(p).as_posix() for p in t.image_path)
    defect = t[(t.split == "test") & (t.label != "good")]
    assert len(defect) == 2 * 3 * 4
    assert (defect.mask_path != "").all() and all("/gt/" in p for p in defect.mask_path)


def test_half_written_category_is_regenerated(tmp_path: Path) -> None:
    ref = _files(generate(tmp_path / "ref", "tiny", categories=("tile",)) / "tile")
    root = tmp_path / "root"
    generate(root, "tiny", categories=("tile",))
    cdir = root / "tile"
    for p in sorted((cdir / "test" / "crack").glob("*.png"))[3:]:  # damaged after it was made: still ours (marker)
        p.unlink()
    (cdir / "test" / "stain" / "000.png").write_bytes(b"")
    killed = root / ".tile.tmp-12345-deadbeef"  # the temporary folder of a killed run: its marker proves it ours
    (killed / "train" / "good").mkdir(parents=True)
    (killed / WORK_MARKER).write_text(json.dumps({"generator": "fsad-bench synthetic", "state": "generating"}))
    (killed / "train" / "good" / "000.png").write_bytes(b"half")
    (root / ".tile.tmp-12345-cafebabe" / "train").mkdir(parents=True)  # killed before its marker: holds no file
    generate(root, "tiny", categories=("tile",))
    assert _files(cdir) == ref
    assert not list(root.glob(".tile.tmp-*"))
    # a missing file, or a marker written for another seed, also counts as incomplete
    (cdir / "train" / "good" / "000.png").unlink()
    generate(root, "tiny", categories=("tile",))
    assert _files(cdir) == ref
    marker = json.loads((cdir / MARKER).read_text())
    (cdir / MARKER).write_text(json.dumps({**marker, "seed": 5}))
    generate(root, "tiny", categories=("tile",))
    assert _files(cdir) == ref


def test_folder_without_a_marker_is_never_deleted(tmp_path: Path) -> None:
    """Without the generator's marker nothing proves a folder was generated, even when every file name fits
    (MVTec AD's own names are 000.png and 000_mask.png): it is refused, not replaced."""
    root = generate(tmp_path / "root", "tiny", categories=("tile",))
    (root / "tile" / MARKER).unlink()
    foreign = root / ".tile.tmp-999-0badf00d"  # named like a temporary folder, but without our marker and not empty
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "notes.txt").write_text("mine")
    before = _files(root)
    with pytest.raises(DatasetError, match="synthetic generator did not write"):
        generate(root, "tiny", categories=("tile",))
    assert _files(root) == before
    (root / "tile" / MARKER).write_text("{}")  # a marker someone else wrote: not ours either
    with pytest.raises(DatasetError, match="synthetic generator did not write"):
        generate(root, "tiny", categories=("tile",))
    (root / "tile" / MARKER).unlink()
    shutil.rmtree(root / "tile")  # the category is gone: generated again; the foreign temporary folder is left alone
    generate(root, "tiny", categories=("tile",))
    assert (foreign / "train" / "notes.txt").read_text() == "mine"


def test_foreign_folder_is_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "tile" / "train" / "good").mkdir(parents=True)
    (tmp_path / "tile" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="holds tile/notes.txt, which the synthetic generator did not write"):
        generate(tmp_path, "tiny", categories=("tile",))
    assert (tmp_path / "tile" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tile"]  # not even a lock file was written
    # a generated category with a file of the user's added: reused as it is, but never replaced
    root = generate(tmp_path / "gen", "tiny", categories=("tile",))
    (root / "tile" / "test" / "crack" / "mine.txt").write_text("mine")
    marker = json.loads((root / "tile" / MARKER).read_text())
    (root / "tile" / MARKER).write_text(json.dumps({**marker, "seed": 5}))
    with pytest.raises(DatasetError, match="holds test/crack/mine.txt, which the generator does not write"):
        generate(root, "tiny", categories=("tile",))
    assert (root / "tile" / "test" / "crack" / "mine.txt").read_text() == "mine"


def test_unknown_names_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not in the synthetic"):
        generate(tmp_path, "tiny", categories=("bottle",))
    with pytest.raises(DatasetError, match="unknown synthetic preset"):
        generate(tmp_path, "huge")
    with pytest.raises(DatasetError, match="not in the synthetic"):
        load_dataset("synthetic-tiny", tmp_path, DatasetOptions(categories=("nope",)))


LEARN_CATEGORY = "wood"  # the hardest default category: 5 types, scratch vs crack, speckles on grain
MARGIN = 0.25


@pytest.mark.slow
def test_defect_types_are_learnable_with_random_features(tmp_path: Path) -> None:
    """5-shot nearest-class-mean on random ResNet-18 layer2+3 pooled features is far above chance."""
    import timm
    import torch

    from bench.images import IMAGENET_MEAN, IMAGENET_STD, load_rgb

    root = generate(tmp_path, "default", categories=(LEARN_CATEGORY,))
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", pretrained=False, features_only=True, out_indices=(2, 3), zero_init_last=False
    ).eval()
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)

    def features(paths: list[Path]) -> np.ndarray:
        x = np.stack(
            [(np.asarray(load_rgb(p).resize((224, 224), Image.BILINEAR), np.float32) / 255 - mean) / std for p in paths]
        )
        with torch.no_grad():
            maps = model(torch.from_numpy(x).permute(0, 3, 1, 2))
        return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1).numpy()

    types = sorted(p.name for p in (root / LEARN_CATEGORY / "test").iterdir() if p.name != "good")
    protos, queries, labels = [], [], []
    for k, t in enumerate(types):
        f = features(sorted((root / LEARN_CATEGORY / "test" / t).glob("*.png")))
        protos.append(f[:5].mean(axis=0))
        queries.append(f[5:])
        labels += [k] * (len(f) - 5)
    q, y = np.concatenate(queries), np.asarray(labels)
    pred = ((q[:, None, :] - np.stack(protos)[None]) ** 2).sum(-1).argmin(1)
    acc = float((pred == y).mean())
    chance = 1.0 / len(types)
    assert acc >= chance + MARGIN, f"accuracy {acc:.3f} is not far above chance {chance:.3f}"
    assert acc < 0.98, f"accuracy {acc:.3f}: the task is saturated, methods would not differ"


def test_defect_types_sit_around_their_zones(tmp_path: Path) -> None:
    """Each type's defects are nearer, on average, to its own zone centre than to any other type's (version 2)."""
    root = generate(tmp_path, "tiny")
    for name, spec in PRESETS["tiny"].categories.items():
        centres = {t: np.array(d.zone[:2]) for t, d in spec.defects.items()}
        assert all(d.zone is not None for d in spec.defects.values())
        for t in spec.defects:
            pts = []
            for m in sorted((root / name / "ground_truth" / t).glob("*.png")):
                ys, xs = np.nonzero(np.asarray(Image.open(m)))
                pts.append([xs.mean() / 128.0, ys.mean() / 128.0])
            mean_dist = {u: float(np.linalg.norm(np.array(pts) - c, axis=1).mean()) for u, c in centres.items()}
            assert min(mean_dist, key=mean_dist.get) == t, f"{name}/{t}: {mean_dist}"
