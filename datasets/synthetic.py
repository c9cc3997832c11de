"""Synthetic datasets in the exact MVTec AD layout, drawn from a seed (no download, no licence issue).

What is drawn (:mod:`bench.datasets._synth_draw`): textures that fill the frame (a plain-weave ``fabric``,
a ``wood`` grain, a ``tile`` grid) and objects on a plain background (a hexagonal ``nut``, a two-coloured
``capsule``, a threaded ``screw``; plus round ``disc``/``ring`` variants used by the ``mvtec`` preset).
Normal images vary in position, rotation, brightness and texture phase. Defect types are drawn on the
material (on the foreground for objects): ``scratch`` (thin smooth bright lines), ``crack`` (dark jagged
branching lines), ``hole`` (dark round pits with a light rim), ``stain`` (a soft blotch of a distinct hue),
``missing`` (material removed, showing the background or backing), ``contamination`` (a cluster of bright
speckles), ``fold`` (a pinched crease, dark on one side and bright on the other).

Why random-initialised backbones can learn them: every type is defined by a LOW-LEVEL cue (hue shift,
dark vs bright, thin line vs round blob vs speckle cluster, jagged vs smooth edge) that random convolution
filters plus global pooling respond to. Size, position, count and intensity are random and some types
overlap (scratch vs crack: both thin lines; hole vs missing: both dark removed material), so methods still
differ. ``tests/test_synthetic.py`` checks a nearest-class-mean classifier on random ResNet-18 features.
Normal variation is deliberately mild (a few pixels of jitter, soft optics blur): pooled random-CNN features
alias strongly, so a shift of 2-3 px moves them about as much as a small defect does.

Layout: ``<root>/<category>/{train/good,test/good,test/<type>}/NNN.png`` and
``<root>/<category>/ground_truth/<type>/NNN_mask.png`` (0/255). Each category is generated lazily, into a
temporary sibling folder that is renamed into place with ``os.replace`` once complete, under a per-category
lock; ``<root>/<category>/.complete.json`` records preset, seed, generator version and file counts, and a
complete folder is reused. Every pixel comes from ``numpy.random.default_rng(SeedSequence([seed,
stable_int(category), stable_int(split), stable_int(label), index]))``: the same seed gives byte-identical PNGs.

The generator never deletes or overwrites a folder it cannot prove it made: proof is a marker it wrote itself
(``.complete.json`` in a category, or ``.generating.json``, written into the temporary folder before the first
image, so that the half-written folder of a killed run is still provably ours). Before anything is written,
the whole root is checked: a root that holds anything else (a real dataset passed as ``--data-root`` without
``--dataset``, say) is refused with an error that names the file and the ``--dataset`` that probably fits it;
nothing in it is touched (the per-category lock files are only created after this check).

Presets: ``tiny`` (tests, 2 categories, 128 px), ``default`` (demo, 4 categories, 256 px) and ``mvtec`` (the
15 MVTec AD category names with MVTec AD's exact per-folder image counts, for speed benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from bench.datasets._base import DatasetOptions, Samples, register_dataset
from bench.datasets._synth_draw import DRAWERS, TEXTURE_STYLES, DefectSpec, palette, render_sample
from bench.datasets.mvtec_ad import scan_mvtec_ad
from bench.errors import DatasetError, brief_list
from bench.paths import cache_dir

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: defect types have preferred zones
MARKER = ".complete.json"
WORK_MARKER = ".generating.json"  # written into a temporary folder before its first image
GENERATOR_NAME = "fsad-bench synthetic"
HINT = "The synthetic datasets are generated on first use; pass --data-root to choose where."

# MVTec AD per-category counts (docs/datasets.md §1): train good, test good, {type: test images}.
MVTEC_AD_COUNTS: dict[str, tuple[int, int, dict[str, int]]] = {
    "bottle": (209, 20, {"broken_large": 20, "broken_small": 22, "contamination": 21}),
    "cable": (224, 58, {"bent_wire": 13, "cable_swap": 12, "combined": 11, "cut_inner_insulation": 14,
                        "cut_outer_insulation": 10, "missing_cable": 12, "missing_wire": 10, "poke_insulation": 10}),
    "capsule": (219, 23, {"crack": 23, "faulty_imprint": 22, "poke": 21, "scratch": 23, "squeeze": 20}),
    "carpet": (280, 28, {"color": 19, "cut": 17, "hole": 17, "metal_contamination": 17, "thread": 19}),
    "grid": (264, 21, {"bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11, "thread": 11}),
    "hazelnut": (391, 40, {"crack": 18, "cut": 17, "hole": 18, "print": 17}),
    "leather": (245, 32, {"color": 19, "cut": 19, "fold": 17, "glue": 19, "poke": 18}),
    "metal_nut": (220, 22, {"bent": 25, "color": 22, "flip": 23, "scratch": 23}),
    "pill": (267, 26, {"color": 25, "combined": 17, "contamination": 21, "crack": 26, "faulty_imprint": 19,
                       "pill_type": 9, "scratch": 24}),
    "screw": (320, 41, {"manipulated_front": 24, "scratch_head": 24, "scratch_neck": 25, "thread_side": 23,
                        "thread_top": 23}),
    "tile": (230, 33, {"crack": 17, "glue_strip": 18, "gray_stroke": 16, "oil": 18, "rough": 15}),
    "toothbrush": (60, 12, {"defective": 30}),
    "transistor": (213, 60, {"bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10}),
    "wood": (247, 19, {"color": 8, "combined": 11, "hole": 10, "liquid": 10, "scratch": 21}),
    "zipper": (240, 32, {"broken_teeth": 19, "combined": 16, "fabric_border": 17, "fabric_interior": 16,
                         "rough": 17, "split_teeth": 18, "squeezed_teeth": 16}),
}  # fmt: skip

# How the mvtec preset draws each MVTec category: (style, hue shift in degrees, {type: DefectSpec}).
_D = DefectSpec
MVTEC_STYLE: dict[str, tuple[str, float, dict[str, DefectSpec]]] = {
    "bottle": ("ring", 0, {"broken_large": _D("missing", 1.4), "broken_small": _D("missing", 0.6),
                           "contamination": _D("contamination")}),
    "cable": ("disc", 150, {"bent_wire": _D("fold"), "cable_swap": _D("stain", 2.0), "combined": _D("combined"),
                            "cut_inner_insulation": _D("scratch", 0.8, (0.8, 0.5, 0.2)),
                            "cut_outer_insulation": _D("crack"), "missing_cable": _D("missing", 1.4),
                            "missing_wire": _D("hole"), "poke_insulation": _D("hole", 0.5)}),
    "capsule": ("capsule", 0, {"crack": _D("crack"), "faulty_imprint": _D("stain", 0.5, (0.1, 0.1, 0.1)),
                               "poke": _D("hole", 0.6), "scratch": _D("scratch"), "squeeze": _D("fold")}),
    "carpet": ("fabric", 200, {"color": _D("stain"), "cut": _D("crack", 0.8), "hole": _D("hole"),
                               "metal_contamination": _D("contamination"),
                               "thread": _D("scratch", 1.2, (0.9, 0.8, 0.3))}),
    "grid": ("tile", 0, {"bent": _D("fold"), "broken": _D("missing"), "glue": _D("stain", 1.0, (0.9, 0.9, 0.7)),
                         "metal_contamination": _D("contamination"), "thread": _D("scratch", 1.2, (0.2, 0.2, 0.2))}),
    "hazelnut": ("disc", 0, {"crack": _D("crack"), "cut": _D("scratch", 1.0, (0.85, 0.75, 0.6)),
                             "hole": _D("hole"), "print": _D("stain", 0.7, (0.1, 0.1, 0.1))}),
    "leather": ("wood", 330, {"color": _D("stain"), "cut": _D("crack", 0.7), "fold": _D("fold"),
                              "glue": _D("stain", 0.8, (0.85, 0.85, 0.6)), "poke": _D("hole", 0.5)}),
    "metal_nut": ("nut", 0, {"bent": _D("fold"), "color": _D("stain"), "flip": _D("missing", 1.2),
                             "scratch": _D("scratch")}),
    "pill": ("capsule", 60, {"color": _D("stain"), "combined": _D("combined"), "contamination": _D("contamination"),
                             "crack": _D("crack"), "faulty_imprint": _D("stain", 0.5, (0.1, 0.1, 0.1)),
                             "pill_type": _D("stain", 2.5, (0.9, 0.9, 0.4)), "scratch": _D("scratch")}),
    "screw": ("screw", 0, {"manipulated_front": _D("missing", 0.7), "scratch_head": _D("scratch", 0.5),
                           "scratch_neck": _D("scratch", 0.8, (0.3, 0.3, 0.3)), "thread_side": _D("crack", 0.6),
                           "thread_top": _D("hole", 0.6)}),
    "tile": ("tile", 30, {"crack": _D("crack"), "glue_strip": _D("stain", 1.0, (0.9, 0.9, 0.8)),
                          "gray_stroke": _D("scratch", 1.3, (0.45, 0.45, 0.45)),
                          "oil": _D("stain", 1.0, (0.2, 0.15, 0.1)),
                          "rough": _D("contamination", 1.4)}),
    "toothbrush": ("screw", 200, {"defective": _D("missing")}),
    "transistor": ("capsule", 250, {"bent_lead": _D("fold"), "cut_lead": _D("scratch"), "damaged_case": _D("crack"),
                                    "misplaced": _D("missing", 2.0)}),
    "wood": ("wood", 0, {"color": _D("stain"), "combined": _D("combined"), "hole": _D("hole"),
                         "liquid": _D("stain", 1.2, (0.3, 0.25, 0.2)), "scratch": _D("scratch")}),
    "zipper": ("fabric", 90, {"broken_teeth": _D("missing"), "combined": _D("combined"), "fabric_border": _D("fold"),
                              "fabric_interior": _D("stain"), "rough": _D("contamination"), "split_teeth": _D("crack"),
                              "squeezed_teeth": _D("hole")}),
}  # fmt: skip


@dataclass(frozen=True)
class CategorySpec:
    """One synthetic category.

    Attributes:
        name: folder name.
        style: renderer key (``fabric``, ``wood``, ``tile``, ``nut``, ``disc``, ``ring``, ``capsule``, ``screw``).
        defects: defect-type folder name → how to draw it.
        n_train: train/good images.
        n_test_good: test/good images.
        n_per_type: test images per defect type.
        hue_shift: rotation of the style palette, degrees.
    """

    name: str
    style: str
    defects: dict[str, DefectSpec]
    n_train: int
    n_test_good: int
    n_per_type: dict[str, int]
    hue_shift: float = 0.0

    @property
    def is_texture(self) -> bool:
        return self.style in TEXTURE_STYLES


@dataclass(frozen=True)
class Preset:
    """A named set of categories drawn at one resolution."""

    name: str
    resolution: int
    categories: dict[str, CategorySpec]


def _spec(name: str, style: str, types: dict[str, tuple[str, int]], n_train: int, n_test_good: int) -> CategorySpec:
    return CategorySpec(
        name, style, {t: DefectSpec(d) for t, (d, _) in types.items()}, n_train, n_test_good,
        {t: n for t, (_, n) in types.items()},
    )  # fmt: skip


def _presets() -> dict[str, Preset]:
    tiny = [
        _spec("tile", "tile", {"crack": ("crack", 7), "stain": ("stain", 7),
                               "contamination": ("contamination", 7)}, 8, 3),
        _spec("screw", "screw", {"scratch": ("scratch", 7), "missing": ("missing", 7), "hole": ("hole", 7)}, 8, 3),
    ]  # fmt: skip
    default = [
        _spec("fabric", "fabric", {"hole": ("hole", 14), "stain": ("stain", 13), "fold": ("fold", 15),
                                   "contamination": ("contamination", 12)}, 40, 8),
        _spec("wood", "wood", {"scratch": ("scratch", 16), "crack": ("crack", 14), "hole": ("hole", 13),
                               "stain": ("stain", 12), "contamination": ("contamination", 15)}, 40, 8),
        _spec("nut", "nut", {"scratch": ("scratch", 14), "missing": ("missing", 15), "stain": ("stain", 13),
                             "contamination": ("contamination", 12)}, 40, 8),
        _spec("capsule", "capsule", {"crack": ("crack", 13), "scratch": ("scratch", 15), "hole": ("hole", 12),
                                     "missing": ("missing", 14)}, 40, 8),
    ]  # fmt: skip
    mvtec = [
        CategorySpec(c, MVTEC_STYLE[c][0], MVTEC_STYLE[c][2], tr, tg, dict(types), MVTEC_STYLE[c][1])
        for c, (tr, tg, types) in MVTEC_AD_COUNTS.items()
    ]
    return {
        "tiny": Preset("tiny", 128, {c.name: with_zones(c) for c in tiny}),
        "default": Preset("default", 256, {c.name: with_zones(c) for c in default}),
        "mvtec": Preset("mvtec", 256, {c.name: with_zones(c) for c in mvtec}),
    }


ZONE_RADIUS, ZONE_SPREAD = 0.2, 0.12  # fractions of the image size


def with_zones(spec: CategorySpec) -> CategorySpec:
    """Give each defect type a preferred zone: K types sit at K evenly spaced angles on a circle of radius
    ``ZONE_RADIUS`` around the image centre (rotated per category), with a Gaussian spread of ``ZONE_SPREAD``.

    Why: on real parts defect types have typical places (MVTec AD screw: ``scratch_head`` / ``scratch_neck`` /
    ``thread_top`` / ``thread_side``; cable: a given wire; transistor: the leads), and the paper's heads
    flatten the 28 × 28 grid, so they can only use position-consistent evidence. With fully uniform positions
    (generator version 1) those heads memorised the 5-shot support and stayed at chance, while pooled
    features separated the same types; zones keep both kinds of method measurable. The spread is wide
    enough that zones overlap (neighbouring types are 0.2·2π/K ≈ 0.25–0.4 of the size apart for K = 3–5).
    """
    k = len(spec.defects)
    offset = (stable_int(spec.name) % 360) * np.pi / 180.0
    zones = {}
    for i, (t, d) in enumerate(spec.defects.items()):
        a = offset + 2.0 * np.pi * i / k
        zones[t] = dataclasses.replace(
            d, zone=(0.5 + ZONE_RADIUS * float(np.cos(a)), 0.5 + ZONE_RADIUS * float(np.sin(a)), ZONE_SPREAD)
        )
    return dataclasses.replace(spec, defects=zones)


def stable_int(text: str) -> int:
    """A 32-bit integer from ``text`` that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


