"""Tests of the pseudo-defect generator, texture banks and foreground masks (docs/method-notes.md §6, §5.6, §7)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.datasets.pseudo import foreground as fgm
from bench.datasets.pseudo.generator import (
    PseudoConfig,
    PseudoDefectGenerator,
    perlin_mask,
    perlin_noise_2d,
    polygon_mask,
    save_examples,
)
from bench.datasets.pseudo.textures import SKIMAGE_TEXTURES, TextureBank, load_dtd, load_textures, procedural_bank
from bench.errors import ConfigError, DatasetError
from bench.paths import shared_data_dir

DTD_TEN = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
           "crystalline"]  # fmt: skip


def disc_image(size: int = 256, radius: int = 70, centre: tuple[int, int] = (128, 128), shade: int = 0) -> np.ndarray:
    """A grey disc with a little shading on a flat light background, (size, size, 3) uint8."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), 215, np.uint8)
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    img[inside] = (90 + shade + (xx[inside] % 7) * 3)[:, None]
    return img


def disc_mask(size: int = 256, radius: int = 70, centre: tuple[int, int] = (128, 128)) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bank() -> TextureBank:
    return procedural_bank(seed=0)


@pytest.fixture()
def normals(tmp_path: Path) -> list[str]:
    """Twelve normal images: discs of varying position on a flat background (300×300 PNG, resized to 256)."""
    paths = []
    for i in range(12):
        img = disc_image(300, 80 + i, (140 + 2 * i, 150 - i), shade=i)
        p = tmp_path / "good" / f"{i:03d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


def make(normals: list[str], bank: TextureBank, seed: int = 0, **cfg: object) -> PseudoDefectGenerator:
    return PseudoDefectGenerator(normals, bank, "user_disc", PseudoConfig(**cfg), seed=seed)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_image_in_any_order(normals: list[str], bank: TextureBank) -> None:
    g1, g2 = make(normals, bank, seed=3), make(normals, bank, seed=3)
    order = [(0, 0), (5, 3), (27, 11), (1, 0)]
    first = {k: g1.image(*k) for k in order}
    for k in reversed(order):
        img, mask = g2.image(*k)
        assert np.array_equal(img, first[k][0]) and np.array_equal(mask, first[k][1])
    assert np.array_equal(g1.image(5, 3)[0], first[(5, 3)][0])  # repeated call, warm cache
    assert g1.content_key(5, 3) == g2.content_key(5, 3)
    g3 = make(normals, bank, seed=4)
    assert not np.array_equal(g3.image(5, 3)[0], first[(5, 3)][0])
    assert g3.content_key(5, 3) != g1.content_key(5, 3)
    assert g1.content_key(5, 3) != g1.content_key(5, 4) != g1.content_key(6, 3)
    assert make(normals, bank, seed=3, beta_max=0.4).content_key(5, 3) != g1.content_key(5, 3)


def test_config_key_and_validation() -> None:
    assert PseudoConfig().key() == PseudoConfig().key()
    assert PseudoConfig(mask="polygon").key() != PseudoConfig().key()
    with pytest.raises(ConfigError):
        PseudoConfig(mask="poisson")
    with pytest.raises(ConfigError):
        PseudoConfig(area_min=0.5, area_max=0.4)


# ------------------------------------------------------------------------------------------------- masks


def draem_rand_perlin_2d_np(shape: tuple[int, int], res: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """DRAEM's ``rand_perlin_2d_np`` (perlin.py) with the random angles passed in."""
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    lerp = lambda x, y, w: (y - x) * w + x  # noqa: E731
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : delta[0], 0 : res[1] : delta[1]].transpose(1, 2, 0) % 1
    grads = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile(s1: list, s2: list) -> np.ndarray:
        return np.repeat(np.repeat(grads[s1[0] : s1[1], s2[0] : s2[1]], d[0], axis=0), d[1], axis=1)

    def dot(grad: np.ndarray, shift: list) -> np.ndarray:
        g = grid[: shape[0], : shape[1]]
        return (np.stack((g[..., 0] + shift[0], g[..., 1] + shift[1]), axis=-1) * grad[: shape[0], : shape[1]]).sum(-1)

    n00, n10 = dot(tile([0, -1], [0, -1]), [0, 0]), dot(tile([1, None], [0, -1]), [-1, 0])
    n01, n11 = dot(tile([0, -1], [1, None]), [0, -1]), dot(tile([1, None], [1, None]), [-1, -1])
    t = fade(grid[: shape[0], : shape[1]])
    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


