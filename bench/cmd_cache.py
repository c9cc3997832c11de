"""Show or clear the on-disk cache (generated datasets, features, memory banks, nearest neighbours, pretrained
classifiers). The root is ``--cache-dir``, else ``$BENCH_CACHE``, else ``~/.cache/fsad-bench``.

Examples: ``python -m bench cache info``; ``python -m bench cache clear --kinds features banks``.
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--cache-dir", help="cache root (default $BENCH_CACHE or ~/.cache/fsad-bench)")
    p.add_argument("--kinds", nargs="+", help="clear only these kinds (top-level folders shown by `cache info`)")


def main(args: argparse.Namespace) -> int:
    from bench import cache

    if args.action == "info":
        print(cache.format_info(cache.info(args.cache_dir)))
    else:
        removed = cache.clear(args.cache_dir, args.kinds)
        print("removed:\n" + cache.format_info(removed))
    return 0
