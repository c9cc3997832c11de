"""Figures and tables a researcher can paste (issue #24): distinct styles for up to 20 configurations, legends and
labels off the data, human titles with the protocol, class set, backbone and the random-init caveat inside the
picture, a single category drawn as ranked bars, the MEBin whole-tile mask explained, LaTeX text columns left-aligned
and hashes out of the cells, CSV counts as integers and floats without binary noise."""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main as cli_main
from bench.report import plots
from bench.report.document import Document, Section, Table
from bench.report.render import csv_numbers, table_latex, write_csvs
from bench.results import ResultsStore
from tests.test_report import make_row


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib figures the plot functions save, in order (they are saved as usual too)."""
    figures: list = []
    save = plots._save

    def keep(fig, stem, caption):  # noqa: ANN001, ANN202
        figures.append(fig)
        return save(fig, stem, caption)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _curves(n: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        m = rng.uniform(20, 70) + np.arange(1, 6)
        out[f"method-{i}"] = pd.DataFrame({"shots": np.arange(1, 6), "mean_pct": m, "ci_low_pct": m - 3, "ci_high_pct": m + 3,
                                           "n": 5, "N": 5})  # fmt: skip
    return out


@pytest.mark.parametrize("n", [12, 20, 45])
def test_method_styles_are_pairwise_distinct(n: int) -> None:
    """No two configurations share a style; up to 20 none share a colour (the committed screw plot drew `direct`
    and `protonet` both blue); a light twin differs from its strong colour in marker and line style too."""
    labels = [f"m{i}" for i in range(n)]
    st = plots.method_styles(labels)
    keys = [(s.color, s.marker, s.linestyle) for s in st.values()]
    assert len(set(keys)) == n
    colours = [st[f"m{i}"].color for i in range(min(n, 20))]
    assert len(set(colours)) == len(colours)
    for i in range(min(n - 10, 10)):
        a, b = st[f"m{i}"], st[f"m{i + 10}"]
        assert a.marker != b.marker and a.linestyle != b.linestyle and a.hatch != b.hatch


def test_legend_and_reference_labels_stay_off_the_data(drawn: list, tmp_path: Path) -> None:
    """The legend sits outside the axes and the reference curves are named in it: no label is written over the
    data or past the axes (the AUROC-vs-k plot's published-curve labels ran past the right edge)."""
    refs = {"RegAD (other-categories; MVTec AD)": pd.Series([80.0, 85.0, 91.0], index=[2, 4, 5]),
            "chance": pd.Series([20.0] * 5, index=range(1, 6))}  # fmt: skip
    plots.accuracy_vs_shots(_curves(14), tmp_path / "curves", "Image AUROC vs k — MTD", refs, subtitle="protocol x")
    (fig,) = drawn
    ax = fig.axes[0]
    fig.canvas.draw()
    box = ax.get_window_extent()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= box.x1 - 1, "the legend overlaps the axes"
    assert len(ax.get_legend().get_texts()) == 14 + 2
    for t in ax.texts:
        e = t.get_window_extent()
        assert box.x0 <= e.x0 and e.x1 <= box.x1, f"label {t.get_text()!r} runs past the axes"
    with Image.open(tmp_path / "curves.png") as im:  # the tight box keeps the outside legend in the picture
        assert im.size[0] > fig.get_figwidth() * 130 * 0.9


def _fabricate(folder: Path) -> Path:
    """Two configurations (protonet with random weights, contrastive) on one category, shots 1-2, seeds 1-3."""
    path = folder / "results.jsonl"
    store = ResultsStore(path)
    for shots, seed in itertools.product((1, 2), (1, 2, 3)):
        store.append(make_row("protonet", "bottle", shots, seed, weights="random", dataset="mvtec_ad"))
        store.append(make_row("contrastive", "bottle", shots, seed, weights="random", dataset="mvtec_ad"))
    return path


@pytest.fixture(scope="module")
def one_category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fabricate(tmp_path_factory.mktemp("runs"))


def _figure_text(fig) -> tuple[str, str]:  # noqa: ANN001
    """(title, subtitle) of a figure: the suptitle and the first axes' title."""
    return fig._suptitle.get_text().replace("\n", " "), fig.axes[0].get_title().replace("\n", " ")


def test_report_figures_have_human_titles_and_keep_the_caveat(drawn: list, one_category: Path, tmp_path: Path) -> None:
    """Titles name what and where for people; the protocol, class set, backbone and the random-init caveat are in
    the subtitle, inside the picture (a caption does not travel with a pasted PNG); no internal group identifier."""
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli_main(["report", str(one_category), "--out", str(tmp_path / "r"), "--boot", "200"]) == 0
    texts = [_figure_text(f) for f in drawn]
    assert texts, "the report drew no figure"
    for title, subtitle in texts:
        assert "— MVTec AD" in title and "paper_fixed · combined" not in title, title
        assert "protocol paper_fixed" in subtitle and "'good' excluded" in subtitle, subtitle
        assert "resnet50, random init: NOT comparable with the paper" in subtitle, subtitle
    assert any(t.startswith("Defect-type accuracy vs shots") for t, _ in texts)


def test_one_category_gets_ranked_bars_not_a_one_group_bar_chart(drawn: list, one_category: Path, tmp_path: Path) -> None:
    """With a single category the per-category chart is one horizontal bar per configuration, best at the top,
    named on the axis (no legend to decode), and its title names the category."""
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli_main(["leaderboard", str(one_category), "--out", str(tmp_path / "lb.md"), "--boot", "200"]) == 0
    bars = [f for f in drawn if "on bottle" in _figure_text(f)[0]]
    assert len(bars) == 1, [_figure_text(f)[0] for f in drawn]
    ax = bars[0].axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(names) == ["contrastive", "protonet"] and ax.get_legend() is None
    widths = [p.get_width() for p in ax.patches]
    assert widths == sorted(widths), "best configuration at the top"


def test_latex_aligns_text_left_numbers_right_and_footnotes_hashes() -> None:
    """Text columns ``l``, numbers ``r``; a weights hash leaves its cell for a footnote (12 digits), so no
    unbreakable hex word runs off a page column."""
    full = "579344248a93" + "0" * 52
    disp = pd.DataFrame({"paper row": ["kNN, raw features", "ProtoNet"], "options hash": ["51d195ade1", "7072f27b8e"],
                         "backbone / weights": [f"lite0 / imagenet (pkg 0.1.0, sha256:{full[:12]})", f"r50 / file sha256:{full}"],
                         "1-shot": ["45.1 ± 2.0", "–"], "coverage": ["3×5 of 3×5 (15/15)", "[40.1, 50.2]"]},
                        index=pd.Index(["knn", "protonet"], name="configuration"))  # fmt: skip
    tex = table_latex(Table("t", "T", disp))
    assert r"\begin{tabular}{llllrr}" in tex
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    assert "sha256" not in body and full[:12] not in body and r"(pkg 0.1.0\textsuperscript{a})" in body
    assert r"\textsuperscript{a} sha256 579344248a93 (first 12 hex digits)" in tex and full not in tex


def test_latex_tables_are_ascii() -> None:
    """Every symbol the tables use is spelled in LaTeX: pdflatex stops at a character it has no glyph set up for
    (the collapse mark ⚠, ties ½, a § reference)."""
    disp = pd.DataFrame({"most-predicted share": ["0.54 ⚠ 1/4", "0.40"], "note": ["ties ½ (§1.1)", "45.1 ± 2.0 · 3×"]},
                        index=pd.Index(["knn", "protonet"], name="configuration"))  # fmt: skip
    tex = table_latex(Table("t", "T ≥ 3", disp, caption="P(> next), ties ½; datasets.md §1", notes=["⚠ k/n = k of n runs"]))
    assert tex.isascii(), sorted({c for c in tex if not c.isascii()})


def test_csv_counts_are_integers_and_floats_have_no_binary_noise(tmp_path: Path) -> None:
    data = pd.DataFrame({"category": ["a", "b", "c"], "n": [1.0, 4.0, np.nan], "mean_pct": [28.000000000000004, 69.44444444444443, np.nan],
                         "share": [0.1 + 0.2, 1e-7 / 3, 1.0], "flag": [True, False, True], "big": [1e6 + 0.5, 2.5, 3.0]})  # fmt: skip
    doc = Document("d", sections=[Section("s", tables=[Table("t", "T", data, data)])])
    (path,) = write_csvs(doc, tmp_path)
    lines = path.read_text().splitlines()
    assert lines[1:] == ["a,1,28.0,0.3,True,1000000.5", "b,4,69.44444444,3.333333333e-08,False,2.5", "c,,,1.0,True,3.0"]
    assert csv_numbers(pd.DataFrame({"x": ["=1", "007"]})).x.tolist() == ["=1", "007"]  # text untouched


def test_a_whole_tile_mebin_mask_is_marked_and_explained(tmp_path: Path) -> None:
    """A map whose background lies above the set's MEBin range low (an MTD crack image's) gets a mask over the
    tile: the picture marks that row and says why, instead of showing a white tile with no explanation."""
    from bench.discovery.maps import Frame, MapSet
    from bench.discovery.pictures import crops_figure
    from bench.discovery.protocol import LabelledSet

    paths = []
    for i, cls in enumerate(["crack", "crack", "good"]):
        (tmp_path / cls).mkdir(exist_ok=True)
        p = tmp_path / cls / f"{i}.png"
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(p)
        paths.append(str(p))
    yy, xx = np.mgrid[:224, :224]
    blob = np.exp(-((yy - 100) ** 2 + (xx - 60) ** 2) / 300.0)
    texture = 8 * np.sin(xx / 9.0) * np.cos(yy / 7.0)
    bright = np.clip(150 + texture + 40 * blob, 0, 255)  # a faint defect on a background far above the range low
    calm = np.clip(20 + texture + 230 * blob, 0, 255)  # a strong defect on a calm background
    quiet = np.clip(15 + texture, 0, 255)  # a normal image: its maximum is the range low
    maps = MapSet(np.stack([bright, calm, quiet]).astype(np.uint8), {"source": "test"})
    ls = LabelledSet("synthetic", "tile", "ncd", str(tmp_path), ("crack", "good"), tuple(paths), (0, 0, 1), ("", "", ""))
    fig = crops_figure(ls, maps, Frame("squash", 224, 256), [0, 1, 2])
    mebin_titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("MEBin")]
    assert "* mask = " in mebin_titles[0] and "of the tile" in mebin_titles[0], mebin_titles
    assert not any("* mask" in t for t in mebin_titles[1:]), mebin_titles
    note = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "range low" in note and "MEBin's rule" in note


