"""AnomalyNCD's learned part: the mask-guided attention, the weights a user may supply, and the training loop end to
end on a tiny ViT on the built-in data (plumbing: it runs, trains at every step without a base set, its losses go
down, and its row says it is not the paper's DINO ViT-B/8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.discoverers.anomalyncd import AnomalyNCDConfig, Heads, MaskGuidedViT, build_vit, info_nce, memax
from bench.errors import WeightsError
from bench.results import read_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = AnomalyNCDConfig(vit_img_size=32, vit_depth=2, mask_layers=2, train_blocks=1)


def test_mask_guided_attention_hides_the_patches_from_the_class_token() -> None:
    vit, info = build_vit(SMALL)
    assert info["weights"] == "random" and info["pretrained"] is False and "not the paper's" in info["note"]
    model = MaskGuidedViT(vit, mask_layers=2, train_blocks=1).eval()
    x1, x2 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).split(1)
    none, full = torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x1, none), model(x2, none))  # every block masked: the patches never reach it
        assert not torch.allclose(model(x1, full), model(x2, full))
        half = torch.zeros(1, 1, 32, 32)
        half[..., :16, :16] = 1  # one patch of 16 x 16 in, three out
        assert not torch.allclose(model(x1, half), model(x2, half))
        x3 = x2.clone()
        x3[..., :16, :16] = x1[..., :16, :16]  # the same visible patch, different hidden ones ... differ only
        assert not torch.allclose(model(x1, half), model(x3, half))  # through the patch tokens' own mixing
        one_unmasked = MaskGuidedViT(vit, mask_layers=1, train_blocks=1).eval()  # block 0 plain: CLS sees patches
        assert not torch.allclose(one_unmasked(x1, none), one_unmasked(x2, none))
    bias = model.attention_bias(half)
    assert bias.shape == (1, 1, 5, 5) and bias[0, 0, 0].tolist() == [0, 0, -1e9, -1e9, -1e9]
    assert (bias[0, 0, 1:] == 0).all()  # only the class token's query row is masked
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("vit.blocks.1.", "vit.norm.")) for n in trained)


def test_heads_and_losses() -> None:
    heads = Heads(dim=8, k=3, n_head=4, hidden=16, bottleneck=4)
    proj, logits = heads(torch.randn(6, 8))
    assert proj.shape == (6, 4) and len(logits) == 4 and all(lg.shape == (6, 3) and lg.abs().max() <= 1 + 1e-6 for lg in logits)
    even = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    assert memax(even) < 1e-3 and memax(torch.tensor([[10.0, 0, 0]] * 3)) > 1.0  # collapse is penalised
    twins = torch.nn.functional.normalize(torch.randn(4, 5), dim=1).repeat(2, 1)
    assert info_nce(twins, 0.1) < info_nce(torch.randn(8, 5), 0.1)


def test_user_supplied_weights_in_dino_layout(tmp_path: Path) -> None:
    vit, _ = build_vit(SMALL)
    sd = {f"backbone.{k}": v.clone() + 1 for k, v in vit.state_dict().items()}
    path = tmp_path / "dino_like.pth"
    torch.save({"teacher": sd, "epoch": 3}, path)
    loaded, info = build_vit(AnomalyNCDConfig(vit_img_size=32, vit_depth=2, vit_weights=str(path)))
    assert info["pretrained"] is True and info["weights"] == str(path) and len(info["sha256"]) == 64
    assert info["paper_backbone"] is False and "not the paper's" in info["note"]
    assert torch.allclose(loaded.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight + 1)
    wide = AnomalyNCDConfig(vit="vit_small_patch16_224", vit_img_size=32, vit_depth=2, vit_weights=str(path))
    with pytest.raises(WeightsError, match="do not fit"):
        build_vit(wide)
    with pytest.raises(ValueError, match="vit_weights file not found"):
        AnomalyNCDConfig(vit_weights=str(tmp_path / "missing.pth"))


def test_training_runs_end_to_end_on_a_tiny_vit_and_its_losses_go_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["run", "--task", "discovery", "--method", "anomalyncd", "--dataset", "synthetic-tiny", "--categories", "tile",
                 "--seeds", "1", "--backbone", "resnet18", "--weights", "random", "--no-progress", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--set", "vit_img_size=64", "--set", "vit_depth=4",
                 "--set", "mask_layers=3", "--set", "epochs=8", "--set", "batch_size=8"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "WARNING: anomalyncd uses vit_tiny_patch16_224 with RANDOM init" in printed
    (row,) = read_rows([out]).rows
    assert row["status"] == "ok" and row["task"] == "discovery" and 0 <= row["cluster_accuracy"] <= 1
    vit, train, crops = row["method_info"]["vit"], row["method_info"]["training"], row["method_info"]["crops"]
    assert vit["weights"] == "random" and vit["pretrained"] is False and "not the paper's pretrained DINO ViT-B/8" in vit["note"]
    assert train["base_set"] is None and train["pseudo_label_correction"] is True
    assert train["steps"] == 8 * train["steps_per_epoch"] >= 8  # every step trains, without a labelled base set
    assert crops["n_crops"] >= row["n_images"] and row["maps"]["source"] == "patchcore"
    log = row["train_log"]
    for curve in ("epoch_loss", "epoch_cluster_loss"):
        assert len(log[curve]) == 8 and log[curve][-1] < log[curve][0], (curve, log[curve])
