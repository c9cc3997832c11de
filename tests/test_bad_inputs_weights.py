"""Bad weights and backbone options, tried for real (issue #20: item 3 and two tracebacks).

* Weights of another architecture (a resnet34 file for ``--backbone resnet18``, an ``efficientnet_b0`` file for the
  default ``tf_efficientnet_lite0``) loaded partly and the rows said "pretrained". Every source (a local file, timm's
  hub or cache) now loads strictly: one ``error:`` line naming the keys that did not fit, exit 2, before the first
  job; only the classifier head may differ, and the row names it.
* ``--layers layer3 layer2`` (deepest first) failed every job: the layers are now ordered by depth.
* ``--backbone swin_tiny_patch4_window7_224`` passed the checks and failed every job: channels-last (NHWC) maps are
  now taken, and a backbone whose maps cannot be aggregated is refused before the first job.

The weights files are written here from randomly initialised timm models: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import WeightsError
from bench.features.backbones import create_backbone
from bench.features.extractor import FeatureConfig, build_extractor, probe_grid

QUICK = ["--method", "protonet", "--shots", "1", "--seeds", "1", "--categories", "screw", "--threads", "1",
         "--no-progress"]  # fmt: skip


def state_of(name: str, **kwargs: object) -> dict[str, torch.Tensor]:
    """The state dict of a randomly initialised timm model (a stand-in for a downloaded weights file)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for label, name, kwargs in (("r34", "resnet34", {}), ("b0", "efficientnet_b0", {}), ("r18", "resnet18", {}),
                                ("r18-10", "resnet18", {"num_classes": 10})):  # fmt: skip
        out[label] = d / f"{label}.pth"
        torch.save(state_of(name, **kwargs), out[label])
    return out