def test_pseudo_defect_picture_says_what_its_marks_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench show-pseudo``: a title for people, and the key to the picture's marks (cyan, red, β) inside it."""
    from matplotlib.figure import Figure

    titles: list[str] = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        titles.append(self._suptitle.get_text().replace("\n", " "))
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(["show-pseudo", "--category", "tile", "--dataset", "synthetic-tiny", "--data-root", str(tmp_path / "d"),
                         "--classes", "1", "--sources", "1", "--out", str(tmp_path / "p.png")]) == 0  # fmt: skip
    assert titles[0].startswith("Pseudo-defect classes on tile (perlin masks)"), titles
    assert "cyan: foreground" in titles[0] and "red: defect mask" in titles[0] and "β:" in titles[0]


def test_bars_without_an_interval_draw_no_error_bar(drawn: list, tmp_path: Path) -> None:
    """Fewer seeds than an interval needs (NaN half-widths): no error bar, where a zero drew a cap that reads as a
    certain value; bars with an interval keep theirs."""
    means = pd.DataFrame({"a": [60.0, 50.0], "b": [40.0, 45.0]}, index=["screw", "tile"])
    plots.category_bars(means, means * np.nan, tmp_path / "none", "T")
    plots.category_bars(means.iloc[:1], means.iloc[:1] * np.nan, tmp_path / "one", "T")
    plots.category_bars(means, means.assign(b=np.nan) * 0 + 2, tmp_path / "some", "T")
    from matplotlib.container import BarContainer

    def bar_sets(fig) -> list:  # noqa: ANN001
        return [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]

    assert all(c.errorbar is None for fig in drawn[:2] for c in bar_sets(fig))
    a, b = bar_sets(drawn[2])
    assert a.errorbar is not None and b.errorbar is None
