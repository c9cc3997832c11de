"""`bench report` / `bench leaderboard` on fabricated result rows in the exact store schema.

The numbers in the outputs are recomputed here independently, with plain numpy, from the raw rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main as cli_main
from bench.metrics import episode_metrics
from bench.results import ResultsStore

CATS = {"bottle": ["broken", "crack", "dent"], "cable": ["bent", "cut", "swap", "twist"], "capsule": ["poke", "scratch"]}
SHOTS = (1, 2)
SEEDS = (1, 2, 3, 4, 5)
QUALITY = {("contrastive", "imagenet"): 0.7, ("protonet", "imagenet"): 0.45, ("protonet", "random"): 0.3}


def make_row(method: str, category: str, shots: int, seed: int, weights: str = "imagenet", dataset: str = "synthetic",
             status: str = "ok", protocol: str = "paper_fixed") -> dict:  # fmt: skip
    """One result row in the store's schema (schema 1), with consistent labels, predictions and metrics."""
    names = CATS.get(category, ["a", "b", "c"])
    rng = np.random.default_rng([seed, shots, len(method), len(category), len(weights)])
    y_true = np.repeat(np.arange(len(names)), [8 + 2 * i - shots for i in range(len(names))])
    correct = rng.random(len(y_true)) < QUALITY.get((method, weights), 0.5)
    y_pred = np.where(correct, y_true, (y_true + 1 + rng.integers(0, len(names) - 1, len(y_true))) % len(names))
    mcfg = {"features": "residual", "lr": 1e-4}
    ident = json.dumps([method, weights, dataset, category, shots, seed, protocol])
    row = {
        "key": hashlib.sha256(ident.encode()).hexdigest()[:16], "status": status, "error": None,
        "method": method, "method_config": mcfg, "method_config_hash": hashlib.sha256(json.dumps(mcfg).encode()).hexdigest()[:16],
        "features": {"backbone": "resnet50", "weights": weights, "zero_init_last": False if weights == "random" else None,
                     "precision": "fp32", "coreset_ratio": 0.1, "key": f"resnet50-{weights}"},
        "weights": {"backbone": "resnet50", "weights": weights, "pretrained": weights != "random",
                    "source": "random-init" if weights == "random" else "timm/resnet50.tv_in1k", "sha256": "",
                    "zero_init_last": False if weights == "random" else None},
        "dataset": dataset, "data_root": "/tmp/data", "dataset_manifest": "m" + category, "category": category,
        "shots": shots, "seed": seed, "protocol": protocol,
        "class_set": {"combined": "kept", "good": "excluded", "min_defect_types": 2},
        "episode": {"hash": "e" + category + str(shots), "file": "episodes/x.json", "support_rule": "first-n by sorted file name"},
        "timing": {"total": 1.0}, "cache": {}, "train_log": {},
        "env": {"harness": "0.1.0", "git_commit": "abc", "python": "3.11"}, "created": f"2024-06-0{seed}T00:00:00+00:00",
    }  # fmt: skip
    if status != "ok":
        row.update(error="RuntimeError: boom")
        return row
    row.update(class_names=names, n_classes=len(names), n_queries=len(y_true), y_true=y_true.tolist(), y_pred=y_pred.tolist())
    row.update(episode_metrics(y_true.tolist(), y_pred.tolist(), names))
    return row


def write_results(folder: Path) -> tuple[Path, list[dict]]:
    """2 methods × 3 categories × 2 shots × 5 seeds; protonet lacks `capsule`; one failed contrastive job; one
    protonet row with random weights; a truncated last line. Returns the file and the rows written."""
    rows = []
    for cat in CATS:
        for shots in SHOTS:
            for seed in SEEDS:
                failed = (cat, shots, seed) == ("cable", 2, 3)
                rows.append(make_row("contrastive", cat, shots, seed, status="error" if failed else "ok"))
                if cat != "capsule":
                    rows.append(make_row("protonet", cat, shots, seed))
    rows.append(make_row("protonet", "bottle", 1, 1, weights="random"))
    path = folder / "results.jsonl"
    store = ResultsStore(path)
    for r in rows:
        store.append(r)
    with path.open("a") as f:
        f.write(json.dumps(make_row("protonet", "cable", 1, 9))[:57])  # a run killed mid-write
    return path, rows


