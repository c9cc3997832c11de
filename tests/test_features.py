"""PatchCore feature pipeline (Roth et al., CVPR 2022): aggregation vs the reference ``_embed``, layout, cache,
memory bank, residuals, nearest neighbours and detection AUROC. Small images, resnet18, random weights."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench import cache as bcache
from bench.features.coreset import approximate_greedy_coreset, coreset_rng
from bench.datasets import load_dataset
from bench.features.detect import detect, format_detect
from bench.errors import BenchError
from bench.features.extractor import PatchCoreExtractor, build_extractor
from bench.features import FeatureConfig, FeatureStore, from_patches, to_patches
from bench.images import load_rgb
from bench.features.knn import MemoryBank, brute_force_nearest

CFG = FeatureConfig(backbone="resnet18", weights="random", resize=64, crop=64)  # 8×8 grid, D = 1024


def reference_embed(features: list[torch.Tensor], patchsize: int = 3, pretrain_dim: int = 1024, target_dim: int = 1024) -> torch.Tensor:
    """Direct transcription of patchcore-inspection ``PatchCore._embed`` + ``PatchMaker.patchify`` +
    ``Preprocessing``/``MeanMapper`` + ``Aggregator`` (unoptimised). Returns (B·h·w, target_dim)."""
    padding = int((patchsize - 1) / 2)
    unfolder = torch.nn.Unfold(kernel_size=patchsize, stride=1, padding=padding, dilation=1)
    feats, shapes = [], []
    for f in features:
        u = unfolder(f)
        n = [int((s + 2 * padding - 1 * (patchsize - 1) - 1) / 1 + 1) for s in f.shape[-2:]]
        u = u.reshape(*f.shape[:2], patchsize, patchsize, -1).permute(0, 4, 1, 2, 3)
        feats.append(u)
        shapes.append(n)
    ref = shapes[0]
    for i in range(1, len(feats)):
        _f = feats[i]
        pd = shapes[i]
        _f = _f.reshape(_f.shape[0], pd[0], pd[1], *_f.shape[2:])
        _f = _f.permute(0, -3, -2, -1, 1, 2)
        base = _f.shape
        _f = _f.reshape(-1, *_f.shape[-2:])
        _f = F.interpolate(_f.unsqueeze(1), size=(ref[0], ref[1]), mode="bilinear", align_corners=False)
        _f = _f.squeeze(1).reshape(*base[:-2], ref[0], ref[1])
        _f = _f.permute(0, -2, -1, 1, 2, 3)
        _f = _f.reshape(len(_f), -1, *_f.shape[-3:])
        feats[i] = _f
    feats = [x.reshape(-1, *x.shape[-3:]) for x in feats]
    pre = [F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), pretrain_dim).squeeze(1) for x in feats]
    x = torch.stack(pre, dim=1)
    x = F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), target_dim)
    return x.reshape(len(x), -1)


# ---------------------------------------------------------------- aggregation and layout
@pytest.mark.parametrize(
    "channels,sizes,fast,target",
    [
        ((512, 1024), (28, 14), True, 1024),  # resnet50 / wide_resnet50_2
        ((128, 256), (28, 14), True, 1024),  # resnet18
        ((512, 1024), (12, 6), False, 1024),  # generic unfold + adaptive-pool path
        ((64, 128, 256), (8, 4, 2), True, 1000),  # 3 layers, windows straddling layers → generic path
    ],
)
def test_aggregation_matches_reference_embed(channels, sizes, fast, target) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    feats = [torch.randn(2, c, s, s) for c, s in zip(channels, sizes)]
    ex = PatchCoreExtractor(torch.nn.Identity(), channels, target_dim=target, fast=fast)
    y = ex.aggregate(feats)
    assert y.shape == (2, target, sizes[0], sizes[0]) and y.dtype == torch.float32
    ref = reference_embed(feats, target_dim=target)
    torch.testing.assert_close(to_patches(y), ref, atol=1e-5, rtol=1e-5)
    if target == 1024 and len(channels) == 2 and channels[0] == 512:
        assert ex.fast == fast


def test_extractor_end_to_end_matches_reference() -> None:
    ex, info = build_extractor(CFG)
    assert info.weights == "random" and info.zero_init_last is False
    x = torch.randn(3, 3, 64, 64)
    feats = ex.backbone_features(x)
    assert [f.shape[1] for f in feats] == [128, 256]
    y = ex(x)
    assert y.shape == (3, 1024, 8, 8)
    torch.testing.assert_close(to_patches(y), reference_embed(feats), atol=1e-5, rtol=1e-5)


def test_layout_channels_are_features_and_positions_are_patches() -> None:
    ex = PatchCoreExtractor(torch.nn.Identity(), (512, 1024))
    torch.manual_seed(1)
    f2, f3 = torch.randn(1, 512, 28, 28), torch.randn(1, 1024, 14, 14)
    y = ex.aggregate([f2, f3])
    # dims 0-511 come from layer2 only, 512-1023 from layer3 only
    y3 = ex.aggregate([f2, f3 + torch.randn_like(f3)])
    assert torch.equal(y[:, :512], y3[:, :512]) and not torch.allclose(y[:, 512:], y3[:, 512:])
    # a change at layer2 position (10, 20) only moves patches in its 3×3 neighbourhood
    g2 = f2.clone()
    g2[0, :, 10, 20] += 5
    changed = (ex.aggregate([g2, f3]) - y).abs().amax(1)[0] > 1e-6
    assert changed.nonzero().tolist() == [[r, c] for r in (9, 10, 11) for c in (19, 20, 21)]
    # to_patches is row-major over positions, D values per patch
    p = to_patches(y)
    assert p.shape == (784, 1024)
    torch.testing.assert_close(p, y.flatten(2).transpose(1, 2).reshape(-1, 1024))
    torch.testing.assert_close(p[10 * 28 + 20], y[0, :, 10, 20])
    assert torch.equal(from_patches(p, 28, 28), y)


def test_random_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, _ = build_extractor(CFG)
    b, _ = build_extractor(CFG)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_bf16_is_opt_in_and_close() -> None:
    ex32, _ = build_extractor(CFG)
    ex16, _ = build_extractor(dataclasses.replace(CFG, precision="bf16"))
    x = torch.randn(2, 3, 64, 64)
    a, b = ex32(x), ex16(x)
    assert b.dtype == torch.float32
    assert ((a - b).norm() / a.norm()).item() < 0.05


def test_feature_config_key(tmp_path: Path) -> None:
    base = FeatureConfig()
    assert base.key() == FeatureConfig().key()
    changed = [FeatureConfig(backbone="wide_resnet50_2"), FeatureConfig(weights="random"),
               FeatureConfig(layers=("layer2",)), FeatureConfig(resize=320), FeatureConfig(crop=256),
               FeatureConfig(patch_size=5), FeatureConfig(pretrain_dim=512), FeatureConfig(target_dim=512),
               FeatureConfig(precision="bf16"), FeatureConfig(storage="fp16")]
    keys = {c.key() for c in changed}
    assert len(keys) == len(changed) and base.key() not in keys
    # random init: None means False for ResNets; True differs; the init seed matters
    r = FeatureConfig(weights="random")
    assert r.key() == FeatureConfig(weights="random", zero_init_last=False).key()
    assert r.key() != FeatureConfig(weights="random", zero_init_last=True).key()
    assert r.key() != FeatureConfig(weights="random", init_seed=1).key()
    # a weights file is identified by its content, not its path
    w = tmp_path / "w.pth"
    w.write_bytes(b"one")
    k1 = FeatureConfig(weights=str(w)).key()
    w2 = tmp_path / "copy.pth"
    w2.write_bytes(b"one")
    assert FeatureConfig(weights=str(w2)).key() == k1
    w2.write_bytes(b"two")
    assert FeatureConfig(weights=str(w2)).key() != k1


# ---------------------------------------------------------------- data helpers
def _write_tree(root: Path, n_train: int = 10, n_good: int = 6, n_defect: int = 6, size: int = 64, test_good: bool = True) -> Path:
    """A small MVTec-layout category: striped grey texture; defects are bright blobs or dark bars."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]

    def normal() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi)
        img = 120 + 25 * np.sin(xx / 3.0 + phase) + rng.normal(0, 4, (size, size))
        return np.repeat(img[..., None], 3, 2)

    def save(arr: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)

    cat = root / "widget"
    for i in range(n_train):
        save(normal(), cat / "train" / "good" / f"{i:03d}.png")
    if test_good:
        for i in range(n_good):
            save(normal(), cat / "test" / "good" / f"{i:03d}.png")
    for i in range(n_defect):
        img = normal()
        cy, cx = rng.integers(12, size - 12, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = [255, 230, 40]
        save(img, cat / "test" / "blob" / f"{i:03d}.png")
        img = normal()
        r0 = rng.integers(10, size - 14)
        img[r0 : r0 + 4, 8 : size - 8] = 10
        save(img, cat / "test" / "bar" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture()
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(CFG, cache_root=tmp_path / "cache", batch_size=4, num_workers=2)


def _train(tree: Path) -> list[str]:
    return sorted(str(p) for p in (tree / "widget" / "train" / "good").glob("*.png"))


def _test(tree: Path) -> list[str]:
    return sorted(str(p) for p in (tree / "widget" / "test").rglob("*.png"))


# ---------------------------------------------------------------- store and cache
def test_store_computes_once_and_reuses(store: FeatureStore, tree: Path) -> None:
    paths = _train(tree)[:6] + _train(tree)[:1]  # a duplicate is computed once
    a = store.patch_features(paths)
    assert a.shape == (7, 1024, 8, 8) and a.dtype == torch.float32
    assert store.stats["features"]["misses"] == 6 and store.stats["features"]["hits"] == 0
    torch.testing.assert_close(a[6], a[0])
    # the cached values are the extractor's output for the decoded, pre-processed image
    x = torch.from_numpy(store.preprocess(paths[2]))[None]
    torch.testing.assert_close(a[2:3], store.extractor(x), atol=1e-5, rtol=1e-5)
    b = store.patch_features(paths)
    assert store.stats["features"]["hits"] == 6 and store.stats["features"]["misses"] == 6
    assert torch.equal(a, b)
    files = sorted((store.cache.root / "features" / store.key).iterdir())
    assert len(files) == 6 and all(f.name == bcache.file_sha256(f"{p}") + ".npy" for f, p in zip(files, sorted(paths[:6], key=bcache.file_sha256)))
    assert not [f for f in files if f.name.startswith(bcache.TMP_PREFIX)]
    # a new store (another process) finds the same entries
    other = FeatureStore(CFG, cache_root=store.cache.root)
    assert torch.equal(other.patch_features(paths[:3]), a[:3]) and other.stats["features"]["misses"] == 0


def test_cache_invalidation(store: FeatureStore, tmp_path: Path) -> None:
    src = _write_tree(tmp_path / "src", n_train=3, n_good=1, n_defect=1)
    p = _train(src)[0]
    f0 = store.patch_features([p])
    # same bytes at another path: a hit; changed bytes at the same path: a miss with new values
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(p).read_bytes())
    store.patch_features([str(copy)])
    assert store.stats["features"]["hits"] == 1
    img = np.asarray(load_rgb(p)).copy()
    img[:8] = 0
    Image.fromarray(img).save(copy)
    f1 = store.patch_features([str(copy)])
    assert store.stats["features"]["misses"] == 2 and not torch.equal(f0, f1)
    # a truncated entry (a killed writer without atomic rename) is never read as valid: recomputed
    entry = store.cache.path("features", store.key, bcache.file_sha256(p))
    entry.write_bytes(entry.read_bytes()[:1000])
    assert torch.equal(store.patch_features([p]), f0)
    assert store.stats["features"]["misses"] == 3 and entry.stat().st_size > 200_000
    # another config → another key and folder
    s2 = FeatureStore(dataclasses.replace(CFG, patch_size=1), cache_root=store.cache.root)
    assert s2.key != store.key
    assert not torch.equal(s2.patch_features([p]), f0) and s2.stats["features"]["misses"] == 1
    # bank keys follow seed, ratio and the train images' content
    train = _train(src)
    b1 = store.bank(train, seed=0, min_points=100)
    assert store.bank(train, seed=0, min_points=100) is b1
    assert store.bank(train, seed=1, min_points=100).key != b1.key
    assert store.bank(train, seed=0, coreset_ratio=0.2, min_points=100).key != b1.key
    assert store.bank(train[:2] + [str(copy)], seed=0, min_points=100).key != b1.key


def test_file_hash_memo(tmp_path: Path) -> None:
    f = tmp_path / "img.bin"
    f.write_bytes(b"abc")
    memo = tmp_path / "memo"
    h = bcache.file_sha256(f, memo)
    assert h == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (entry,) = memo.iterdir()
    entry.write_text("0" * 64)  # a new process reads the memo instead of hashing again
    bcache.forget_file_hashes()
    assert bcache.file_sha256(f, memo) == "0" * 64
    f.write_bytes(b"abcd")  # a changed file is hashed again
    assert bcache.file_sha256(f, memo) != "0" * 64 and len(list(memo.iterdir())) == 2


def test_atomic_writes_and_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "k" / "ns" / "e.npy"
    arr = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    threads = [threading.Thread(target=bcache.save_npy, args=(path, arr)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(bcache.load_npy(path, (100, 1000), np.float32), arr)
    assert [p.name for p in path.parent.iterdir()] == ["e.npy"]
    assert bcache.load_npy(path, (100, 999), np.float32) is None  # wrong shape = miss
    assert bcache.load_npy(path, (100, 1000), np.float16) is None  # wrong dtype = miss

    def boom(f) -> None:  # noqa: ANN001
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bcache.atomic_write(path, boom)
    np.testing.assert_array_equal(bcache.load_npy(path), arr)  # the old entry is intact, no temp left
    assert [p.name for p in path.parent.iterdir()] == ["e.npy"]


def test_damaged_entries_are_detected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Entries carry a CRC-32 of their data: the same bytes overwritten with NaN or garbage (valid header, right
    size) fail the check, as does a plain ``np.save`` (no trailer), with a warning naming the entry; an entry
    rewritten after its checksum was verified is verified again."""
    path = tmp_path / "e.npy"
    arr = np.arange(64 * 1024, dtype=np.float32).reshape(64, 1024)
    bcache.save_npy(path, arr)
    np.testing.assert_array_equal(np.load(path), arr)  # still a .npy file for numpy
    out = np.empty_like(arr)
    assert bcache.read_npy_into(path, out) and np.array_equal(out, arr)  # verified (and memoised)
    offset = bcache.check_npy(path, arr.shape, arr.dtype)
    assert offset is not None
    for damage in (np.full(arr.size, np.nan, np.float32).tobytes(), np.random.default_rng(0).bytes(arr.nbytes)):
        raw = bytearray(path.read_bytes())
        raw[offset : offset + arr.nbytes] = damage
        path.write_bytes(bytes(raw))
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert bcache.load_npy(path) is None and not bcache.read_npy_into(path, out)
        assert f"cache entry {path} is damaged (its checksum does not match its data)" in caplog.text
    np.save(path, arr)  # right data, no checksum: not an entry of this format
    assert bcache.load_npy(path) is None


def test_non_finite_features_are_never_cached(tmp_path: Path, tree: Path) -> None:
    s = FeatureStore(CFG, cache_root=tmp_path / "cache")
    with torch.no_grad():
        next(s.extractor.parameters())[0, 0, 0, 0] = float("nan")  # as damaged weights would
    with pytest.raises(BenchError, match="produced non-finite features \\(NaN or inf\\) for 2 image\\(s\\)"):
        s.patch_features(_train(tree)[:2])
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_exif_rotated_image_has_the_features_of_the_upright_image(store: FeatureStore, tmp_path: Path) -> None:
    """Decoding applies the EXIF orientation (recorded in the feature key and rows as ``decoding``)."""
    arr = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    tagged, upright = tmp_path / "tagged.png", tmp_path / "upright.png"
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: turn 90° counter-clockwise to view
    Image.fromarray(arr).save(tagged, exif=exif)
    Image.fromarray(np.ascontiguousarray(np.rot90(arr))).save(upright)
    f = store.patch_features([str(tagged), str(upright)])
    assert store.stats["features"]["misses"] == 2  # two files, two entries
    assert torch.equal(f[0], f[1])
    from bench.images import DECODING

    assert DECODING["exif_orientation"] == "applied" and store.record()["decoding"] == DECODING


def test_cache_info_and_clear(store: FeatureStore, tree: Path) -> None:
    bcache.forget_file_hashes()  # the disk memo is written on an in-process miss: other tests hashed these files
    store.patch_features(_train(tree)[:2])
    (store.cache.root / "features" / f"{bcache.TMP_PREFIX}left-over").write_bytes(b"x")
    df = bcache.info(store.cache.root)
    row = df[df.kind == "features"].iloc[0]
    assert row.files == 2 and row.tmp_files == 1 and row.bytes > 2 * 8 * 8 * 1024 * 4
    assert "features" in bcache.format_info(df)
    assert df[df.kind == "hashes"].iloc[0].files == 2  # the image hash memo
    removed = bcache.clear(store.cache.root, kinds=["features"])
    assert int(removed[removed.kind == "total"].files.iloc[0]) == 2
    assert not (store.cache.root / "features").exists() and (store.cache.root / "hashes").exists()
    bcache.clear(store.cache.root)
    assert bcache.info(store.cache.root).iloc[-1].bytes == 0


def test_arrays_match_files_and_are_cached(store: FeatureStore, tree: Path) -> None:
    paths = _train(tree)[:3]
    imgs = [np.asarray(load_rgb(p)) for p in paths]
    a = store.patch_features_arrays(imgs, ["k0", "k1", "k2"])
    torch.testing.assert_close(a, store.patch_features(paths))
    store.reset_stats()

    class Lazy:  # only indexed on a miss
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> np.ndarray:
            raise AssertionError("cached arrays must not be regenerated")

    assert torch.equal(store.patch_features_arrays(Lazy(), ["k0", "k1", "k2"]), a)
    with pytest.raises(Exception, match="uint8"):
        store.patch_features_arrays([imgs[0].astype(np.float32)], ["f"])


# ---------------------------------------------------------------- bank, residuals, nearest neighbours
def test_bank_streams_and_equals_direct_coreset(store: FeatureStore, tree: Path) -> None:
    train = _train(tree)
    bank = store.bank(train, seed=3, coreset_ratio=0.1, min_points=100)
    feats = to_patches(store.patch_features(train)).numpy()
    sel = approximate_greedy_coreset(feats, 0.1, coreset_rng(3), min_points=100)
    assert len(bank) == len(sel) == 100 and bank.meta["n_total"] == len(feats)
    np.testing.assert_array_equal(bank.vectors, feats[sel])
    again = FeatureStore(CFG, cache_root=store.cache.root).bank(train, seed=3, coreset_ratio=0.1, min_points=100)
    np.testing.assert_array_equal(again.vectors, bank.vectors)
    assert again.key == bank.key


def test_residuals_and_scores(store: FeatureStore, tree: Path) -> None:
    bank = store.bank(_train(tree), seed=0, min_points=100)
    paths = _test(tree)[:5]
    f = store.patch_features(paths)
    r = store.residuals(paths, bank)
    assert r.shape == f.shape == (5, 1024, 8, 8)
    _, idx = brute_force_nearest(bank.vectors, to_patches(f))
    torch.testing.assert_close(to_patches(r), to_patches(f) - torch.from_numpy(bank.vectors[idx]))
    scores = store.anomaly_scores(paths, bank)
    torch.testing.assert_close(torch.from_numpy(scores), to_patches(r).norm(dim=1).reshape(5, -1).amax(1))
    hits = store.stats["nn"]["hits"]
    assert torch.equal(store.residuals(paths, bank), r) and store.stats["nn"]["hits"] == hits + 5
    # with the whole bank (no coreset), train images are their own nearest neighbours
    full = store.bank(_train(tree)[:2], seed=0, coreset_ratio=1.0)
    assert len(full) == 2 * 64
    assert store.residuals(_train(tree)[:2], full).abs().max() == 0
    imgs = [np.asarray(load_rgb(p)) for p in paths[:2]]
    torch.testing.assert_close(store.residuals_arrays(imgs, ["a", "b"], bank), r[:2])
    # a bank built by hand (no key) works but its neighbours are never cached
    n_files = len(list((store.cache.root / "nn").rglob("*")))
    assert torch.equal(store.residuals(paths, MemoryBank(bank.vectors)), r)
    assert len(list((store.cache.root / "nn").rglob("*"))) == n_files


def test_faiss_nearest_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    bank = MemoryBank(rng.standard_normal((3000, 1024)).astype(np.float32), key="t")
    q = rng.standard_normal((2500, 1024)).astype(np.float32)
    d, i = bank.nearest(q, chunk=1000)
    db, ib = brute_force_nearest(bank.vectors, q)
    assert (i == ib).mean() == 1.0
    np.testing.assert_allclose(d, db, rtol=1e-4)
    d0, i0 = bank.nearest(bank.vectors[:50])
    np.testing.assert_array_equal(i0, np.arange(50))
    assert np.abs(d0).max() < 1e-2


# ---------------------------------------------------------------- detection
def test_detect_auroc_on_generated_tree(store: FeatureStore, tree: Path) -> None:
    samples = load_dataset("folder", tree)
    df = detect(samples, store, seed=0)
    assert list(df.columns[:5]) == ["category", "n_train", "n_good", "n_defect", "auroc"]
    row = df.iloc[0]
    assert (row.n_train, row.n_good, row.n_defect) == (10, 6, 12)
    assert row.auroc > 0.9
    assert "widget" in format_detect(df)


def test_detect_without_test_good_gives_nan_and_note(store: FeatureStore, tmp_path: Path) -> None:
    samples = load_dataset("folder", _write_tree(tmp_path / "nogood", n_train=2, n_defect=2, test_good=False))
    df = detect(samples, store, seed=0)
    assert math.isnan(df.auroc.iloc[0]) and "test/good" in df.note.iloc[0]
    assert store.stats["features"]["misses"] == 0  # nothing computed for it
    assert "n/a" in format_detect(df)


def test_detect_on_shared_screw_has_no_test_good(store: FeatureStore, shared_screw: Path) -> None:
    df = detect(load_dataset("mvtec_ad", shared_screw), store, seed=0)
    assert df.category.tolist() == ["screw"] and math.isnan(df.auroc.iloc[0]) and df.n_good.iloc[0] == 0


def test_detect_auroc_on_builtin_synthetic_data(tmp_path: Path) -> None:
    try:
        samples = load_dataset("synthetic-tiny")
    except KeyError:
        pytest.skip("the built-in synthetic dataset is not available")
    store = FeatureStore(FeatureConfig(backbone="resnet18", weights="random"), cache_root=tmp_path)
    df = detect(samples, store, seed=0)
    assert df.auroc.notna().all()
    assert df.auroc.mean() > 0.65, format_detect(df)
