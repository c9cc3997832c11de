"""Backbone creation with explicit, recorded weights.

``weights`` is one of:

* ``"imagenet"``: timm's ImageNet weights (downloaded by timm / Hugging Face hub, or found in their cache).
  If they cannot be had (no internet) this fails fast with a :class:`~bench.errors.WeightsError` saying how to
  supply a local file or choose ``random``. There is never a silent fallback.
* a path to a local ``.pth`` / ``.safetensors`` / ``.bin`` file: a timm or torchvision state dict for the
  same architecture (torchvision's ``resnet50-0676ba61.pth`` works for ``resnet50``). Its sha256 is recorded.

Pretrained weights (file or ImageNet) with a NaN or inf value are refused (:class:`~bench.errors.WeightsError`,
at the run's preflight): they would give NaN features and results at chance.
* ``"random"``: random initialisation, explicitly. timm's ResNets zero-initialise the last BatchNorm of every
  residual block (``zero_init_last=True``), which turns every block into an identity at random init; with
  ``random`` we build the model with ``zero_init_last=False`` (torchvision-style init) unless told otherwise,
  because the identity network carries almost no signal (see ``docs/environment.md`` and the
  measurement in the README). The choice is recorded with every result.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import WeightsError


@dataclass(frozen=True)
class WeightsInfo:
    """What was actually loaded; goes into every result row."""

    backbone: str
    weights: str  # "imagenet", "random" or "file"
    pretrained: bool
    source: str  # hub tag, file path or "random-init"
    sha256: str  # of the weights file, "" when not from a file
    zero_init_last: bool | None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def supports_zero_init_last(name: str) -> bool:
    """Whether timm's ``name`` takes ``zero_init_last`` (its ResNet family: the last BN of each block zeroed)."""
    return name.startswith(("resnet", "wide_resnet", "resnext", "seresnet"))


def weights_tag(weights: str) -> str:
    """Normalise a ``--weights`` value: ``imagenet``, ``random`` or an absolute file path."""
    if weights in ("imagenet", "random"):
        return weights
    return str(Path(weights).expanduser().resolve())


def create_backbone(
    name: str,
    weights: str,
    zero_init_last: bool | None = None,
    **timm_kwargs: Any,
) -> tuple[nn.Module, WeightsInfo]:
    """Create a timm model with the requested weights.

    Args:
        name: timm model name (``resnet50``, ``wide_resnet50_2``, ``resnet18``, ...).
        weights: ``imagenet``, ``random`` or a path to a local weights file.
        zero_init_last: only for ``random``; ``None`` means ``False`` (see module docstring).
        **timm_kwargs: passed to ``timm.create_model`` (``features_only``, ``out_indices``, ``num_classes``...).

    Returns:
        The model (in eval mode) and a :class:`WeightsInfo` describing what was loaded.

    Raises:
        WeightsError: unknown backbone, weights unavailable offline, unreadable or mismatched file.
    """
    import timm

    if not timm.list_models(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise WeightsError(
            f"unknown backbone {name!r}." + (f" Did you mean {', '.join(close)}?" if close else "")
            + " Any timm model name works, e.g. resnet50, wide_resnet50_2, resnet18."
        )
    kwargs = dict(timm_kwargs)
    if weights == "random":
        zil = False if zero_init_last is None else zero_init_last
        if supports_zero_init_last(name):
            kwargs["zero_init_last"] = zil
        else:
            zil = None
        model = timm.create_model(name, pretrained=False, **kwargs)
        info = WeightsInfo(name, "random", False, "random-init", "", zil)
    elif weights == "imagenet":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any download/hub failure means the same thing to the user
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise WeightsError(
                f"could not load ImageNet weights for {name!r} ({type(exc).__name__}: {str(exc)[:200]}). "
                + ("Hub downloads are disabled (HF_HUB_OFFLINE=1; set BENCH_ONLINE=1 to allow them). " if offline else "")
                + "Either download the weights on a machine with internet and pass the file with "
                "--weights /path/to/weights.pth (a timm or torchvision state dict), or run with "
                "--weights random (results are then labelled as random-init)."
            ) from None
        _check_finite(model.state_dict().items(), f"the ImageNet weights of {name!r} in timm's cache",
                      "the download is damaged: delete it from the Hugging Face cache (~/.cache/huggingface/hub) and "
                      "download it again, or pass a weights file with --weights")  # fmt: skip
        tag = getattr(model, "pretrained_cfg", {}).get("hf_hub_id") or getattr(model, "pretrained_cfg", {}).get("tag", "")
        info = WeightsInfo(name, "imagenet", True, str(tag or f"timm:{name}"), "", None)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file not found: {path}. Pass --weights imagenet, --weights random, or the path of a "
                "local state-dict file."
            )
        model = timm.create_model(name, pretrained=False, **kwargs)
        state = _load_state(path)
        _check_finite(state.items(), f"weights file {path}", "it is damaged: re-download it or pass another --weights")
        _load_into(model, state, path, name)
        info = WeightsInfo(name, "file", True, str(path.resolve()), _sha256(path), None)
    model.eval()
    return model, info


def _check_finite(tensors: Any, what: str, fix: str) -> None:
    """Refuse weights with NaN or inf values: they give NaN features, i.e. results at chance labelled "ok".

    Args:
        tensors: (name, tensor) pairs (a state dict's items).
        what: the weights, for the message.
        fix: what to do, for the message.
    """
    bad = [k for k, v in tensors if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(
            f"{what} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. {', '.join(bad[:3])}: "
            f"{fix}."
        )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(
            f"cannot read weights file {path} ({type(exc).__name__}: {str(exc)[:200]}). "
            "It must be a PyTorch state dict (.pth/.bin) or a .safetensors file; re-download it."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    own = model.state_dict()
    # features_only models drop the classifier (and, for FeatureListNet, keep the same key names); a model
    # built with another num_classes keeps its freshly initialised head.
    is_head = lambda k: k.startswith(("fc.", "classifier.", "head."))  # noqa: E731
    usable = {k: v for k, v in state.items() if k in own and not (is_head(k) and own[k].shape != v.shape)}
    mismatched = [k for k, v in usable.items() if own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    classifier_keys = {k for k in missing if k.startswith(("fc.", "classifier.", "head."))}
    missing = [k for k in missing if k not in classifier_keys]
    if mismatched or missing or not usable:
        detail = (
            f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]})" if mismatched
            else f"{len(missing)} missing keys (e.g. {missing[:3]})"
        )
        raise WeightsError(
            f"weights file {path} does not match backbone {name!r}: {detail}. "
            "Pass the weights of the same architecture, or choose the matching --backbone."
        )
    for k in classifier_keys:
        usable.pop(k, None)
    model.load_state_dict(usable, strict=False)