PRESETS: dict[str, Preset] = _presets()


def default_root(preset: str, seed: int = 0) -> Path:
    """Where a preset is generated when no root is given."""
    return cache_dir() / "synthetic" / f"{preset}-v{GENERATOR_VERSION}-seed{seed}"


def _get_preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise DatasetError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset]


def _select(p: Preset, categories: Sequence[str] | None) -> list[CategorySpec]:
    if not categories:
        return list(p.categories.values())
    unknown = [c for c in categories if c not in p.categories]
    if unknown:
        raise DatasetError(
            f"category {brief_list(unknown)} is not in the synthetic {p.name!r} preset; its categories are "
            f"{', '.join(p.categories)}. Check --categories."
        )
    return [p.categories[c] for c in categories]


def _rng(seed: int, category: str, split: str, label: str, index: int) -> np.random.Generator:
    ss = np.random.SeedSequence([seed, stable_int(category), stable_int(split), stable_int(label), index])
    return np.random.default_rng(ss)


def _write_png(path: Path, arr: np.ndarray) -> None:
    img = arr[..., ::-1] if arr.ndim == 3 else arr  # cv2 wants BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _folders(spec: CategorySpec) -> list[tuple[str, str, int]]:
    return [("train", "good", spec.n_train), ("test", "good", spec.n_test_good)] + [
        ("test", t, spec.n_per_type[t]) for t in spec.defects
    ]


