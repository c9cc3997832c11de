"""List what is registered: ``bench list methods|datasets|backbones [PATTERN]``.

``PATTERN`` is a wildcard on the names (``bench list methods 'contrastive*'``); for backbones it replaces
``--filter``.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["methods", "datasets", "backbones"], help="what to list")
    p.add_argument("pattern", nargs="?", help="wildcard on the names, e.g. 'contrastive*' (quote it in the shell)")
    p.add_argument("--filter", default="*resnet*", help="wildcard for backbones (timm names)")


def main(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from bench.method import METHODS
        from bench.methods import import_all

        import_all()
        rows = []
        for e in METHODS.entries(args.pattern):
            spec = e.obj
            rows.append((e.name, spec.cls.__name__, ", ".join(f"{k}={v}" for k, v in spec.overrides.items()) or "-", e.description))
        if not rows:
            print(f"no method matches {args.pattern!r} (python -m bench list methods lists them all)")
            return 0
        print(tabulate(rows, headers=["method", "class", "variant of", "description"], tablefmt="simple"))
    elif args.what == "datasets":
        from bench.datasets import DATASETS, import_all

        import_all()
        rows = [(e.name, e.description) for e in DATASETS.entries(args.pattern)]
        if not rows:
            print(f"no dataset matches {args.pattern!r} (python -m bench list datasets lists them all)")
            return 0
        print(tabulate(rows, headers=["dataset", "description"], tablefmt="simple"))
    else:
        import timm

        pattern = args.pattern or args.filter
        names = timm.list_models(pattern)
        print("\n".join(names))
        print(f"({len(names)} timm models match {pattern!r}; any timm name works with --backbone)")
    return 0
