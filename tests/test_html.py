"""The single-file HTML leaderboard: self-contained, and it renders and sorts in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.report.leaderboard import build_leaderboard
from bench.report.html import table_id, to_html
from bench.report.load import load_results

try:
    from tests.test_report import write_results
except ImportError:  # tests/ is not a package here
    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import write_results


class Tables(HTMLParser):
    """Collects every table's body rows as (row classes, [cell texts]) and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[str]]]] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._cls = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"anon{len(self.tables)}"
            self.tables[self._table] = []
            self.attrs[self._table] = a
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row, self._cls = [], a.get("class") or ""
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append((self._cls, self._row))
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


def parse(text: str) -> Tables:
    p = Tables()
    p.feed(text)
    return p


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    folder = tmp_path_factory.mktemp("html")
    results, _ = write_results(folder)
    doc = build_leaderboard(load_results([results]), n_boot=500, boot_seed=0, plots_dir=folder / "plots", command="python -m bench leaderboard x")
    path = folder / "leaderboard.html"
    path.write_text(to_html(doc))
    ids = {int(t.key.rsplit("-", 1)[1].removesuffix("shot")): table_id(t) for t in doc.tables()}
    return path, ids


# Independently from the fabricated grid: configurations with ≥ 1 finished run at that shot, plus chance and majority.
EXPECTED_ROWS = {1: 3 + 2, 2: 2 + 2}


def test_page_is_self_contained_and_phone_ready(page: tuple[Path, dict[int, str]]) -> None:
    path, ids = page
    text = path.read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert "overflow-x:auto" in text and "<style>" in text and "<script>" in text
    assert 'src="http' not in text and 'href="http' not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 2
    tables = parse(text).tables
    for shots, n in EXPECTED_ROWS.items():
        assert len(tables[ids[shots]]) == n
        assert [c for c, _ in tables[ids[shots]]][-2:] == ["pin", "pin"]  # chance and majority stay at the bottom


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("chromium not installed: apt-get install chromium")


def dump_dom(url: str, profile: Path) -> str:
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
        f"--user-data-dir={profile}", "--window-size=390,844", "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=2000", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<table" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def test_renders_in_headless_chromium(page: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    path, ids = page
    dom = parse(dump_dom(path.resolve().as_uri(), tmp_path / "profile"))
    for shots, n in EXPECTED_ROWS.items():
        assert len(dom.tables[ids[shots]]) == n
        header_less = [cells for _, cells in dom.tables[ids[shots]]]
        assert all(len(c) == 9 for c in header_less)  # rank, configuration, mean, CI, coverage, P(> next), backbone, paper row, most-predicted share


def test_sorting_script_runs_in_chromium(page: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    path, ids = page
    tid = ids[1]
    before = parse(path.read_text()).tables[tid]
    assert [float(c[2]) for cls, c in before if cls != "pin"] == sorted((float(c[2]) for cls, c in before if cls != "pin"), reverse=True)
    dom = parse(dump_dom(f"{path.resolve().as_uri()}#sort={tid}:2:asc", tmp_path / "profile"))
    rows = dom.tables[tid]
    assert dom.attrs[tid].get("data-sorted") == "2:asc", "the inline script did not run"
    acc = [float(c[2]) for cls, c in rows if cls != "pin"]
    assert acc == sorted(acc) and len(acc) == EXPECTED_ROWS[1] - 2
    assert [cls for cls, _ in rows][-2:] == ["pin", "pin"]
    assert {r[1] for r in [c for _, c in rows]} == {r[1] for r in [c for _, c in before]}
