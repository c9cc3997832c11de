"""Stronger backbones (#22): plain vision transformers by timm name, AnomalyDINO's image score, native input sizes.

* A ViT's feature grid is its patch tokens (class and register tokens dropped) reshaped to (D, H/p, W/p), from two
  blocks at half and three quarters of its depth (``blocks.5`` / ``blocks.8`` of a 12-block ViT), through the same
  PatchCore pipeline (feature config, extractor, cache key, every method and detector). Tested offline with random
  init and with a local weights file written here (timm's tiny ``test_vit``: 6 blocks of 64 dims, 160 px); the hub
  (``--weights imagenet``) is the real path for users with internet and is only asked here to fail offline.
* ``patchcore-kshot`` takes AnomalyDINO's image score (the mean of the top 1 % patch distances) as an option; the
  variant ``anomalydino`` sets it. The default stays the maximum, with the same job keys.
* The input size follows the backbone's own (timm's pretrained ``input_size``): Lite2 at 260, DINOv2 at 518; every
  224 backbone keeps 256 / 224 and its cache keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError, WeightsError
from bench.features.backbones import check_backbone_name, default_layers, feature_stages, token_backbone
from bench.features.extractor import FeatureConfig, build_extractor, probe_grid
from bench.images import IMAGENET_MEAN, IMAGENET_STD
from bench.method import config_dict

DINOV2 = "vit_small_patch14_dinov2.lvd142m"
CLIP = "vit_base_patch16_clip_224.openai"
CPU = torch.device("cpu")


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def run(capsys: pytest.CaptureFixture[str], root: Path, out: Path, *argv: str) -> tuple[int, str]:
    code = main(["run", "--dataset", "folder", "--data-root", str(root), "--categories", "screw", "--shots", "1",
                 "--seeds", "1", "--threads", "1", "--no-progress", "--out", str(out),
                 "--cache-dir", str(out.parent / "cache"), *argv])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.fixture(scope="module")
def test_vit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state dict of a randomly initialised ``test_vit`` (a stand-in for a downloaded file)."""
    import timm

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("weights") / "test_vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------- stages and grids
def test_vit_names_with_tags_every_block_a_stage_and_the_default_blocks() -> None:
    stages = feature_stages(DINOV2)
    assert [(s.name, s.stride, s.channels) for s in stages] == [(f"blocks.{i}", 14, 384) for i in range(12)]
    assert token_backbone(DINOV2) and token_backbone(CLIP) and not token_backbone("resnet18")
    assert default_layers(DINOV2) == ("blocks.5", "blocks.8") == default_layers(CLIP)
    assert default_layers("vit_small_patch16_224") == ("blocks.5", "blocks.8")
    assert default_layers("vit_large_patch14_dinov2") == ("blocks.11", "blocks.17")  # 24 blocks
    assert default_layers("test_vit") == ("blocks.2", "blocks.3")  # 6 blocks
    with pytest.raises(WeightsError, match="unknown backbone 'vit_small_patch14_dinov2.nosuchtag'"):
        check_backbone_name("vit_small_patch14_dinov2.nosuchtag")
    # native input size and normalisation from timm's pretrained config; 384·9 values a layer: PatchCore's pooling
    dino = FeatureConfig(backbone=DINOV2, weights="random")
    assert (dino.resize, dino.crop) == (592, 518) and dino.normalisation == (IMAGENET_MEAN, IMAGENET_STD)
    assert dino.layer_dims == (1024, 1024) and dino.reference_aggregation
    clip = FeatureConfig(backbone=CLIP, weights="random")
    assert (clip.resize, clip.crop) == (256, 224) and clip.normalisation[0] == (0.48145466, 0.4578275, 0.40821073)
    assert clip.record()["layers"] == ["blocks.5", "blocks.8"]
    assert clip.key() != FeatureConfig(backbone="vit_base_patch16_clip_224", weights="random").key()  # the tag is kept


def test_patch_tokens_through_the_final_norm_are_the_grid_class_and_register_tokens_dropped() -> None:
    """DINOv2 with 4 registers (5 prefix tokens) at 56 px: a 4 × 4 grid of patch tokens; each map equals the block's
    tokens through the model's final norm, prefix tokens dropped, reshaped row-major; blocks past blocks.8 dropped."""
    cfg = FeatureConfig(backbone="vit_small_patch14_reg4_dinov2.lvd142m", weights="random", resize=56, crop=56)
    extractor, info = build_extractor(cfg)
    assert info.source_kind == "random" and probe_grid(extractor, cfg, CPU) == (4, 4)
    x = torch.randn(2, 3, 56, 56)
    maps = extractor.backbone_features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 384, 4, 4)] * 2
    vit = extractor.backbone.model
    assert vit.num_prefix_tokens == 5 and len(vit.blocks) == 9
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        want = []
        for i, block in enumerate(vit.blocks):
            t = block(t)
            if i in (5, 8):
                want.append(vit.norm(t)[:, 5:].reshape(2, 4, 4, 384).permute(0, 3, 1, 2))
    for got, ref in zip(maps, want):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert extractor.aggregate(maps).shape == (2, 1024, 4, 4)


