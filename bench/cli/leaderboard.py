"""Ranked configurations with 95% confidence intervals and coverage, per shot count.

Examples::

    python -m bench leaderboard runs/                           # runs/leaderboard.md
    python -m bench leaderboard runs/ --format md html csv     # + a single static HTML page and CSVs

For each dataset × protocol × class-set group and each shot count: configurations ranked by mean accuracy
(unweighted mean over categories of the per-category seed means), a 95% interval from a category-stratified
bootstrap over seeds, the coverage (finished (category, seed) runs of the expected grid), P(> next) (the
probability of beating the next-ranked configuration on a random paired run), backbone and weights, and
chance / majority-class reference rows. A configuration with missing categories, seeds or failed jobs is
marked † and listed after the ranked ones, never ranked as if complete. Every task's rows get their own rankings
(:func:`bench.report.build_leaderboard` loops over the task records): detection's per k (image AUROC, ranked within one
kind of extra data), discovery's by ACC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli._args import add_document_options, check_boot, command_line, note_skipped_lines
from bench.paths import default_output
from bench.report.defaults import FORMATS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results.jsonl files or run folders")
    p.add_argument("--out", default=str(default_output("leaderboard.md")),
                   help=f"output file (default {default_output('leaderboard.md')}, ignored by git; the committed "
                   "results/leaderboard.md only when named); other formats are written next to it with their own "
                   "suffix (CSV: a folder)")  # fmt: skip
    p.add_argument("--format", nargs="+", choices=[*FORMATS, "all"], help="formats (default: from the --out suffix, else md)")
    add_document_options(p)


FLAGS = {"out": "--out", "format": "--format", "no_plots": "--no-plots", "boot": "--boot", "boot_seed": "--boot-seed"}
_BY_SUFFIX = {".md": "md", ".html": "html", ".htm": "html", ".tex": "latex", ".csv": "csv"}


def main(args: argparse.Namespace) -> int:
    check_boot(args.boot)
    from bench.report.leaderboard import build_leaderboard  # pandas, scipy: after the options are checked
    from bench.report.load import load_results
    from bench.report.render import check_output, write_document

    out = Path(args.out)
    formats = args.format or [_BY_SUFFIX.get(out.suffix.lower(), "md")]
    formats = list(FORMATS) if "all" in formats else list(dict.fromkeys(formats))
    targets = {f: out.with_suffix("") if f == "csv" else out.with_suffix({"latex": ".tex"}.get(f, "." + f)) for f in formats}
    plots_dir = None if args.no_plots else out.parent / f"{out.stem}_plots"
    for f, target in targets.items():  # before anything is read or computed
        check_output(target, folder=f == "csv")
    if plots_dir is not None and plots_dir.exists():  # made when the first plot is saved, next to the other outputs
        check_output(plots_dir, folder=True)
    res = load_results(args.results)
    doc = build_leaderboard(res, args.boot, args.boot_seed, plots_dir, command_line("leaderboard", args, FLAGS))
    written: list[Path] = []
    for f, target in targets.items():
        written += write_document(doc, f, target)
    print(f"wrote {', '.join(str(p) for p in written[:6])}{' ...' if len(written) > 6 else ''}")
    note_skipped_lines(res.skipped_lines)
    return 0
