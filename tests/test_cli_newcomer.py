"""A newcomer's first commands (issue #24): default outputs outside the committed files, a fast start-up, help that
agrees with the commands, progress on long commands, no stale lines."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "pandas", "sklearn", "matplotlib")


def _parser(command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``command``, configured as ``python -m bench COMMAND`` configures it."""
    from bench.cli import build_parser

    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _default(command: str, dest: str) -> str | None:
    """The default of option ``dest``: argparse's, or for a command with ``--config`` the one applied after the file."""
    parser = _parser(command)
    spec = parser.get_default("_config")
    if spec is not None:
        return spec.defaults.get(dest)
    return next(a.default for a in parser._actions if a.dest == dest)


# ------------------------------------------------------------------------------------------ default outputs
def _ignored(path: Path | str) -> bool:
    """Whether git ignores ``path`` (relative to the checkout) and does not track anything under it."""
    check = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(path)], cwd=REPO, check=False)
    ignored = check.returncode == 0
    tracked = subprocess.run(["git", "ls-files", "--", str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    return ignored and not tracked.stdout.strip()


def test_default_outputs_go_to_one_ignored_folder_never_to_the_committed_results() -> None:
    """`report/` (report's default) was not ignored and the leaderboard's default was the committed
    results/leaderboard.md: every default target is now under runs/, which git ignores."""
    from bench.paths import DEFAULT_OUT
    from bench.run.config import RunConfig

    if not shutil.which("git") or subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout (or no git): .gitignore cannot be asked")
    defaults = {
        "run": RunConfig.__dataclass_fields__["out"].default,
        "report": _default("report", "out"),
        "leaderboard": _default("leaderboard", "out"),
        "tsne": _default("tsne", "out"),
        "maps": _default("maps", "out"),
    }
    for command, out in defaults.items():
        path = Path(out)
        assert path.parts[0] == DEFAULT_OUT and "results" not in path.parts, (command, out)
        assert _ignored(path / "x"), f"{command}'s default output {out} is not ignored by git"
    # what a default run writes, by name
    for name in ("results.jsonl", "summary.md", "episodes/a.json", "leaderboard.md", "leaderboard_plots/a.png",
                 "report/report.md", "crops_tile.png", "pseudo_tile.png"):  # fmt: skip
        assert _ignored(Path(DEFAULT_OUT) / name), name
    for helped in ("show-crops", "show-pseudo"):  # their defaults are made from the category: the help states them
        text = " ".join(_parser(helped).format_help().split())
        assert _default(helped, "out") is None and f"(default {DEFAULT_OUT}/" in text


def test_show_pseudo_writes_under_runs_when_not_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tiny_root: Path) -> None:  # fmt: skip
    """It wrote results/pseudo_<category>.png into the current folder (the checkout's committed results/)."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["show-pseudo", "--category", "tile", "--dataset", "folder", "--data-root", str(tiny_root),
                 "--classes", "2", "--sources", "1"]) == 0  # fmt: skip
    assert (tmp_path / "runs" / "pseudo_tile.png").is_file() and not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------- start-up
def _imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules a fresh ``python -m bench ARGS`` imports (``-X importtime`` lists each on stderr)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return names, proc


@pytest.mark.parametrize("args, code", [
    (("--help",), 0), (("run", "--shots", "x"), 2), (("run", "--jobs", "x"), 2), (("list", "datasets"), 0),
    (("cache", "info", "--cache-dir", "/nonexistent/bench-cache"), 2), (("report", "x", "--boot", "3"), 2),
    (("leaderboard", "--help"), 0), (("tsne", "--help"), 0),
])  # fmt: skip
def test_help_option_errors_and_listings_start_without_torch(args: tuple[str, ...], code: int) -> None:
    """`import bench` imported torch (the torchvision shim) and the command modules imported torch, pandas and
    scikit-learn at the top: 6–19 s before --help answered on a loaded machine. Now none of them loads where the
    command does not need it (``benchmarks/startup.py`` prints the times)."""
    names, proc = _imported(*args)
    assert proc.returncode == code, proc.stderr[-2000:]
    tables = {"pandas", "scipy"} if args[0] not in ("list", "cache") else set()  # these two read with pandas
    heavy = {"torch", "timm", "sklearn", "matplotlib"} | tables
    assert not heavy & names, f"python -m bench {' '.join(args)} imported {sorted(heavy & names)}"
    if code == 2:
        assert "error:" in proc.stderr


def test_torchvision_is_still_patched_before_its_first_import() -> None:
    """The shim is an import hook now: `import bench` no longer imports torch, and timm (which imports torchvision)
    still imports on this machine's CPU torch with a CUDA torchvision (docs/environment.md)."""
    code = ("import sys, bench, bench.compat as c; assert 'torch' not in sys.modules, 'torch at import bench'; "
            "import timm; timm.create_model('resnet18', pretrained=False); "
            "assert not any(isinstance(f, c._PatchBeforeTorchvision) for f in sys.meta_path); print('ok')")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_startup_benchmark_prints_ratios() -> None:
    proc = subprocess.run([sys.executable, "benchmarks/startup.py", "--repeats", "1", "--no-imports"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "python -c pass:" in proc.stdout
    for shown in ("python -m bench --help", "python -m bench run --shots x", "python -m bench list methods"):
        found = re.search(rf"^{re.escape(shown)} +(\d+) +([\d.]+) ", proc.stdout, re.M)
        assert found and float(found[2]) > 0, proc.stdout


# ---------------------------------------------------------------------------------------------- help lines
def test_top_level_help_names_every_choice_of_each_command() -> None:
    """The top-level lines were typed by hand and drifted: `list` without discoverers, `cache` without prune, `perf`
    naming benchmarks that do not exist. They are made from each command's own choices now."""
    from bench.cli import COMMANDS, build_parser

    top = build_parser(only="").format_help()
    text = " ".join(top.split())
    for name in COMMANDS:
        positional = [a for a in _parser(name)._actions if not a.option_strings and a.choices]
        for action in positional[:1]:
            line = text[text.index(f" {name} ") :][:300]
            missing = [c for c in action.choices if str(c) not in line]
            assert not missing, f"top-level help of {name!r} lacks {missing}: {line!r}"
    for stale in ("coreset, cache", "show or clear"):
        assert stale not in text


def test_list_backbones_shows_what_runs_offline_and_names_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    """It listed 134 ResNets (none with weights offline) by a silent `*resnet*` default; the default backbone was
    named nowhere in its output."""
    from bench.cli import main
    from bench.features.backbones import DEFAULT_BACKBONE, imagenet_availability

    assert main(["list", "backbones"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"default backbone: {DEFAULT_BACKBONE}")
    table = out.split("Weights packages")[0]
    assert "resnet50 " not in table
    if imagenet_availability(DEFAULT_BACKBONE)[0] != "none":
        assert f"\n{DEFAULT_BACKBONE} " in table
    assert all(" none " not in line for line in table.splitlines())


# ------------------------------------------------------------------------------------------------ examples
def _examples() -> list[tuple[str, str]]:
    """Every ``python -m bench ...`` example of every command's help (its module docstring): (command, text)."""
    import importlib

    from bench.cli import COMMANDS

    found = []
    for name, (module, _) in COMMANDS.items():
        doc = importlib.import_module(module).__doc__ or ""
        texts = re.findall(r"``(python -m bench [^`]+)``", doc)
        texts += [m.strip() for m in re.findall(r"^ {4}(python -m bench .+?)(?:\s+#.*)?$", doc, re.M)]
        found += [(name, " ".join(t.split())) for t in texts]
    return found


EXAMPLES = _examples()


@pytest.mark.parametrize("command, example", EXAMPLES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(EXAMPLES)])
def test_help_examples_parse_and_name_what_exists(command: str, example: str) -> None:
    """`tsne --help`'s first example asked for category bottle of the default dataset (synthetic: fabric, wood, nut,
    capsule) and failed. Each example is parsed by its command's parser (nothing runs), and where it uses a built-in
    synthetic dataset its categories and methods must exist."""
    import shlex

    from bench.cli import build_parser
    from bench.datasets import DATASETS, import_all

    argv = shlex.split(example)[3:]
    assert argv[0] == command, example
    args = build_parser(only=command).parse_args(argv)
    if not hasattr(args, "dataset"):  # reports read results files: nothing to check against a dataset
        return
    from bench.tasks import tasks

    task = {"run": getattr(args, "task", None) or "classification", "tsne": "classification", "maps": "detection"}
    one = getattr(args, "method", None)
    methods = getattr(args, "methods", None) or ([one] if isinstance(one, str) else [])
    if methods:
        registry = tasks()[task[command]].hook("registry")
        registry.import_all()
        assert set(methods) <= set(registry.names()), f"{example}: unknown {set(methods) - set(registry.names())}"
    import_all()
    dataset = args.dataset or "synthetic"
    assert dataset in DATASETS.names(), example
    cats = [*(getattr(args, "categories", None) or []), *([args.category] if getattr(args, "category", None) else [])]
    if dataset.startswith("synthetic") and getattr(args, "data_root", None) is None and cats:
        from bench.datasets.synthetic import PRESETS

        preset = PRESETS["tiny" if dataset == "synthetic-tiny" else "default"]
        assert set(cats) <= set(preset.categories), f"{example}: {dataset} has {list(preset.categories)}"


# ------------------------------------------------------------------------------------------------ stale lines
def test_discovery_jobs_are_not_shown_as_0_shot() -> None:
    """A discovery job has no shots (0): its progress line and failure summary said "0-shot" / "shots 0"."""
    from bench.run.plan import Job, failure_lines

    found = Job("kmeans", {}, "tile", 0, 1, "k1", None, error="boom", task="discovery")
    assert found.describe() == "kmeans tile seed 1"
    assert failure_lines({"boom": [found]}) == ["  kmeans: 1 job(s) (categories tile; seeds 1): boom"]
    shot = Job("protonet", {}, "tile", 2, 1, "k2", None, task="classification")
    assert shot.describe() == "protonet tile 2-shot seed 1"
    assert "shots 2; seeds 1" in failure_lines({"x": [shot]})[0]


def test_detect_names_zero_init_last_only_for_a_random_init() -> None:
    """`bench detect` printed `zero_init_last=None` for pretrained weights, where the option does not apply."""
    import pandas as pd

    from bench.features.detect import format_detect

    df = pd.DataFrame({"category": ["tile"], "auroc": [0.9]})
    df.attrs["weights"] = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "zero_init_last": None}
    assert "zero_init_last" not in format_detect(df)
    df.attrs["weights"] = {"backbone": "resnet18", "weights": "random", "zero_init_last": False}
    assert "zero_init_last=False" in format_detect(df)


def test_cache_prune_dry_run_says_what_would_remain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cache prune --dry-run` said the kinds "now take" the pruned size while nothing was removed."""
    from bench.cli import main
    from bench.paths import make_cache_root

    root = make_cache_root(tmp_path / "cache")
    (root / "features").mkdir()
    (root / "features" / "a.npy").write_bytes(b"x" * 2048)
    assert main(["cache", "prune", "--max-size", "0", "--dry-run", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "now take" not in out and "would take 0 B after pruning (dry run: nothing was removed)" in out
    assert (root / "features" / "a.npy").is_file()


def test_docs_say_no_task_is_planned_that_runs() -> None:
    """docs/tasks.md said "few-shot detection is planned" while `--task detection` runs."""
    from bench.tasks import tasks

    text = " ".join((REPO / "docs" / "tasks.md").read_text(encoding="utf-8").split()).lower()
    for name in tasks():
        for phrase in (f"{name} is planned", f"few-shot {name} is planned"):
            assert phrase not in text, phrase


# --------------------------------------------------------------------------------------------------- progress
@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("progress-cache")


def _features(tiny_root: Path, cache: Path) -> list[str]:
    return ["--dataset", "folder", "--data-root", str(tiny_root), "--backbone", "resnet18", "--weights", "random",
            "--threads", "1", "--cache-dir", str(cache)]  # fmt: skip


@pytest.mark.parametrize("command", ["detect", "maps", "show-crops", "tsne", "show-pseudo"])
def test_long_commands_show_progress_on_stderr(command: str, tiny_root: Path, shared_cache: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               one_torch_thread: None) -> None:  # fmt: skip
    """`tsne` ran 10.8 min printing nothing, `detect` 47 s; maps, show-crops and show-pseudo were silent too. Each
    shows a tqdm bar on stderr now when it is a terminal (stdout keeps the results), as `bench run` does."""
    from bench.cli import main

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the captured stream stands for a terminal

    feats = _features(tiny_root, shared_cache)
    argv, bar = {
        "detect": (["detect", *feats, "--categories", "tile"], "categories: 100%"),
        "maps": (["maps", *feats, "--categories", "tile", "--shots", "2", "--out", str(tmp_path / "m")], "maps: 100%"),
        "show-crops": (["show-crops", "--category", "tile", *feats, "--images", "2", "--out", str(tmp_path / "c.png")],
                       "show-crops ["),
        "tsne": (["tsne", "--method", "contrastive-residual", "--category", "tile", "--shots", "2", "--set",
                  "finetune_passes=[0,1]", *feats, "--out", str(tmp_path / "t")], "tsne ["),
        "show-pseudo": (["show-pseudo", "--category", "tile", "--dataset", "folder", "--data-root", str(tiny_root),
                         "--classes", "2", "--sources", "1", "--out", str(tmp_path / "p.png")], "show-pseudo ["),
    }[command]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert bar in err, err[-1000:]
    assert bar not in out and any(w in out for w in ("wrote", "AUROC", "maps in"))
    if bar.endswith("["):
        assert "stages done, done" in err  # every stage passed, and the bar said so


def test_feature_extraction_has_its_bar_and_no_progress_silences_it(tiny_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    one_torch_thread: None) -> None:  # fmt: skip
    """Extracting features is most of detect's, maps', show-crops' and tsne's time: the store counts the images.
    `--no-progress` (bench run's flag) leaves stderr empty, and so does a stderr that is not a terminal (a log, a
    pipe: an error stays one line there)."""
    from bench.cli import main

    pseudo = ["show-pseudo", "--category", "tile", "--dataset", "folder", "--data-root", str(tiny_root), "--classes",
              "1", "--sources", "1", "--out", str(tmp_path / "p.png")]  # fmt: skip
    assert main(pseudo) == 0 and capsys.readouterr().err == ""  # not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["detect", *_features(tiny_root, tmp_path / "a"), "--categories", "tile"]) == 0
    err = capsys.readouterr().err
    assert "features: 100%" in err and "img/s" in err
    assert main(["detect", *_features(tiny_root, tmp_path / "b"), "--categories", "tile", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "AUROC" in out and "features" not in err and "categories" not in err
    assert main([*pseudo, "--no-progress"]) == 0 and capsys.readouterr().err == ""