# --------------------------------------------------------------------------------------------- end to end, offline
def test_random_vit_runs_detection_end_to_end_with_both_scores(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    code, err = run(capsys, tiny_root, tmp_path / "out", "--task", "detection", "--method", "patchcore-kshot",
                    "anomalydino", "--backbone", "test_vit", "--weights", "random")  # fmt: skip
    assert code == 0, err
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 2 and all(r["status"] == "ok" and 0 <= r["image_auroc"] <= 1 for r in rows)
    for r in rows:
        assert r["features"]["layers"] == ["blocks.2", "blocks.3"] and r["features"]["crop"] == 160
        assert r["weights"]["source_kind"] == "random"
    by = {r["method"]: r for r in rows}
    assert by["anomalydino"]["method_config"] == {"coreset_ratio": 1.0, "top_fraction": 0.01}
    assert by["patchcore-kshot"]["method_config"] == {"coreset_ratio": 1.0}  # the key of max-score runs is unchanged
    # a 10 × 10 grid: ⌊0.01 · 100⌋ = 1 patch, so the top-1 % mean is the maximum
    assert by["anomalydino"]["scores"] == by["patchcore-kshot"]["scores"]


def test_a_local_vit_weights_file_loads_strictly_and_another_is_refused(
    tiny_root: Path, tmp_path: Path, test_vit_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    state = torch.load(test_vit_file, weights_only=True)
    extractor, info = build_extractor(FeatureConfig(backbone="test_vit", weights=str(test_vit_file)))
    assert info.source_kind == "file" and info.head_not_loaded == ""  # the whole ViT took every key
    torch.testing.assert_close(extractor.backbone.model.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    code, err = run(capsys, tiny_root, tmp_path / "out", "--method", "protonet", "--backbone", "test_vit", "--weights",
                    str(test_vit_file))  # fmt: skip
    assert code == 0, err
    rows = rows_of(tmp_path / "out")
    assert rows and all(r["status"] == "ok" and r["weights"]["source_kind"] == "file" for r in rows)
    # a ViT file of another width: the strict-loading error, one line, before the first job
    import timm

    wrong = tmp_path / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), wrong)
    code, err = run(capsys, tiny_root, tmp_path / "wrong", "--method", "protonet", "--backbone", "test_vit",
                    "--weights", str(wrong))  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: weights file {wrong} does not match backbone 'test_vit'") and "another shape" in err
    assert not (tmp_path / "wrong" / "results.jsonl").exists()


def test_hub_weights_go_into_the_whole_vit_strictly(test_vit_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path of a user with internet: timm's hub file (served here from the test's file) loads into the ViT built
    for any input size (dynamic_img_size), every key, then its blocks are taken."""
    import timm.models._builder as builder

    state = torch.load(test_vit_file, weights_only=True)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", lambda *a, **k: dict(state))
    cfg = FeatureConfig(backbone="test_vit", weights="imagenet", resize=64, crop=64)
    extractor, info = build_extractor(cfg)
    assert info.source_kind == "hub" and info.source == "timm/test_vit.r160_in1k" and info.head_not_loaded == ""
    assert extractor.backbone.model.dynamic_img_size and probe_grid(extractor, cfg, CPU) == (4, 4)
    torch.testing.assert_close(extractor.backbone.model.pos_embed, state["pos_embed"])  # kept at 160 px, resampled on use


def test_hub_weights_offline_are_one_line_naming_the_way_out(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    code, err = run(capsys, tiny_root, tmp_path / "out", "--method", "protonet", "--backbone", DINOV2)
    assert code == 2 and err.count("\n") == 1, err
    assert f"could not load ImageNet weights for '{DINOV2}'" in err and "HF_HUB_OFFLINE=1" in err


# --------------------------------------------------------------------------------------------- AnomalyDINO's score
def test_top_one_percent_score_on_a_hand_made_map() -> None:
    from bench.detection.detector import get_detector
    from bench.detectors.patchcore_kshot import top_fraction_score

    maps = np.zeros((2, 20, 20), np.float32)  # 400 patches: the top 1 % is 4 of them
    maps[0, 0, :5] = [10, 8, 6, 4, 2]
    maps[1, 3, 3] = 5.0  # one hot patch: the mean of the top 4 is 5 / 4
    want = np.array([(10 + 8 + 6 + 4) / 4, 5 / 4], np.float32)
    np.testing.assert_allclose(top_fraction_score(maps, 0.01), want)
    np.testing.assert_array_equal(top_fraction_score(maps, 0.0), [10, 5])  # the maximum
    np.testing.assert_array_equal(top_fraction_score(maps[:, :9, :9], 0.01), [10, 5])  # 81 patches: ⌊0.81⌋ = 0 → max
    spec = get_detector("anomalydino")
    det = spec.cls(spec.make_config({}), None)
    det.anomaly_maps = lambda paths: maps
    np.testing.assert_allclose(det.score(["a", "b"]), want)
    kshot = get_detector("patchcore-kshot")
    assert config_dict(kshot.make_config({})) == {"coreset_ratio": 1.0}
    with pytest.raises(ConfigError, match=r"patchcore-kshot': top_fraction must lie in \[0, 1\]"):
        kshot.make_config({"top_fraction": 1.5})


# --------------------------------------------------------------------------------------------- native input sizes
def test_input_size_follows_the_backbone_and_224_backbones_keep_their_keys() -> None:
    lite2 = FeatureConfig(backbone="tf_efficientnet_lite2", weights="random")
    assert (lite2.resize, lite2.crop) == (297, 260) and lite2.record()["crop"] == 260
    assert lite2.key() != FeatureConfig(backbone="tf_efficientnet_lite2", weights="random", resize=256, crop=224).key()
    extractor, _ = build_extractor(lite2)
    assert probe_grid(extractor, lite2, CPU) == (33, 33)
    for name in ("tf_efficientnet_lite0", "resnet18", "resnet50"):
        native = FeatureConfig(backbone=name, weights="random")
        assert (native.resize, native.crop) == (256, 224)
        assert native.key() == FeatureConfig(backbone=name, weights="random", resize=256, crop=224).key()
    assert FeatureConfig(backbone="tf_efficientnet_lite2", crop=224).resize == 297  # each size defaults on its own