def _expected_counts(spec: CategorySpec) -> dict[str, int]:
    counts = {f"{s}/{lab}": n for s, lab, n in _folders(spec)}
    counts.update({f"ground_truth/{t}": spec.n_per_type[t] for t in spec.defects})
    return counts


def _write_category(dest: Path, spec: CategorySpec, seed: int, resolution: int) -> None:
    """Draw every image of ``spec`` into ``dest`` (threads: OpenCV and most numpy kernels release the GIL)."""
    pal = palette(spec.style, spec.hue_shift)
    jobs = []
    for split, label, n in _folders(spec):
        (dest / split / label).mkdir(parents=True)
        if label != "good":
            (dest / "ground_truth" / label).mkdir(parents=True)
        jobs += [(split, label, i) for i in range(n)]

    def one(job: tuple[str, str, int]) -> None:
        split, label, i = job
        rng = _rng(seed, spec.name, split, label, i)  # one stream per file: order and threads do not matter
        img, mask = render_sample(spec.style, resolution, rng, pal, spec.defects.get(label))
        _write_png(dest / split / label / f"{i:03d}.png", img)
        if mask is not None:
            _write_png(dest / "ground_truth" / label / f"{i:03d}_mask.png", mask)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(one, jobs))


def _count_pngs(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.name.endswith(".png")) if folder.is_dir() else -1


