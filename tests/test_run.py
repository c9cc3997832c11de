"""End-to-end ``bench run``: results rows, resume, determinism, failures as rows (every registered method: test_beats_chance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.methods import import_all
from bench.results import read_rows

import_all()

TINY = ["--dataset", "synthetic-tiny", "--backbone", "resnet18", "--weights", "random", "--no-progress"]


def _run(tmp_path: Path, *extra: str, out: str = "out") -> tuple[int, list[dict]]:
    args = ["run", *TINY, "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), *extra]
    code = main(args)
    path = tmp_path / out / "results.jsonl"
    return code, (read_rows([path]).rows if path.exists() else [])


def test_run_protonet_rows_resume_and_determinism(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, rows = _run(tmp_path, "--method", "protonet", "direct", "--shots", "1,3", "--seeds", "1-2", "--set", "epochs=3")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RANDOM weights" in out and "mean" in out
    cats = {r["category"] for r in rows}
    assert len(rows) == 2 * 2 * 2 * len(cats)
    r = rows[0]
    for k in ("accuracy", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion", "n_queries", "n_classes",
              "env", "weights", "episode", "timing", "method_config", "features", "protocol", "class_set"):
        assert k in r, k
    assert r["weights"]["weights"] == "random" and r["weights"]["pretrained"] is False
    assert r["env"]["packages"]["torch"].startswith("2.13")
    assert (tmp_path / "out" / r["episode"]["file"]).exists()
    assert (tmp_path / "out" / "summary.md").exists()
    # resume: nothing re-runs
    code, rows2 = _run(tmp_path, "--method", "protonet", "direct", "--shots", "1,3", "--seeds", "1-2", "--set", "epochs=3")
    assert code == 0 and len(rows2) == len(rows)
    assert "already finished" in capsys.readouterr().out
    # determinism: a fresh output folder (cache kept) gives identical predictions
    code, rows3 = _run(tmp_path, "--method", "protonet", "direct", "--shots", "1,3", "--seeds", "1-2", "--set", "epochs=3", out="again")
    key = lambda r: (r["method"], r["category"], r["shots"], r["seed"])  # noqa: E731
    a = {key(r): (r["accuracy"], r["y_pred"]) for r in rows}
    b = {key(r): (r["accuracy"], r["y_pred"]) for r in rows3}
    assert a == b


def test_shots_no_category_supports_stop_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # synthetic-tiny has 7 images per defect type: 7-shot leaves no query in any category. Every 7-shot job would
    # fail with the same reason (they were error rows): the run is refused up front. Jobs that fail in one category
    # only stay error rows (tests/test_bad_inputs.py: test_defect_type_with_too_few_images, broken images).
    code, rows = _run(tmp_path, "--method", "protonet", "--shots", "1,7", "--seeds", "1")
    err = capsys.readouterr().err
    assert code == 2 and rows == []
    assert "--shots 7: no category has the images for more than 6-shot" in err and "needs at least 8" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "protonett"], "Did you mean 'protonet'"),
        (["--method", "protonet", "--dataset", "mvtec"], "unknown dataset 'mvtec'"),
        (["--method", "protonet", "--backbone", "resnet5"], "unknown backbone"),
        (["--method", "protonet", "--set", "nope=1"], "no method of this run has an option"),
        (["--method", "protonet", "--set", "protonet.nope=1"], "has no option"),
    ],
)
def test_bad_cli_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code = main(["run", *TINY, "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_imagenet_weights_offline_fail_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", "--dataset", "synthetic-tiny", "--backbone", "resnet18", "--method", "protonet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--weights random" in err and "--weights /path/to/weights.pth" in err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_yaml_config(tmp_path: Path) -> None:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("method: protonet\nshots: 2\nseeds: 1\ncategories: [tile]\n")
    code, rows = _run(tmp_path, "--config", str(cfg))
    if code == 2:
        pytest.fail("config run failed")
    assert {(r["shots"], r["seed"]) for r in rows} == {(2, 1)}


@pytest.mark.slow
def test_parallel_run_extracts_each_image_once_before_the_jobs(tmp_path: Path) -> None:
    """--jobs 2: the feature stage is split over the workers first, so no job meets a cold image (both workers
    would otherwise start on the same category and extract its images twice), and the rows equal a serial run."""
    common = ["--method", "protonet-residual", "direct", "--set", "epochs=2", "--shots", "2", "--seeds", "1-2",
              "--categories", "tile"]  # fmt: skip
    code, rows = _run(tmp_path, *common, "--jobs", "2", out="par")
    assert code == 0 and len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        if r["method"] == "protonet-residual":
            assert r["cache"]["features"]["misses"] == 0 and r["cache"]["features"]["hits"] > 0, r["cache"]
    code, serial = _run(tmp_path, *common, out="ser")
    key = lambda r: (r["method"], r["seed"])  # noqa: E731
    assert [(key(r), r["y_pred"]) for r in sorted(rows, key=key)] == [(key(r), r["y_pred"]) for r in sorted(serial, key=key)]


def test_every_task_keeps_the_episode_a_concurrent_run_saved(tmp_path) -> None:  # noqa: ANN001
    """The same-file race guard of the one job skeleton (bench.run.job.save_episode): a run that loses the rename of
    an episode another run saved at the same time goes on with that file (discovery jobs used to fail here)."""
    import errno

    from bench.run.job import save_episode

    class Lost:
        hash = "abc"

        def save(self, folder: Path) -> Path:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "abc.json").write_text("{}")  # the other run's file
            raise OSError(errno.EACCES, "the rename lost the race")

    class Failed(Lost):
        def save(self, folder: Path) -> Path:
            raise OSError(errno.EACCES, "denied")

    assert save_episode(Lost(), None, tmp_path) == tmp_path / "episodes" / "abc.json"  # type: ignore[arg-type]
    assert "cannot write the episode file" in str(save_episode(Failed(), None, tmp_path / "x"))  # type: ignore[arg-type]
