"""Tables (and plots) from results files, in the paper's shapes; everything generated, nothing typed by hand.

Examples::

    python -m bench report runs/                                   # Markdown: runs/report/report.md
    python -m bench report runs/ --format md csv latex html --out runs/report-all
    python -m bench report runs/ --compare paper                   # the paper's numbers next to ours
    python -m bench report runs/ --category bottle --detail-shots 5
    python -m bench report runs/detection --compare published         # detection: RegAD, WinCLIP+ beside ours

Per configuration: categories × shots (mean ± sample std over seeds, an average row over categories);
categories (classes, queries, chance, majority); an ablation table (configurations × shots averaged over
categories, rows named as the paper names them); paired P(A > B); per-class recall and confusion matrices
for a chosen category. Configurations that differ in anything but category, shots and seed are separate
lines labelled by what differs; incomplete grids show (n/N) and a †. CSV files hold the tidy numbers. Every task's
rows get their own sections (:func:`bench.report.build_report` loops over the task records), never mixed: detection's
image AUROC per configuration × k, pixel AUROC, AUROC per defect type; discovery's ACC, NMI, ARI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli._args import add_document_options, check_boot, command_line, note_skipped_lines
from bench.errors import BenchError
from bench.paths import default_output
from bench.report.defaults import FORMATS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results.jsonl files or run folders")
    p.add_argument("--format", nargs="+", default=["md"], choices=[*FORMATS, "all"], help="output formats (default md)")
    p.add_argument("--out", default=str(default_output("report")),
                   help=f"output folder (default {default_output('report')}/, ignored by git); '-' prints Markdown to "
                   "stdout")
    p.add_argument("--compare", choices=["paper", "published"],
                   help="put the published numbers next to ours: the paper's tables (classification), RegAD and WinCLIP+ "
                   "(detection, docs/tasks.md §A.3); paper and published are the same switch")
    p.add_argument("--category", nargs="+", help="categories for per-class tables and confusion matrices (default: the first)")
    p.add_argument("--detail-shots", type=int, help="shots for confusion matrices and per-category bars (default: the largest)")
    add_document_options(p)


FLAGS = {"format": "--format", "out": "--out", "compare": "--compare", "category": "--category", "detail_shots": "--detail-shots",
         "no_plots": "--no-plots", "boot": "--boot", "boot_seed": "--boot-seed"}  # fmt: skip


def main(args: argparse.Namespace) -> int:
    check_boot(args.boot)
    from bench.report.load import load_results  # pandas, scipy: after the options are checked
    from bench.report.render import check_output, to_markdown, write_document
    from bench.report.tables import build_report

    if args.out != "-":  # before anything is read or computed
        check_output(Path(args.out), folder=True)
    res = load_results(args.results)
    grids = [res.grid(g) for g in res.groups()]
    unknown = sorted(set(args.category or []) - {c for cats, _, _ in grids for c in cats})
    if unknown:
        raise BenchError(f"--category {', '.join(unknown)}: not in these results; they hold {', '.join(sorted({c for g in grids for c in g[0]}))}.")
    if args.detail_shots is not None and not any(args.detail_shots in shots for _, _, shots in grids):
        raise BenchError(f"--detail-shots {args.detail_shots}: no results at that shot count; they hold {sorted({s for g in grids for s in g[2]})}.")
    formats = list(FORMATS) if "all" in args.format else list(dict.fromkeys(args.format))
    cmd = command_line("report", args, FLAGS)
    compare = args.compare is not None
    if args.out == "-":
        doc = build_report(res, compare, args.category, args.detail_shots, args.boot, args.boot_seed, None, cmd)
        sys.stdout.write(to_markdown(doc))
    else:
        out = Path(args.out)
        plots_dir = None if args.no_plots else out / "plots"
        doc = build_report(res, compare, args.category, args.detail_shots, args.boot, args.boot_seed, plots_dir, cmd)
        written: list[Path] = []
        for fmt_ in formats:
            target = out / "csv" if fmt_ == "csv" else out / f"report{'.tex' if fmt_ == 'latex' else '.' + fmt_}"
            written += write_document(doc, fmt_, target)
        if plots_dir is not None:
            written += sorted(plots_dir.glob("*.*"))
        print(f"wrote {len(written)} file(s) to {out}/: " + ", ".join(str(p.relative_to(out)) for p in written[:8])
              + (" ..." if len(written) > 8 else ""))  # fmt: skip
    note_skipped_lines(res.skipped_lines)
    return 0
