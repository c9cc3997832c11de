"""List what is registered: ``bench list methods|datasets|backbones``."""

from __future__ import annotations

import argparse

from tabulate import tabulate


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["methods", "datasets", "backbones"], help="what to list")
    p.add_argument("--filter", default="*resnet*", help="wildcard for backbones (timm names)")


def main(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from bench.method import METHODS
        from bench.methods import import_all

        import_all()
        rows = []
        for e in METHODS:
            spec = e.obj
            rows.append((e.name, spec.cls.__name__, ", ".join(f"{k}={v}" for k, v in spec.overrides.items()) or "-", e.description))
        print(tabulate(rows, headers=["method", "class", "variant of", "description"], tablefmt="simple"))
    elif args.what == "datasets":
        from bench.datasets import DATASETS, import_all

        import_all()
        print(tabulate([(e.name, e.description) for e in DATASETS], headers=["dataset", "description"], tablefmt="simple"))
    else:
        import timm

        names = timm.list_models(args.filter)
        print("\n".join(names))
        print(f"({len(names)} timm models match {args.filter!r}; any timm name works with --backbone)")
    return 0