def run(capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["run", "--dataset", "folder", "--data-root", str(root), *QUICK, "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache"), *extra])  # fmt: skip
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out, cap.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- item 3: strict weights
@pytest.mark.parametrize(("backbone", "label", "key"), [
    ("resnet18", "r34", "'layer1.2.conv1.weight'"),  # resnet34 has 3 blocks in layer1: resnet18 took the first 2
    (None, "b0", "'blocks.0.0.se.conv_reduce.weight'"),  # the default lite0 has no squeeze-excitation
])  # fmt: skip
def test_weights_of_another_architecture_are_refused_before_the_first_job(
    backbone: str | None, label: str, key: str, files: dict[str, Path], tiny_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    before = digest(files[label])
    code, out, err = run(capsys, tiny_root, tmp_path, *(["--backbone", backbone] if backbone else []), "--weights",
                         str(files[label]))  # fmt: skip
    name = backbone or "tf_efficientnet_lite0"
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: weights file {files[label]} does not match backbone {name!r}: "), err
    assert f"key(s) that {name} does not have ({key}" in err and " more)." in err  # the first keys and the count
    assert f"pass the weights of {name}, or choose the matching --backbone." in err
    assert not (tmp_path / "out" / "results.jsonl").exists()  # no job ran
    assert digest(files[label]) == before


def test_missing_keys_and_other_shapes_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(files["r18"], weights_only=True)
    for k in [k for k in state if k.startswith("layer4.")]:
        del state[k]
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(WeightsError) as exc:
        create_backbone("resnet18", str(tmp_path / "cut.pth"), features_only=True)
    msg = str(exc.value)
    assert "key(s) of resnet18 missing ('layer4.0.conv1.weight'" in msg
    assert "1 key(s) of another shape ('conv1.weight')" in msg
    assert "Only its classifier head (fc.*) may differ." in msg and "\n" not in msg


def test_only_the_classifier_head_may_differ_and_the_row_names_it(files: dict[str, Path], tmp_path: Path) -> None:
    ten = torch.load(files["r18-10"], weights_only=True)  # a fine-tuned 10-class classifier
    model, info = create_backbone("resnet18", str(files["r18-10"]), features_only=True)
    assert info.pretrained and info.head_not_loaded == "fc.weight, fc.bias"
    assert all(torch.equal(v, ten[k]) for k, v in model.state_dict().items())  # everything else is the file's
    torch.save({k: v for k, v in ten.items() if not k.startswith("fc.")}, tmp_path / "headless.pth")
    model, info = create_backbone("resnet18", str(tmp_path / "headless.pth"), features_only=True)
    assert info.head_not_loaded == ""  # a features model has no head: nothing left out
    full, info = create_backbone("resnet18", str(tmp_path / "headless.pth"))
    assert info.head_not_loaded == "fc.weight, fc.bias" and full.fc.weight.shape == (1000, 512)  # kept as initialised


def test_feature_models_with_renamed_stages_load_every_key(tmp_path: Path) -> None:
    """timm's feature model of a ConvNeXt names its stages ``stages_0`` where the weights say ``stages.0``."""
    import re

    state = state_of("convnext_atto")
    torch.save(state, tmp_path / "convnext.pth")
    model, info = create_backbone("convnext_atto", str(tmp_path / "convnext.pth"), features_only=True)
    own = model.state_dict()
    assert own and all(torch.equal(v, state[re.sub(r"^([a-z]+)_(\d+)\.", r"\1.\2.", k)]) for k, v in own.items())
    assert info.head_not_loaded == "head.fc.weight, head.fc.bias"


def test_timm_hub_weights_load_strictly_too(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``features_only`` timm loads its file non-strictly: a resnet34 file in the cache went into resnet18."""
    import timm.models._builder as builder

    served = {"state": torch.load(files["r34"], weights_only=True)}
    monkeypatch.setattr(builder, "load_state_dict_from_hf", lambda *a, **k: dict(served["state"]))
    with pytest.raises(WeightsError) as exc:
        create_backbone("resnet18", "imagenet", features_only=True)
    msg = str(exc.value)
    assert msg.startswith("timm's ImageNet weights for 'resnet18'") and "do not fit the architecture" in msg
    assert "layer1.2.conv1.weight" in msg and "\n" not in msg
    served["state"] = torch.load(files["r18"], weights_only=True)
    model, info = create_backbone("resnet18", "imagenet", features_only=True)
    assert info.source_kind == "hub" and info.head_not_loaded == "fc.weight, fc.bias"
    assert all(torch.equal(v, served["state"][k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------- tracebacks: layers
def test_layers_deepest_first_are_ordered_by_depth(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    given = FeatureConfig(backbone="resnet18", weights="random", layers=("layer3", "layer2"))
    canonical = FeatureConfig(backbone="resnet18", weights="random", layers=("layer2", "layer3"))
    assert given.resolved_layers == ("layer2", "layer3") and given.key() == canonical.key()
    code, out, err = run(capsys, tiny_root, tmp_path, "--backbone", "resnet18", "--weights", "random",
                         "--layers", "layer3", "layer2")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "ok" and r["features"]["layers"] == ["layer2", "layer3"] for r in rows)


# --------------------------------------------------------------------------------------------- tracebacks: NHWC maps
def test_swin_channels_last_maps_are_taken() -> None:
    config = FeatureConfig(backbone="swin_tiny_patch4_window7_224", weights="random")
    assert config.resolved_layers == ("layers.1", "layers.2")  # strides 8 and 16
    extractor, info = build_extractor(config)
    assert extractor.channels_last_maps and probe_grid(extractor, config, torch.device("cpu")) == (28, 28)
    with torch.no_grad():
        x = extractor(torch.randn(1, 3, 224, 224))
    assert x.shape == (1, config.dim, 28, 28) and bool(torch.isfinite(x).all())


def test_a_channels_last_backbone_runs(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run with an NHWC backbone (timm's tiny test MambaOut: the same layout as Swin, cheap to run)."""
    code, out, err = run(capsys, tiny_root, tmp_path, "--backbone", "test_mambaout", "--weights", "random")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "ok" for r in rows)


def test_a_backbone_that_cannot_give_maps_is_refused_before_the_first_job(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """CaiT-384 takes 384 px inputs only; the input size follows the backbone's own (384) since plain ViTs were
    taken, so a 224 input is forced here to reach the refusal."""
    from bench.features import extractor

    monkeypatch.setattr(extractor, "native_input", lambda name: (256, 224))
    code, out, err = run(capsys, tiny_root, tmp_path, "--backbone", "cait_xxs24_384", "--weights", "random",
                         "--layers", "blocks.21", "blocks.23")  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: backbone 'cait_xxs24_384' cannot compute feature maps of a 224x224 image")
    assert "Choose another --backbone (e.g. resnet50" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()