def recompute(rows: list[dict], method: str, weights: str = "imagenet") -> pd.DataFrame:
    """Plain numpy: per (category, shots) mean and sample std of accuracy % over ok seeds."""
    out = []
    for cat in CATS:
        for s in SHOTS:
            v = np.array([100 * r["accuracy"] for r in rows if r["method"] == method and r["weights"]["weights"] == weights
                          and r["category"] == cat and r["shots"] == s and r["status"] == "ok"])  # fmt: skip
            out.append({"category": cat, "shots": s, "mean": v.mean() if len(v) else np.nan,
                        "std": v.std(ddof=1) if len(v) > 1 else np.nan, "n": len(v)})  # fmt: skip
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    return write_results(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report_dir(fabricated: tuple[Path, list[dict]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli_main(["report", str(fabricated[0]), "--format", "md", "csv", "latex", "html", "--out", str(out), "--boot", "2000"])
    assert rc == 0
    return out, err.getvalue()


def test_report_outputs_exist(report_dir: tuple[Path, str]) -> None:
    out, _ = report_dir
    for name in ("report.md", "report.tex", "report.html"):
        assert (out / name).stat().st_size > 500, name
    assert list((out / "csv").glob("method-*.csv"))
    assert list((out / "plots").glob("*.png")) and list((out / "plots").glob("*.svg"))
    tex = (out / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "\\toprule" in tex


def test_truncated_line_reported(report_dir: tuple[Path, str]) -> None:
    out, err = report_dir
    assert "skipped 1 unreadable or incomplete line" in err
    assert "skipped 1 unreadable or incomplete line" in (out / "report.md").read_text()


def test_csv_numbers_match_raw_rows(report_dir: tuple[Path, str], fabricated: tuple[Path, list[dict]]) -> None:
    out, _ = report_dir
    rows = fabricated[1]
    data = pd.concat([pd.read_csv(p) for p in (out / "csv").glob("method-*.csv")])
    for method, label in (("contrastive", "contrastive"), ("protonet", "protonet [weights=imagenet]")):
        mine = data[(data.configuration == label) & (data.category != "average")].sort_values(["category", "shots"])
        ref = recompute(rows, method).sort_values(["category", "shots"])
        np.testing.assert_allclose(mine.mean_pct.to_numpy(float), ref["mean"].to_numpy(float), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mine.std_pct.to_numpy(float), ref["std"].to_numpy(float), rtol=1e-9, atol=1e-9)
        assert mine.n.tolist() == ref.n.tolist()
        avg = data[(data.configuration == label) & (data.category == "average")].sort_values("shots")
        for s, m in zip(avg.shots, avg.mean_pct):
            expect = ref[ref.shots == s]["mean"].dropna().mean()  # mean over categories of the seed means
            assert m == pytest.approx(expect)


def test_incomplete_cells_and_config_labels(report_dir: tuple[Path, str]) -> None:
    md = (report_dir[0] / "report.md").read_text()
    assert re.search(r"\(4/5\)†", md), "the failed job's cell must show 4/5"
    assert "— (0/5)" in md, "protonet's missing category must show 0/5"
    assert "protonet \\[weights=imagenet\\]" in md  # brackets escaped: a label can hold a user's --set value
    assert "protonet \\[weights=random\\]" in md
    assert "NOT comparable with the paper" in md
    assert "(1/5)†" in md  # the single random-weights run


def test_leaderboard(fabricated: tuple[Path, list[dict]], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "leaderboard.md"
    assert cli_main(["leaderboard", str(fabricated[0]), "--out", str(out), "--format", "md", "csv", "--boot", "2000"]) == 0
    md = out.read_text()
    assert "skipped 1 unreadable or incomplete line" in capsys.readouterr().err
    assert "unit" in md and "10,000" not in md and "2,000 resamples" in md
    assert "python -m bench leaderboard" in md
    table = pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "leaderboard").glob("leaderboard-*.csv")))
    s1 = table[table.shots == 1]
    ranked = s1[s1["rank"].notna()].sort_values("rank")
    assert ranked.configuration.tolist()[0] == "contrastive"  # complete at 1-shot, highest quality
    # protonet lacks a category: never ranked, marked incomplete
    pn = s1[s1.configuration == "protonet [weights=imagenet]"].iloc[0]
    assert pd.isna(pn["rank"]) and not pn.complete and pn.n == 10 and pn.N == 15
    assert "chance" in set(table.configuration) and "majority" in set(table.configuration)
    # contrastive 2-shot has a failed job: incomplete 14/15, so not ranked either
    c2 = table[(table.shots == 2) & (table.configuration == "contrastive")].iloc[0]
    assert c2.n == 14 and not c2.complete
    assert "†" in md and "14/15" in md
    rows = fabricated[1]
    chance = np.mean([np.mean([r["chance"] for r in rows if r["category"] == c and r["status"] == "ok" and r["shots"] == 1]) for c in CATS])
    assert table[(table.configuration == "chance") & (table.shots == 1)].mean_pct.iloc[0] == pytest.approx(100 * chance)


def test_compare_paper(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.jsonl")
    for cat in ("bottle", "cable"):
        for seed in (1, 2):
            store.append(make_row("contrastive", cat, 2, seed, dataset="mvtec_ad"))
    out = tmp_path / "rep"
    assert cli_main(["report", str(tmp_path), "--compare", "paper", "--out", str(out), "--no-plots", "--format", "md", "csv", "--boot", "500"]) == 0
    md = (out / "report.md").read_text()
    assert "vs paper (Table 1)" in md and "71.93" in md and "29.21" in md  # bottle / cable 2-shot in Table 1
    cmp = pd.concat(pd.read_csv(p) for p in (out / "csv").glob("paper-*.csv"))
    assert cmp[(cmp.category == "bottle") & (cmp.shots == 2)].paper_pct.iloc[0] == pytest.approx(71.93)


def test_every_format_shows_the_recomputed_numbers(report_dir: tuple[Path, str], fabricated: tuple[Path, list[dict]]) -> None:
    out, _ = report_dir
    md, tex, page = ((out / n).read_text() for n in ("report.md", "report.tex", "report.html"))
    ref = recompute(fabricated[1], "contrastive")
    for r in ref.itertuples():
        text = f"{r.mean:.2f} ± {r.std:.2f}"
        assert text in md and text in page, text
        assert text.replace("±", r"$\pm$") in tex, text


def test_leaderboard_numbers(fabricated: tuple[Path, list[dict]], tmp_path: Path) -> None:
    assert cli_main(["leaderboard", str(fabricated[0]), "--out", str(tmp_path / "lb.csv"), "--no-plots", "--boot", "2000"]) == 0
    table = pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "lb").glob("*.csv")))
    ref = recompute(fabricated[1], "contrastive")
    for s in SHOTS:
        row = table[(table.configuration == "contrastive") & (table.shots == s)].iloc[0]
        assert row.mean_pct == pytest.approx(ref[ref.shots == s]["mean"].mean())
        assert row.ci_low_pct < row.mean_pct < row.ci_high_pct