def _is_complete(final: Path, preset: str, seed: int, resolution: int | None, spec: CategorySpec) -> bool:
    """True when ``final`` holds a finished generation of this preset/seed/version (and resolution, if given)."""
    try:
        marker = json.loads((final / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict):
        return False
    want = dict(generator_version=GENERATOR_VERSION, preset=preset, seed=seed, category=spec.name)
    if any(marker.get(k) != v for k, v in want.items()):
        return False
    if resolution is not None and marker.get("resolution") != resolution:
        return False
    counts = marker.get("counts", {})
    return counts == _expected_counts(spec) and all(_count_pngs(final / rel) == n for rel, n in counts.items())


_OURS = re.compile(
    r"^(\.complete\.json|\.generating\.json|(train|test)/[^/]+/\d{3}\.png|ground_truth/[^/]+/\d{3}_mask\.png)$"
)


def _our_marker(folder: Path) -> bool:
    """True when ``folder`` holds a marker that this generator wrote (complete, or a generation in progress)."""
    for name in (MARKER, WORK_MARKER):
        try:
            marker = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME:
            return True
    return False


def _foreign_file(folder: Path) -> str | None:
    """The first entry (relative path) under ``folder`` that this generator would not have written, or None."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink() or (p.is_file() and not _OURS.match(rel)) or not (p.is_file() or p.is_dir()):
            return rel
    return None


def _provably_ours(folder: Path) -> bool:
    """A folder may be deleted only when it holds our marker and nothing the generator does not write."""
    return folder.is_dir() and not folder.is_symlink() and _our_marker(folder) and _foreign_file(folder) is None


def _remove_ours(folder: Path) -> None:
    """Delete a folder of ours, its markers last: a kill midway leaves a folder that is still provably ours."""
    for child in folder.iterdir():
        if child.name in (MARKER, WORK_MARKER):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _holds_no_file(folder: Path) -> bool:
    """True for a folder with nothing but empty sub-folders (deleting it destroys no data)."""
    return all(p.is_dir() and not p.is_symlink() for p in folder.rglob("*"))


_TMP_NAME = re.compile(r"^\.[^/]+\.(tmp-.+|lock)$")  # .<category>.tmp-<pid>-<hex> folders, .<category>.lock files
_SYSTEM_JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}  # written by file browsers; harmless, never deleted


def _describe_layout(root: Path) -> tuple[str, str]:
    """(what ``root`` looks like, the ``--dataset`` that reads it): MVTec 3D-AD, MVTec AD or a user folder."""
    from bench.datasets.mvtec_ad import CATEGORIES as MVTEC_AD_CATEGORIES

    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    mvtec_layout = False
    for d in subdirs:
        test = d / "test"
        if not test.is_dir():
            continue
        if (d / "validation").is_dir() or any((t / "rgb").is_dir() for t in test.iterdir() if t.is_dir()):
            return "MVTec 3D-AD (<category>/test/<type>/rgb/)", "mvtec_3d"
        mvtec_layout = True
    if mvtec_layout and any(d.name in MVTEC_AD_CATEGORIES for d in subdirs):
        return "MVTec AD", "mvtec_ad"
    if mvtec_layout:
        return "a dataset in the MVTec AD layout (<category>/train/good, <category>/test/<type>)", "folder"
    return "a folder of your own files", "folder"


def _check_root(root: Path) -> None:
    """Refuse a root that holds anything this generator did not make, before anything is written into it.

    Allowed: folders holding our marker (complete or in progress), our lock files and temporary folders
    (``.<category>.lock``, ``.<category>.tmp-*``), and file-browser junk. This is one small read per folder; the
    full check of a folder's files (:func:`_provably_ours`) is made only before it would be replaced.

    Raises:
        DatasetError: naming the first foreign entry and the ``--dataset`` that probably fits the folder.
    """
    if root.exists() and not root.is_dir():
        raise DatasetError(
            f"--data-root {root} is a file, not a folder: the synthetic datasets are generated into a folder. Pass a "
            "new or empty folder as --data-root (or omit it to use the cache), or --dataset folder|mvtec_ad|mvtec_3d "
            "with the folder that holds your images."
        )
    if not root.exists():
        return
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name in _SYSTEM_JUNK or _TMP_NAME.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if _our_marker(entry):  # (whether it may be replaced is checked in depth before that: _provably_ours)
                continue
            foreign = f"{entry.name}/" + (_first_file(entry) or "")
        else:
            foreign = entry.name
        looks, dataset = _describe_layout(root)
        raise DatasetError(
            f"--data-root {root} holds {foreign}, which the synthetic generator did not write, so it will not write "
            f"into that folder (nothing there was changed or deleted). It looks like {looks}: to benchmark it, pass "
            f"--dataset {dataset} --data-root {root}; to generate a synthetic dataset, pass a new or empty folder as "
            "--data-root, or omit it to use the cache."
        )


def _first_file(folder: Path) -> str | None:
    """The first file under ``folder`` in sorted depth-first order (relative path), for messages; stops there."""
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        if files:
            return (Path(dirpath) / sorted(files)[0]).relative_to(folder).as_posix()
    return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (``fcntl.flock``; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename still protects the data
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _ensure_category(
    root: Path, preset: str, spec: CategorySpec, seed: int, resolution: int | None, default_res: int
) -> None:
    """Make ``root/<spec.name>`` a complete generation: reuse it, or draw into a temp sibling and rename.

    Only folders that are provably ours (:func:`_provably_ours`) are ever replaced or deleted.
    """
    final = root / spec.name
    if _is_complete(final, preset, seed, resolution, spec):
        return
    with _lock(root / f".{spec.name}.lock"):
        if _is_complete(final, preset, seed, resolution, spec):  # another process finished it meanwhile
            return
        if (final.exists() or final.is_symlink()) and not _provably_ours(final):
            rel = _foreign_file(final) if _our_marker(final) else None
            raise DatasetError(
                f"{final} exists but is not a complete synthetic category, and "
                + (f"it holds {rel}, which the generator does not write" if rel else "it holds no marker of the generator")
                + "; it will not be deleted. Pass another --data-root or remove that folder yourself."
            )
        for stale in root.glob(f".{spec.name}.tmp-*"):  # left by a killed run (we hold the lock)
            if stale.is_dir() and not stale.is_symlink() and (_provably_ours(stale) or _holds_no_file(stale)):
                _remove_ours(stale)
            else:
                log.warning("leaving %s alone: it does not hold a marker of the synthetic generator", stale)
        res = resolution or default_res
        tmp = root / f".{spec.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            marker = dict(
                generator=GENERATOR_NAME, generator_version=GENERATOR_VERSION, preset=preset, seed=seed,
                category=spec.name, style=spec.style, resolution=res, counts=_expected_counts(spec),
            )  # fmt: skip
            work = {**marker, "state": "generating"}
            (tmp / WORK_MARKER).write_text(json.dumps(work, indent=1, sort_keys=True) + "\n")
            _write_category(tmp, spec, seed, res)
            (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
            (tmp / WORK_MARKER).unlink()  # after MARKER: one of the two is always there
            if final.exists():
                trash = root / f".{spec.name}.tmp-old-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                _remove_ours(trash)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if not _is_complete(final, preset, seed, resolution, spec):
                raise


def generate(
    root: Path,
    preset: str = "default",
    seed: int = 0,
    categories: Sequence[str] | None = None,
    resolution: int | None = None,
) -> Path:
    """Generate (or reuse) a synthetic preset under ``root`` in the MVTec AD layout.

    Args:
        root: dataset root; each category becomes ``root/<category>/``.
        preset: ``tiny``, ``default`` or ``mvtec``.
        seed: dataset seed; the same seed gives byte-identical files.
        categories: generate only these (``None`` = every category of the preset).
        resolution: image side in pixels; ``None`` reuses whatever resolution is on disk, else the preset's.

    Returns:
        ``root``.

    Raises:
        DatasetError: unknown preset or category, a root that holds anything the generator did not write (a real
            dataset), or a root that is a file or cannot be created.
    """
    p = _get_preset(preset)
    specs = _select(p, categories)
    root = Path(root).expanduser()
    _check_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the synthetic dataset folder {root} ({exc.strerror or exc}). Pass a writable --data-root, "
            "or omit it to use the cache."
        ) from None
    for spec in specs:
        _ensure_category(root, p.name, spec, seed, resolution, p.resolution)
    return root


def _load(name: str, preset: str, root: Path | None, options: DatasetOptions) -> Samples:
    p = _get_preset(preset)
    cats = tuple(s.name for s in _select(p, options.categories))
    root = generate(root if root is not None else default_root(preset, 0), preset, seed=0, categories=cats)
    return scan_mvtec_ad(root, dataclasses.replace(options, categories=cats), name, HINT)


@register_dataset("synthetic", description="synthetic MVTec-layout demo set: 4 categories, 256 px, made on first use")
def synthetic(root: Path | None, options: DatasetOptions) -> Samples:
    """Synthetic demo dataset (``default`` preset, seed 0)."""
    return _load("synthetic", "default", root, options)


@register_dataset("synthetic-tiny", description="synthetic MVTec-layout test set: 2 categories, 128 px")
def synthetic_tiny(root: Path | None, options: DatasetOptions) -> Samples:
    """Synthetic test dataset (``tiny`` preset, seed 0)."""
    return _load("synthetic-tiny", "tiny", root, options)


@register_dataset("synthetic-mvtec", description="synthetic set with MVTec AD's categories and exact counts, 256 px")
def synthetic_mvtec(root: Path | None, options: DatasetOptions) -> Samples:
    """Synthetic stand-in for MVTec AD (``mvtec`` preset, seed 0): same names and counts, drawn images."""
    return _load("synthetic-mvtec", "mvtec", root, options)


def write_mvtec3d(
    root: Path,
    seed: int = 0,
    categories: Sequence[str] = ("toy_bagel", "toy_rope"),
    n_train: int = 4,
    n_per_type: int = 4,
    types: Sequence[str] = ("crack", "hole", "stain"),
    resolution: int = 64,
) -> Path:
    """Write a tiny tree in the MVTec 3D-AD layout (for tests of the ``mvtec_3d`` adapter).

    ``<root>/<category>/{train,validation,test}/<type>/{rgb/NNN.png, gt/NNN.png, xyz/NNN.tiff}``; ``xyz`` is a
    float32 3-channel TIFF, written for every category but the last (to show that it is never needed).
    Categories whose name contains ``bagel`` are rings, ``rope`` fabric; others wood. Unknown type names are
    drawn as stains.

    Returns:
        ``root``.
    """
    root = Path(root)
    for ci, cat in enumerate(categories):
        style = "ring" if "bagel" in cat else "fabric" if "rope" in cat else "wood"
        pal = palette(style, float(stable_int(cat) % 360) if style == "wood" else 0.0)
        folders = [("train", "good", n_train), ("validation", "good", max(1, n_train // 2))]
        folders += [("test", t, n_per_type) for t in ("good", *types)]
        for split, label, n in folders:
            base = root / cat / split / label
            with_xyz = ci < len(categories) - 1
            for sub in ("rgb", "gt", "xyz") if with_xyz else ("rgb", "gt"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = _rng(seed, cat, split, label, i)
                spec = None if label == "good" else DefectSpec(label if label in DRAWERS else "stain")
                img, mask = render_sample(style, resolution, rng, pal, spec)
                _write_png(base / "rgb" / f"{i:03d}.png", img)
                _write_png(base / "gt" / f"{i:03d}.png", np.zeros(img.shape[:2], np.uint8) if mask is None else mask)
                if with_xyz:
                    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
                    xyz = np.stack([xx, yy, 0.5 + 0.01 * img.mean(axis=2).astype(np.float32) / 255.0], axis=2)
                    cv2.imwrite(str(base / "xyz" / f"{i:03d}.tiff"), xyz)
    return root