@pytest.mark.parametrize("res", [(1, 1), (2, 8), (32, 4), (16, 16)])
def test_perlin_matches_draem(res: tuple[int, int]) -> None:
    ours = perlin_noise_2d((256, 256), res, np.random.default_rng(7))
    angles = 2 * math.pi * np.random.default_rng(7).random((res[0] + 1, res[1] + 1))
    assert np.allclose(ours, draem_rand_perlin_2d_np((256, 256), res, angles), atol=1e-9)


def test_perlin_non_divisible_shape() -> None:
    noise = perlin_noise_2d((250, 199), (32, 8), np.random.default_rng(0))
    assert noise.shape == (250, 199) and np.isfinite(noise).all() and noise.std() > 0.05


def test_perlin_area_bounds() -> None:
    rng = np.random.default_rng(0)
    areas = [perlin_mask(rng, 256, 0.35, 0.1, 0.4).mean() for _ in range(60)]
    assert all(0.1 < a < 0.4 for a in areas)
    assert np.std(areas) > 0.02  # the scales really vary


def test_final_mask_inside_foreground(normals: list[str], bank: TextureBank) -> None:
    g = make(normals, bank, seed=1)
    for c, s in [(0, 0), (3, 1), (9, 2), (14, 5), (20, 7), (27, 11)]:
        smp = g.sample(c, s)
        assert 0.1 < smp.raw_mask.mean() < 0.4  # measured before the foreground
        assert smp.mask.any() and not smp.fg_fallback
        assert not (smp.mask & ~smp.foreground).any()
        assert np.array_equal(smp.mask, smp.raw_mask & smp.foreground)
        assert 0.2 < smp.foreground.mean() < 0.5  # the disc, not the whole image


