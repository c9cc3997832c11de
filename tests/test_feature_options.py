"""The feature flags of every command that extracts features (``run``, ``detect``, ``maps``, ``show-crops``, ``tsne``):
declared once (``bench.cli._args.add_feature_options``), built into a ``FeatureConfig`` by one function
(``bench.run.config.feature_config``) and given by ``--config FILE.yaml`` with ``run``'s rules (docs/architecture.md).

Each command is run in this process up to the moment it builds its feature store, where the test stops it with the
configuration it asked for: no backbone is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli.main import build_parser
from bench.cli.run import build_config
from bench.datasets.mtd import CATEGORY, write_mtd
from bench.features import store as store_module
from bench.features.extractor import FeatureConfig
from bench.run.config import feature_config
from tests.helpers import cli

COMMANDS = ("run", "detect", "maps", "show-crops", "tsne")


class Built(BaseException):
    """Raised where a command builds its feature store (a BaseException: no command turns it into an error row)."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__(config.key())
        self.config = config


@pytest.fixture
def stop_at_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    def built(config: FeatureConfig, **kwargs: object) -> None:
        raise Built(config)

    monkeypatch.setattr(store_module, "SHARED_STORES", {})
    monkeypatch.setattr(store_module, "FeatureStore", built)


@pytest.fixture(scope="module")
def mtd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mtd(tmp_path_factory.mktemp("mtd") / "Magnetic-Tile-Defect")


def _argv(command: str, dataset: str, root: Path, category: str, out: Path, cache: Path) -> list[str]:
    """The command's own options for one job on ``category`` (the feature options are added by the tests)."""
    common = ["--dataset", dataset, "--data-root", str(root), "--cache-dir", str(cache), "--device", "cpu"]
    own = {
        "run": ["--method", "protonet", "--categories", category, "--shots", "1", "--seeds", "1", "--out", str(out),
                "--no-progress"],
        "detect": ["--categories", category],
        "maps": ["--categories", category, "--shots", "1", "--out", str(out)],
        "show-crops": ["--category", category, "--out", str(out / "crops.png")],
        "tsne": ["--method", "contrastive", "--category", category, "--shots", "1", "--out", str(out)],
    }[command]  # fmt: skip
    return [command, *common, *own]


def _features(command: str, argv: list[str]) -> FeatureConfig:
    """The feature configuration ``command`` builds from ``argv``."""
    if command == "run":  # its jobs build the store in a job runner that records errors: the config it hands them
        return build_config(build_parser(only="run").parse_args(argv)).features
    from bench.cli import main

    with pytest.raises(Built) as built:
        main(argv)
    return built.value.config


@pytest.mark.parametrize(
    "flags",
    [[], ["--layers", "layer3", "layer2", "--precision", "bf16", "--zero-init-last", "true", "--image-fit", "letterbox"]],
    ids=["defaults", "every-feature-flag"],
)
def test_the_five_commands_build_equal_feature_configs(stop_at_the_store, mtd_root, tmp_path, flags) -> None:  # noqa: ANN001
    """Equal options, equal feature configurations (so one cache): MTD's squash fit included when no --image-fit."""
    built = {
        command: _features(command, [*_argv(command, "mtd", mtd_root, CATEGORY, tmp_path / command, tmp_path / "cache"),
                                     "--backbone", "resnet18", "--weights", "random", *flags])
        for command in COMMANDS
    }  # fmt: skip
    expected = feature_config(
        "mtd", backbone="resnet18", weights="random",
        **({"layers": ["layer3", "layer2"], "precision": "bf16", "zero_init_last": True, "image_fit": "letterbox"}
           if flags else {}),
    )  # fmt: skip
    assert expected.image_fit == ("letterbox" if flags else "squash")
    for command, config in built.items():
        assert config == expected, command
        assert config.key() == expected.key(), command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_feature_command_reads_a_config_file_and_flags_win(stop_at_the_store, tiny_root, tmp_path, command) -> None:  # noqa: ANN001
    config = tmp_path / "features.yaml"
    config.write_text("image_fit: letterbox\nlayers: [layer2]\nweights: imagenet\nbackbone: resnet18\n")
    argv = _argv(command, "folder", tiny_root, "tile", tmp_path / "out", tmp_path / "cache")
    built = _features(command, [*argv, "--config", str(config), "--weights", "random"])
    assert built == feature_config("folder", backbone="resnet18", weights="random", layers=["layer2"], image_fit="letterbox")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_key_of_a_config_file_is_one_error_line(capsys, tiny_root, tmp_path, command) -> None:  # noqa: ANN001
    config = tmp_path / "features.yaml"
    config.write_text("image_fit: letterbox\nbackbon: resnet18\n")
    argv = _argv(command, "folder", tiny_root, "tile", tmp_path / "out", tmp_path / "cache")
    code, _, err = cli(capsys, *argv, "--config", str(config))
    assert code == 2, err
    assert err.startswith("error: unknown option(s) in ") and err.count("\n") == 1 and "backbon" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["detect", "maps", "show-crops", "tsne"])
def test_a_config_value_is_checked_as_its_flag(capsys, tiny_root, tmp_path, command) -> None:  # noqa: ANN001
    config = tmp_path / "features.yaml"
    config.write_text("image_fit: stretch\n")
    argv = _argv(command, "folder", tiny_root, "tile", tmp_path / "out", tmp_path / "cache")
    code, _, err = cli(capsys, *argv, "--config", str(config))
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--image-fit" in err and "letterbox" in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_feature_flags_and_config(capsys, command) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        build_parser(only=command).parse_args([command, "--help"])
    text = capsys.readouterr().out
    for flag in ("--backbone", "--weights", "--layers", "--zero-init-last", "--precision", "--image-fit",
                 "--coreset-ratio", "--device", "--threads", "--cache-dir", "--config"):  # fmt: skip
        assert flag in text, (command, flag)
