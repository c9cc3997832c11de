"""Show, prune or clear the on-disk cache (generated datasets, features, memory banks, nearest neighbours,
pretrained classifiers). The root is ``--cache-dir``, else ``$BENCH_CACHE``, else ``~/.cache/fsad-bench``.

Examples: ``python -m bench cache info``; ``python -m bench cache prune --max-size 20G`` (least recently used
features, nearest neighbours, banks and pretrained classifiers go first; they are recomputed when needed again);
``python -m bench cache clear --kinds features banks``.

Only a cache of this harness is touched (a folder holding its CACHEDIR.TAG, or a cache written before tags that
holds nothing else), and in it only the files the cache wrote; any other folder is refused with nothing changed.
"""

from __future__ import annotations

import argparse

from bench.errors import ConfigError
from bench.paths import CACHE_ENV, DEFAULT_CACHE


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["info", "prune", "clear"])
    p.add_argument("--cache-dir", help=f"cache root (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    p.add_argument("--kinds", nargs="+", help="only these kinds (top-level folders shown by `cache info`)")
    p.add_argument("--max-size", help="prune: the size to get down to, e.g. 20G or 500M")
    p.add_argument("--dry-run", action="store_true", help="prune: only show what would be removed")


def main(args: argparse.Namespace) -> int:
    from bench import cache

    if args.action == "info":
        print(cache.format_info(cache.info(args.cache_dir)))
    elif args.action == "prune":
        if args.max_size is None:
            raise ConfigError("cache prune needs --max-size, e.g. `python -m bench cache prune --max-size 20G`")
        removed = cache.prune(cache.parse_size(args.max_size), args.cache_dir, args.kinds, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} (least recently used first):\n" + cache.format_info(removed))
        kinds, kept = ", ".join(args.kinds or cache.PRUNABLE), cache.human_bytes(removed.attrs["kept_bytes"])
        print(f"{kinds} would take {kept} after pruning (dry run: nothing was removed)" if args.dry_run
              else f"{kinds} now take {kept}")  # fmt: skip
    else:
        if args.max_size is not None:
            raise ConfigError("--max-size is for `cache prune`; `cache clear` removes whole kinds")
        removed = cache.clear(args.cache_dir, args.kinds)
        print("removed:\n" + cache.format_info(removed))
    return 0
