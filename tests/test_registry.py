"""The method and dataset registries: names, near-match errors, wildcards, option types, the import of every module."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.method import METHODS, get_method
from bench.registry import Registry, UnknownNameError


def test_registry_errors() -> None:
    r: Registry[int] = Registry("thing")
    r.add("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        r.add("alpha", 2)
    with pytest.raises(UnknownNameError, match="Did you mean 'alpha'"):
        r.get("alpah")


def test_methods_registered_with_descriptions() -> None:
    get_method("protonet")
    assert {"direct", "direct-all", "protonet", "protonet-residual"} <= set(METHODS.names())
    for e in METHODS:
        assert e.description, f"method {e.name} has no description"
        e.obj.make_config()
    with pytest.raises(UnknownNameError, match="protonet"):
        get_method("protonett")
    with pytest.raises(ConfigError, match="no option"):
        get_method("protonet").make_config({"nope": 1})
    with pytest.raises(ConfigError, match="invalid options"):
        get_method("protonet").make_config({"features": "bogus"})


def test_option_values_take_the_declared_types(tmp_path: Path) -> None:
    """YAML (``--set`` values, ``--config`` files) reads ``1e-3`` as a string; options are converted to the
    dataclass field types, and a value that cannot be converted is a configuration error naming the option."""
    from bench.cli import build_parser
    from bench.cli.run import build_config

    cfg = get_method("direct").make_config({"lr": "1e-3", "epochs": "5"})
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.epochs == 5 and isinstance(cfg.epochs, int)
    c = get_method("contrastive").make_config({"finetune_passes": "0,2,3", "pretrain": "false", "lr": 1})
    assert c.finetune_passes == (0, 2, 3) and c.pretrain is False and c.lr == 1.0
    for bad, match in (({"lr": "fast"}, "'lr' must be a number"), ({"epochs": 2.5}, "'epochs' must be an integer"),
                       ({"pretrain": "maybe"}, "'pretrain' must be true or false")):
        with pytest.raises(ConfigError, match=match):
            get_method("contrastive" if "pretrain" in bad else "direct").make_config(bad)
    grid = tmp_path / "grid.yaml"
    grid.write_text("method: direct\ncoreset_ratio: 1e-2\nset:\n  lr: 1e-3\n")
    run = build_config(build_parser().parse_args(["run", "--config", str(grid), "--set", "epochs=3"]))
    assert run.coreset_ratio == 0.01 and isinstance(run.coreset_ratio, float)
    assert get_method("direct").make_config(run.method_options) == get_method("direct").make_config({"lr": 0.001, "epochs": 3})
    grid.write_text("method: direct\njobs: many\n")
    with pytest.raises(ConfigError, match="'jobs' must be an integer"):
        build_config(build_parser().parse_args(["run", "--config", str(grid)]))


def test_names_take_a_wildcard() -> None:
    """As timm's ``list_models(filter)``: fnmatch rules, case-sensitive, sorted."""
    r: Registry[int] = Registry("thing")
    for name in ("beta-raw", "alpha", "alpha-raw", "Alpha"):
        r.add(name, 1)
    assert r.names() == ["Alpha", "alpha", "alpha-raw", "beta-raw"]
    assert r.names("alpha*") == ["alpha", "alpha-raw"]
    assert r.names("*-raw") == ["alpha-raw", "beta-raw"]
    assert r.names("[ab]*a") == ["alpha"] and r.names("zzz*") == []
    assert [e.name for e in r.entries("*-raw")] == ["alpha-raw", "beta-raw"]
    get_method("protonet")
    assert METHODS.names("contrastive*")[0] == "contrastive" and all(n.startswith("contrastive") for n in METHODS.names("contrastive*"))


def test_each_registry_imports_its_own_package() -> None:
    """One helper imports the modules that register into a registry (every public module, no sub-package)."""
    from bench.datasets import DATASETS
    from bench.registry import import_modules

    assert METHODS.package == "bench.methods" and DATASETS.package == "bench.datasets"
    DATASETS.import_all()
    import_modules("bench.datasets")  # a second call is a no-op
    assert {"folder", "mvtec_ad", "mvtec_3d", "mtd", "synthetic", "synthetic-tiny"} <= set(DATASETS.names())
    assert {e.obj.__module__ for e in DATASETS}.isdisjoint({"bench.datasets.pseudo", "bench.datasets.pseudo.generator"})


def test_check_options_returns_each_methods_config() -> None:
    from bench.method import check_options

    specs = [get_method("direct"), get_method("protonet")]
    configs = check_options(specs, {"epochs": 3, "protonet.features": "residual"})
    assert configs["direct"].epochs == 3 and configs["protonet"].features == "residual"
    with pytest.raises(ConfigError, match="no method of this run has an option 'nope'"):
        check_options(specs, {"nope": 1})
