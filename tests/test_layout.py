"""The layout of ``bench/`` and its rules (docs/architecture.md), checked by walking the source's imports.

Every ``import`` statement of the package counts, at module level or inside a function (a lazy import is still a
dependency: the ``html``/``render`` circle was half lazy). An import names exactly one module: ``from bench.x
import y`` depends on ``bench.x.y`` when that is a module, else on ``bench.x``; importing a module does not count
as depending on its parent packages' faces.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {
    "bench": ROOT / "bench", "bench.datasets": ROOT / "datasets", "bench.methods": ROOT / "methods",
    "bench.detectors": ROOT / "detectors", "bench.discoverers": ROOT / "discoverers",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    """Module name → file, for the installed layout (``datasets/`` is ``bench.datasets``, ``methods/`` is
    ``bench.methods``)."""
    out = {}
    for base, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([base, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES and "." in t:  # ``import bench.x.y`` of a name inside a module
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_target_layout_is_in_place() -> None:
    for package in ("bench.cli", "bench.run", "bench.features", "bench.report", "bench.datasets.pseudo",
                    "bench.discovery", "bench.metrics"):
        assert MODULES.get(package, Path()).name == "__init__.py", f"{package} is not a package"
    expected = {
        "bench.cli": {"main", "_args", "run", "list", "detect", "cache", "pseudo", "perf", "report", "leaderboard", "tsne"},
        "bench.run": {"config", "plan", "job", "workers", "grid"},
        "bench.features": {"store", "extractor", "backbones", "coreset", "knn", "detect", "embed"},
        "bench.report": {"load", "tables", "leaderboard", "stats", "plots", "paper", "summary", "document", "render", "html"},
        "bench.metrics": {"classification", "detection", "discovery"},
    }
    for package, names in expected.items():
        assert {n.rsplit(".", 1)[1] for n in MODULES if n.startswith(package + ".")} >= names, package
    top = {n.split(".")[1] for n in MODULES if n.count(".") == 1
           and not n.startswith(("bench.datasets", "bench.methods", "bench.detectors", "bench.discoverers"))}  # fmt: skip
    assert top <= {"__main__", "method", "episodes", "results", "metrics", "registry", "cache", "images", "seeding", "paths", "errors",
                   "compat", "cli", "run", "features", "report", "datasets", "methods", "detection", "detectors", "tasks", "classification",
                   "discovery", "discoverers", "regions"}, sorted(top)  # fmt: skip


def test_nothing_outside_the_cli_imports_it() -> None:
    bad = [(m, t) for m, ts in GRAPH.items() for t in ts
           if _in(t, "bench.cli") and not _in(m, "bench.cli") and m != "bench.__main__"]  # fmt: skip
    assert not bad, f"imports of bench.cli from outside it: {bad}"


def test_benchmarks_use_the_library_not_the_cli() -> None:
    """``benchmarks/`` are scripts beside the package: they drive the library (``bench.run``) or run ``python -m bench``
    as a user would, and never import ``bench.cli`` (docs/architecture.md)."""
    bad = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:  # ``from bench import cli`` too
                names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            bad += [(path.name, n) for n in names if _in(n, "bench.cli")]
    assert not bad, f"imports of bench.cli from benchmarks/: {bad}"


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for t in GRAPH[todo.pop()]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_reports_never_reach_the_run_or_the_feature_pipeline() -> None:
    """Reports recompute metrics with the run's own functions (``bench.metrics``), so those obey the same rule."""
    for m in [m for m in MODULES if _in(m, "bench.report") or _in(m, "bench.metrics")]:
        reached = sorted(t for t in _closure(m) if _in(t, "bench.run") or _in(t, "bench.features"))
        assert not reached, f"{m} imports (directly or through other modules) {reached}"


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components of the import graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                circles.append(sorted(scc))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def _calls(name: str, path: Path, callee: str) -> int:
    tree = ast.parse(path.read_text())
    return sum(
        1 for n in ast.walk(tree)
        if isinstance(n, ast.Call) and (getattr(n.func, "id", None) == callee or getattr(n.func, "attr", None) == callee)
    )  # fmt: skip


def test_metrics_are_computed_in_the_metrics_package_only() -> None:
    """One image AUROC (and every other metric): scikit-learn's metric functions are called in ``bench.metrics``
    alone, so the run, ``bench detect`` and the reports cannot drift apart (docs/architecture.md)."""
    where = {m for m, p in MODULES.items() if re.search(r"\bsklearn\.metrics\b|\broc_auc_score\b", p.read_text())}
    assert where and all(_in(m, "bench.metrics") for m in where), sorted(where)


def test_only_the_job_module_assembles_a_task_context() -> None:
    where = {m for m, p in MODULES.items() if _calls(m, p, "TaskContext")}
    assert where == {"bench.run.job"}, where