def test_configurations_never_pooled(tmp_path: Path) -> None:
    """Different protocol or harness version: separate lines, labelled by what differs."""
    from bench.report.load import load_results

    store = ResultsStore(tmp_path / "results.jsonl")
    for seed in (1, 2):
        store.append(make_row("protonet", "bottle", 1, seed))
        store.append(make_row("protonet", "bottle", 1, seed, protocol="random_episodes"))
        newer = make_row("protonet", "cable", 1, seed)
        newer["env"]["harness"], newer["key"] = "0.2.0", newer["key"] + "-v2"
        store.append(newer)
    res = load_results([tmp_path])
    assert len(res.groups()) == 2 and len(res.configs) == 3
    assert sorted(res.labels.values()) == ["protonet", "protonet [harness=0.1.0]", "protonet [harness=0.2.0]"]
    md_path = tmp_path / "rep"
    assert cli_main(["report", str(tmp_path), "--out", str(md_path), "--no-plots", "--boot", "500"]) == 0
    md = (md_path / "report.md").read_text()
    assert "## synthetic · random_episodes" in md and "## synthetic · paper_fixed" in md
    assert "protonet \\[harness=0.2.0\\]" in md and "(0/2)" in md  # the 0.2.0 run covers cable only (brackets escaped)

def test_paper_data_and_mapping() -> None:
    from bench.report import paper

    from importlib import resources

    shipped = resources.files("bench").joinpath("data/paper_results.csv").read_bytes()
    # the transcription of the paper's tables (docs/method-notes.md §3) changes only on purpose
    assert hashlib.sha256(shipped).hexdigest() == "1ab8bbd8cb773f9f6c6ecf79b4323eafc8f84db2f2593271ecb344608f8a0f9b"
    df = paper.load_paper_results()
    assert list(df.columns[:7]) == ["table", "dataset", "method", "column", "category", "shots", "accuracy_percent"]
    body, printed = paper.paper_table("Table 9 (Appendix C)")
    assert body[3].mean() == pytest.approx(26.64, abs=0.01) and printed[3] == pytest.approx(28.12)  # docs/method-notes.md §3
    with pytest.raises(KeyError):
        paper.paper_table("unlabelled appendix table")
    assert paper.paper_table_name("contrastive", "mvtec_3d") == "Table 2"
    assert paper.paper_table_name("contrastive", "mvtec_3d", good_included=True) == "Table 12 (Appendix F)"
    assert paper.paper_table_name("contrastive", "synthetic") is None
    assert paper.ablation_name("relationnet-residual-pretrain") == "vanilla + residual + pretraining (Table 8)"
    assert paper.ablation_name("contrastive-raw-pretrain") == "contrastive + pretraining, raw features (Table 11)"
    assert paper.ablation_name("my-new-method") == "my-new-method"
    order = sorted(["contrastive", "my-new-method", "direct", "contrastive-residual", "protonet"], key=paper.ablation_order)
    assert order == ["direct", "contrastive-residual", "contrastive", "protonet", "my-new-method"]

