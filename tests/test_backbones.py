"""Backbones, weights sources and feature stages: ResNet keys pinned, any timm backbone, weights packages.

The pinned keys were computed on the commit before EfficientNet support (c1790b6) with timm 1.0.31 (the
ImageNet weights identity includes timm's version): ResNet results and caches keyed by them stay valid.
"""

from __future__ import annotations

import pytest

from bench.extractor import FeatureConfig

PINNED_KEYS = {
    ("resnet18", "random"): "41b77ee50cb0741c827f4b4b",
    ("resnet50", "random"): "574aab7b986d34c582b7da44",
    ("resnet50", "imagenet"): "f9614f4fba488f45b042d7aa",
    ("wide_resnet50_2", "imagenet"): "b2ee69c172db4272043da1f7",
}


@pytest.mark.parametrize("backbone, weights", sorted(PINNED_KEYS))
def test_resnet_default_keys_are_unchanged(backbone: str, weights: str) -> None:
    import timm

    if weights == "imagenet" and timm.__version__ != "1.0.31":
        pytest.skip(f"the ImageNet key includes timm's version; pinned with 1.0.31, this is {timm.__version__}")
    assert FeatureConfig(backbone=backbone, weights=weights).key() == PINNED_KEYS[(backbone, weights)]
    # what tests and small runs use: a 64 px crop and the squash fit
    assert FeatureConfig(backbone="resnet18", weights="random", resize=64, crop=64).key() == "758650d6b4b364aa9dc0e14a"
    assert FeatureConfig(backbone="resnet18", weights="random", image_fit="squash").key() == "1ed515fcecc70457e8fb92e7"