def test_one_builder_of_the_feature_config_and_one_declaration_of_the_feature_flags() -> None:
    """``bench.run.config.feature_config`` builds every command's FeatureConfig (defaults and the dataset's image fit
    in one place); ``bench.cli._args.add_feature_options`` declares the flags of every command that extracts features."""
    builders = {m for m, p in MODULES.items() if _calls(m, p, "FeatureConfig")}
    assert builders == {"bench.run.config"}, builders
    declaring = {m for m, p in MODULES.items() if _in(m, "bench.cli") and "--backbone" in _code_strings(p)}
    assert declaring == {"bench.cli._args"}, declaring


def test_no_private_name_is_imported_across_modules() -> None:
    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench"):
                bad += [(m, node.module, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module's code (docstrings, which may describe the default, left out)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}  # fmt: skip
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_one_spelling_of_the_cache_default_and_one_writer_of_the_cache_root() -> None:
    spelled = {m for m, p in MODULES.items() if any(".cache/fsad-bench" in s for s in _code_strings(p))}
    assert spelled == {"bench.paths"}, spelled
    writes_env = re.compile(r"environ\[[^\]]*\]\s*=|environ\.(update|setdefault)|putenv")
    writers = {m for m, p in MODULES.items() if writes_env.search(p.read_text())}
    assert writers <= {"bench.paths", "bench.compat"}, writers  # compat sets the hub's offline default only
    cache_env = {m for m, p in MODULES.items() if "BENCH_CACHE" in _code_strings(p)}
    assert cache_env == {"bench.paths"}, cache_env


def test_one_channel_for_the_cache_root() -> None:
    """The process's cache root is ``bench.paths``'s (docs/architecture.md): only it reads the variable behind it, and
    only the run and the commands set it, once per process from their configuration (never a plugin or a library
    module deep down)."""
    reads_env = re.compile(r"environ\.get\(\s*CACHE_ENV|environ\[\s*CACHE_ENV|getenv\(\s*CACHE_ENV")
    readers = {m for m, p in MODULES.items() if reads_env.search(p.read_text())}
    assert readers == {"bench.paths"}, readers
    setters = {m for m, p in MODULES.items() if _calls(m, p, "set_cache_root")}
    assert setters and all(_in(m, "bench.run") or _in(m, "bench.cli") for m in setters), sorted(setters)


def test_every_public_module_of_datasets_registers_an_adapter() -> None:
    from bench.datasets import DATASETS, import_all

    import_all()
    registering = {e.obj.__module__ for e in DATASETS}
    public = {m for m, p in MODULES.items()
              if m.startswith("bench.datasets.") and m.count(".") == 2 and not m.rsplit(".", 1)[1].startswith("_")
              and p.name != "__init__.py"}  # fmt: skip
    assert public and public <= registering, sorted(public - registering)


@pytest.mark.parametrize("package", ["bench.cli", "bench.run", "bench.features", "bench.report", "bench.datasets.pseudo",
                                     "bench.discovery", "bench.metrics"])
def test_package_faces_are_short_and_say_what_they_export(package: str) -> None:
    source = MODULES[package].read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{package}/__init__.py has no docstring"
    assert "__all__" in source, f"{package}/__init__.py does not list its public names"
    assert len(source.splitlines()) <= 60, f"{package}/__init__.py is not short"


def test_cross_command_helpers_live_in_the_cli_helper_module() -> None:
    """A command module imports no other command module; what they share is in ``bench.cli._args``."""
    commands = {m for m in MODULES if _in(m, "bench.cli") and m.count(".") == 2 and not m.endswith(("._args", ".main"))}
    bad = [(m, t) for m in commands for t in GRAPH[m] if t in commands]
    assert not bad, bad


def test_graph_sees_lazy_imports() -> None:
    """The walk counts imports inside functions (the check above would be toothless otherwise)."""
    assert "bench.report.plots" in GRAPH["bench.report.tables"] or "bench.report.plots" in GRAPH["bench.report.leaderboard"]
    deps = defaultdict(set)
    for m, ts in GRAPH.items():
        for t in ts:
            deps[t].add(m)
    assert "bench.cli.main" in deps["bench.errors"]


def test_every_package_is_in_the_distribution() -> None:
    """``pyproject.toml`` lists the packages by name (``datasets/`` installs as ``bench.datasets``): a package left off
    the list works in an editable install and is missing from a built one (``bench.metrics`` was)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == listed, f"missing from pyproject.toml: {sorted(packages - listed)}; listed, absent: {sorted(listed - packages)}"


def test_a_toy_fourth_task_runs_end_to_end(tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Adding a task = one package + one line (docs/architecture.md, "The task seam"): ``tests/toytask/`` (its
    contract, one method, one metric, one report section) registers its record and runs through ``bench run``,
    ``bench report`` and ``bench leaderboard`` with no edit of ``bench/``."""
    from bench.results import read_rows
    from bench.tasks import tasks, unregister_task
    from tests.helpers import cli

    out, plugin = tmp_path / "out", ("--plugin", "tests.toytask")  # the package registers its task on import
    assert "toy" not in tasks()
    try:
        code, stdout, err = cli(capsys, *plugin, "run", "--task", "toy", "--method", "by-name", "--dataset", "folder",
                                "--data-root", str(tiny_root), "--seeds", "1,2", "--out", str(out), "--cache-dir",
                                str(tmp_path / "cache"), "--backbone", "resnet18", "--weights", "random", "--no-progress")
        assert code == 0, err
        rows = read_rows([out]).rows
        assert rows and {r["task"] for r in rows} == {"toy"} and {r["status"] for r in rows} == {"ok"}
        assert all(r["toy_accuracy"] == 1.0 for r in rows)  # by-name reads the folder names: always right
        assert "### toy" in (out / "summary.md").read_text()
        code, _, err = cli(capsys, *plugin, "report", str(out), "--out", str(tmp_path / "report"), "--no-plots")
        assert code == 0, err
        assert "Toy task: accuracy" in (tmp_path / "report" / "report.md").read_text()
        board = tmp_path / "board.md"
        code, _, err = cli(capsys, *plugin, "leaderboard", str(out), "--out", str(board), "--no-plots")
        assert code == 0, err
        assert "Toy task: ranking" in board.read_text()
        code, stdout, _ = cli(capsys, *plugin, "list", "toys")
        assert code == 0 and "by-name" in stdout
    finally:
        unregister_task("toy")


TASK_NAMES = ("classification", "detection", "discovery")
NAMED_NOT_AS_A_TASK = {("bench.cli.perf", "detection"): "a benchmark script's name (benchmarks/detection.py)"}


def _branch_literals(path: Path) -> list[tuple[int, str]]:
    """The task names a module spells as a string literal in a comparison, a subscript or a dict key: a branch on a
    task, or a table keyed by it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, ast.Subscript):
            parts = [node.slice]
        elif isinstance(node, ast.Dict):
            parts = [k for k in node.keys if k is not None]
        else:
            continue
        found += [(p.lineno, p.value) for p in parts if isinstance(p, ast.Constant) and p.value in TASK_NAMES]
    return found


def test_no_module_outside_a_task_branches_on_its_name() -> None:
    """The grid, the reports, the summary and the CLI loop over the task records (bench.tasks) and never branch on a
    task's name: only the task's own modules (a module path naming it: ``bench.detection.*``, ``bench.run.detection``,
    ``bench.report.detection``) and the records spell it in a comparison, a subscript or a dict key."""
    bad = [f"{m}:{line} {name!r}" for m, path in MODULES.items() if m != "bench.tasks"
           for line, name in _branch_literals(path)
           if name not in m.split(".") and (m, name) not in NAMED_NOT_AS_A_TASK]  # fmt: skip
    assert not bad, f"branches on a task's name outside its modules: {bad}"


def test_the_task_records_keep_the_report_out_of_the_run() -> None:
    """A record is data and dotted references (bench.tasks): the module imports nothing of the harness, and its
    report-side hooks (report, leaderboard, summary, rows) name modules that never reach ``run/`` or ``features/``."""
    from bench.tasks import BUILTIN

    assert not GRAPH["bench.tasks"]
    for task in BUILTIN:
        for field in ("report", "leaderboard", "summary", "rows"):
            module = getattr(task, field).partition(":")[0]
            assert _in(module, "bench.report"), f"{task.name}.{field} = {getattr(task, field)}: not a report module"
            reached = sorted(t for t in _closure(module) | {module} if _in(t, "bench.run") or _in(t, "bench.features"))
            assert not reached, f"{task.name}.{field}: {module} reaches {reached}"
            assert task.hook(field) is not None
        for field in ("registry", "episode", "jobs", "check"):
            assert not getattr(task, field) or task.hook(field) is not None, f"{task.name}.{field}"


def test_the_task_records_match_their_packages() -> None:
    """What a record spells as data (its protocols, its registry's task) is what its package says."""
    from bench.detection.episodes import DETECTION_PROTOCOL
    from bench.discovery.protocol import PROTOCOLS
    from bench.episodes import PROTOCOLS as CLASSIFICATION_PROTOCOLS
    from bench.method import KINDS
    from bench.tasks import get_task

    assert get_task("detection").protocols == (DETECTION_PROTOCOL,)
    assert get_task("discovery").protocols == tuple(PROTOCOLS)
    assert set(get_task("classification").protocols) <= set(CLASSIFICATION_PROTOCOLS)
    for name, (registry, list_command) in KINDS.items():
        if name in TASK_NAMES:
            assert get_task(name).hook("registry") is registry and get_task(name).list_command == list_command