# ------------------------------------------------------------------------------------------ bench tsne
@pytest.fixture()
def fake_methods() -> object:
    """Two tiny methods for `bench tsne` (one with an embedding, one without), removed again afterwards so that
    registry-wide tests elsewhere never see them."""
    from bench.method import METHODS

    _register_fakes()
    yield
    for name in FAKES:
        METHODS._entries.pop(name, None)  # the registry has no public removal


FAKES = ("test-fake-embed", "test-fake-noembed")


def _register_fakes() -> None:
    """Register the fake methods (idempotent)."""
    from dataclasses import dataclass

    from bench.method import METHODS, Method, get_method, register_method

    get_method("protonet")  # import the real methods first, so the registry is complete

    @dataclass(frozen=True)
    class FakeConfig:
        dim: int = 8

    class FakeEmbed(Method):
        """Nearest class mean on the first `dim` pooled feature channels."""

        Config = FakeConfig

        def embed(self, paths):  # noqa: ANN001, ANN201
            x = self.ctx.features.patch_features(list(paths)).mean((2, 3))
            x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            return x[:, : self.config.dim]

        def fit(self, support):  # noqa: ANN001, ANN201
            x, y = self.embed(support.paths), np.asarray(support.labels)
            self.protos = np.stack([x[y == c].mean(0) for c in range(support.n_classes)])

        def predict(self, query_paths):  # noqa: ANN001, ANN201
            return -((self.embed(query_paths)[:, None] - self.protos[None]) ** 2).sum(-1)

    class FakeNoEmbed(FakeEmbed):
        """Same, without an embedding."""

        embed = None  # type: ignore[assignment]

    if FAKES[0] not in METHODS:
        register_method(FAKES[0])(FakeEmbed)
        register_method(FAKES[1])(FakeNoEmbed)


@pytest.mark.usefixtures("fake_methods")
def test_tsne_refuses_methods_without_embedding(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["tsne", "--method", "test-fake-noembed", "--category", "x"]) == 2
    assert "exposes no embedding" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("fake_methods")