def test_polygon_mask_and_classes(normals: list[str], bank: TextureBank) -> None:
    rng = np.random.default_rng(0)
    r = (256 // 5) // 2
    for n in (3, 4, 5, 6):
        m = polygon_mask(rng, 256, n)
        expected = 0.5 * n * r**2 * math.sin(2 * math.pi / n)
        assert abs(m.sum() - expected) < 0.15 * expected
    gp = make(normals, bank, mask="polygon")
    assert gp.n_classes == 4 * len(bank) == 4 * make(normals, bank).n_classes
    assert gp.class_names[:4] == [f"{bank.names[0]}/{n}-gon" for n in (3, 4, 5, 6)]
    img, mask = gp.image(5, 2)
    assert mask.any() and img.shape == (256, 256, 3)


# ------------------------------------------------------------------------------------------------ blending


def test_blend_changes_only_masked_pixels(normals: list[str], bank: TextureBank) -> None:
    g = make(normals, bank, seed=2)
    for c, s in [(0, 0), (7, 4), (26, 9)]:
        img, mask = g.image(c, s)
        normal, _ = g.source(s)
        assert img.dtype == np.uint8 and img.shape == (256, 256, 3) and mask.shape == (256, 256)
        assert np.array_equal(img[~mask], normal[~mask])
        differs = (img[mask] != normal[mask]).any(axis=1)
        assert differs.mean() > 0.5


def test_texture_bgr_swaps_channels(normals: list[str], bank: TextureBank) -> None:
    rgb, bgr = make(normals, bank), make(normals, bank, texture_bgr=True)
    a, b = rgb.image(0, 0)[0], bgr.image(0, 0)[0]
    assert not np.array_equal(a, b) and np.array_equal(rgb.image(0, 0)[1], bgr.image(0, 0)[1])


# ---------------------------------------------------------------------------------------------- foreground


def test_floodfill_recovers_disc() -> None:
    img = disc_image()
    fg = fgm.foreground_mask(img, "floodfill")
    gt = disc_mask()
    assert (fg & gt).sum() / (fg | gt).sum() > 0.9
    assert fgm.foreground_mask(img, "none").all()
    assert fgm.method_for("user_disc", img) == "floodfill"
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert fgm.method_for("user_noise", noisy) == "none"


def test_foreground_table_and_safety() -> None:
    for c in ("carpet", "grid", "leather", "tile", "wood", "rope", "tire"):
        assert fgm.FOREGROUND_METHOD[c] == "none"
    assert fgm.FOREGROUND_METHOD["metal_nut"] == "floodfill_center"
    assert fgm.FOREGROUND_METHOD["hazelnut"] == "grabcut" and fgm.FOREGROUND_METHOD["foam"] == "grabcut_foam"
    assert len(fgm.FOREGROUND_METHOD) == 25  # 15 MVTec AD + 10 MVTec 3D-AD categories
    flat = np.full((64, 64, 3), 128, np.uint8)  # flood fill takes everything: < 1 % left → whole image
    assert fgm.foreground_mask(flat, "floodfill").all()


def test_grabcut_small_colour_image() -> None:
    yy, xx = np.mgrid[0:96, 0:96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 30**2
    img = np.where(disc[..., None], np.uint8([200, 120, 60]), np.uint8([30, 140, 40])).astype(np.uint8)
    img = np.clip(img + np.random.default_rng(0).integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    for method in ("grabcut", "grabcut_foam"):
        fg = fgm.foreground_mask(img, method, orig_hw=(400, 400))
        assert (fg & disc).sum() / (fg | disc).sum() > 0.8
        assert np.array_equal(fg, fgm.foreground_mask(img, method, orig_hw=(400, 400)))  # seeded, reproducible


def test_cached_foreground_round_trip(normals: list[str], tmp_path: Path) -> None:
    first = fgm.cached_foreground(normals[0], "user_disc", 256)
    files = list((tmp_path / "cache" / "foreground").glob("*.png"))
    assert len(files) == 1 and first.dtype == bool and first.shape == (256, 256)
    assert np.array_equal(fgm.cached_foreground(normals[0], "user_disc", 256), first)
    assert not list((tmp_path / "cache" / "foreground").glob("*.tmp"))


# ------------------------------------------------------------------------------------------------ textures


def test_procedural_bank(bank: TextureBank) -> None:
    assert len(bank) >= 23 and len(set(bank.names)) == len(bank)
    assert bank.names[-3:] == list(SKIMAGE_TEXTURES)
    for img in bank.images:
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    flat = [img.tobytes() for img in bank.images]
    assert len(set(flat)) == len(flat)
    procedural = bank.images[:-3]
    assert len(procedural) >= 20
    again = procedural_bank(seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(bank.images, again.images))
    other = procedural_bank(seed=1)
    assert not np.array_equal(other.images[0], bank.images[0]) and other.digest() != bank.digest()
    assert load_textures(None, seed=0).source == bank.source


@pytest.mark.shared_data
def test_dtd_real_subset() -> None:
    root = shared_data_dir()
    if root is None or not (root / "dtd").is_dir():
        pytest.skip("the shared real DTD subset (../shared/data/dtd) is not available")
    tb = load_dtd(root / "dtd")
    assert tb.names == DTD_TEN and tb.source.startswith("dtd:")
    assert all(i.shape == (256, 256, 3) and i.dtype == np.uint8 for i in tb.images)
    first = sorted((root / "dtd" / "images" / "banded").glob("*.jpg"))[0]
    assert first.name == "banded_0002.jpg"
    also = load_dtd(root / "dtd" / "images", bgr=True)
    assert also.names == DTD_TEN and np.array_equal(also.images[0], tb.images[0][..., ::-1])


def test_dtd_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dtd(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no texture sub-folders"):
        load_dtd(tmp_path / "empty")
    bad = tmp_path / "dtd" / "images" / "banded"
    bad.mkdir(parents=True)
    (bad / "banded_0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="banded_0001.jpg"):
        load_dtd(tmp_path / "dtd")


# ------------------------------------------------------------------------------------------------ episodes


def test_sample_episode_structure(normals: list[str], bank: TextureBank) -> None:
    g = make(normals, bank)
    rng = np.random.default_rng(0)
    ep = g.sample_episode(rng)
    assert len(ep.classes) == 10 == len(set(ep.classes))
    assert len(ep.support) == 9
    for group in ep.support:
        assert [c for c, _ in group] == ep.classes
        assert len({s for _, s in group}) == 1
    support_items = {it for group in ep.support for it in group}
    assert len(ep.queries) == 9 == len(ep.query_labels)
    for (c, s), label in zip(ep.queries, ep.query_labels):
        assert ep.classes[label] == c and (c, s) not in support_items
    assert g.sample_episode(rng).classes != ep.classes  # a fresh subset per episode
    train, val = g.split_classes(5, np.random.default_rng(1))
    assert len(val) == 5 and not set(train) & set(val) and len(train) + 5 == g.n_classes
    ep2 = g.sample_episode(rng, only_classes=train)
    assert set(ep2.classes) <= set(train)
    ep3 = g.sample_episode(rng, exclude_classes=val)
    assert not set(ep3.classes) & set(val)
    gp = make(normals, bank, mask="polygon")
    ptrain, pval = gp.split_classes(5, np.random.default_rng(1))
    assert len(pval) == 20 and {gp.texture_of(c) for c in pval}.isdisjoint({gp.texture_of(c) for c in ptrain})
    with pytest.raises(ConfigError):
        g.sample_episode(rng, only_classes=range(5))


def test_save_examples_writes_png(normals: list[str], bank: TextureBank, tmp_path: Path) -> None:
    out = save_examples(make(normals, bank), tmp_path / "fig" / "examples.png", n_classes=3, n_sources=2)
    assert out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_cache_keys_follow_image_bytes_not_names(normals: list[str], bank: TextureBank, tmp_path: Path) -> None:
    """An image replaced under its name with the same size and its old modification time (a restore from a
    backup, ``cp -p``, ``rsync -t``) gets new pseudo-defect and pretraining keys: those caches hash the bytes."""
    import os
    from types import SimpleNamespace

    from bench.features import FeatureConfig
    from bench.methods._pretrain import PaperMethod

    src = tmp_path / "bmp" / "000.bmp"  # BMP: the same pixel count always gives the same file size
    src.parent.mkdir()
    img = disc_image(64)
    Image.fromarray(img).save(src)
    paths = [str(src), *normals[:3]]
    ctx = SimpleNamespace(train_paths=paths, cache_root=tmp_path / "cache", dataset="d", category="user_disc", seed=1,
                          features=SimpleNamespace(config=FeatureConfig(backbone="resnet18", weights="random")),
                          coreset_ratio=0.1)  # fmt: skip
    method = SimpleNamespace(ctx=ctx, config=SimpleNamespace(pretrain_identity=lambda: {"pretrain": True}),
                             reads=lambda config: {"patch"})  # a method's reads() (MethodBase): no memory bank
    source = SimpleNamespace(identity=lambda: {"pseudo": 1})
    keys = (make(paths, bank).content_key(2, 0), PaperMethod.pretrain_key(method, source))  # type: ignore[arg-type]
    st = src.stat()
    img[10:20, 10:20] = 0
    Image.fromarray(img).save(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    new = (make(paths, bank).content_key(2, 0), PaperMethod.pretrain_key(method, source))  # type: ignore[arg-type]
    assert new[0] != keys[0] and new[1] != keys[1]
    assert make(paths, bank).content_key(2, 1) == make(paths, bank).content_key(2, 1)  # other sources: unchanged