def test_tsne_plots_before_and_after(tmp_path: Path) -> None:
    pytest.importorskip("bench.features", reason="bench.features (FeatureStore) is not available yet")
    from bench.datasets import DatasetOptions, load_dataset

    cat = load_dataset("synthetic-tiny", str(tmp_path / "data"), DatasetOptions()).categories()[0]
    out = tmp_path / "tsne"
    rc = cli_main(["tsne", "--method", "test-fake-embed", "--dataset", "synthetic-tiny", "--data-root", str(tmp_path / "data"),
                   "--category", cat, "--shots", "1", "--seed", "1", "--weights", "random", "--device", "cpu",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])  # fmt: skip
    assert rc == 0
    stem = out / f"tsne-test-fake-embed-{cat}-1shot-seed1"
    assert stem.with_suffix(".png").stat().st_size > 1000 and stem.with_suffix(".svg").exists()
    coords = pd.read_csv(stem.with_suffix(".csv"))
    assert set(coords.role) == {"support", "query"} and np.isfinite(coords[["before_x", "after_y"]].to_numpy()).all()


class _FakeStore:
    """Stands in for bench.features.FeatureStore: deterministic (N, 16, 4, 4) 'patch features' per path."""

    class weights_info:  # noqa: N801
        @staticmethod
        def record() -> dict:
            return {"backbone": "fake", "weights": "random", "pretrained": False, "source": "test", "sha256": "", "zero_init_last": None}

    def patch_features(self, paths):  # noqa: ANN001, ANN201
        import torch

        out = []
        for p in paths:
            label = Path(p).parent.name
            rng = np.random.default_rng(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
            centre = np.random.default_rng(len(label) * 7 + ord(label[0])).normal(0, 3, 16)
            out.append(centre[:, None, None] + rng.normal(0, 1, (16, 4, 4)))
        return torch.tensor(np.stack(out), dtype=torch.float32)


@pytest.mark.usefixtures("fake_methods")
def test_tsne_with_fake_feature_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The whole `bench tsne` path (episode, fit, embed, t-SNE, plot, CSV) with the feature store faked."""
    import bench.run.grid
    import bench.run.job
    from bench.datasets import load_dataset

    data = tmp_path / "data"
    store = _FakeStore()
    monkeypatch.setattr(bench.run.job, "feature_store", lambda cfg: store)
    monkeypatch.setattr(bench.run.grid, "preflight", lambda cfg: load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_options()))
    out = tmp_path / "tsne"
    args = ["tsne", "--method", "test-fake-embed", "--dataset", "synthetic-tiny", "--data-root", str(data), "--category", "tile",
            "--shots", "2", "--seed", "3", "--weights", "random", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    msg = capsys.readouterr().out
    assert "support" in msg and "random-init backbone" in msg
    stem = out / "tsne-test-fake-embed-tile-2shot-seed3"
    assert stem.with_suffix(".png").stat().st_size > 1000 and "<svg" in stem.with_suffix(".svg").read_text()
    coords = pd.read_csv(stem.with_suffix(".csv"))
    assert (coords.role == "support").sum() == 2 * 3 and (coords.role == "query").sum() == 3 * (7 - 2)
    assert set(coords["class"]) == {"contamination", "crack", "stain"}
    assert np.isfinite(coords[["before_x", "before_y", "after_x", "after_y"]].to_numpy()).all()
    assert cli_main([*args[:8], "nope", *args[9:]]) == 2  # unknown category: a clear error


def test_every_registered_method_has_a_paper_or_readable_name() -> None:
    """Tables name methods as the paper does; a method missing here would show as its bare registry name."""
    from bench.method import METHODS
    from bench.methods import import_all
    from bench.report.paper import OTHER_NAMES, PAPER_METHODS

    import_all()
    registered = set(METHODS.names())
    named = set(PAPER_METHODS) | set(OTHER_NAMES)
    assert registered - named == set(), "registered methods without a table name"
    assert named - registered == set(), "table names for methods that are not registered"


def test_document_title_names_the_tasks_the_results_hold() -> None:
    """A report of detection and discovery rows together was titled 'Few-shot defect-type classification'; the title
    names the tasks present (classification's when the results are empty)."""
    from types import SimpleNamespace

    from bench.report.load import Results

    def subject(tasks: list[str]) -> str:
        return Results.subject(SimpleNamespace(tasks=lambda: tasks))  # type: ignore[arg-type]

    assert subject(["classification"]) == subject([]) == "Few-shot defect-type classification"
    assert subject(["detection", "discovery"]) == "Few-shot anomaly detection · Anomaly class discovery"
    assert subject(["discovery"]) == "Anomaly class discovery"
