"""Start-up time of the command line, as a ratio to a bare ``python -c pass``. Prints figures, asserts nothing.

A newcomer's first commands are ``--help``, ``list`` and a mistyped option: they once took 6–19 s (``--help``) and
16–37 s (a one-line option error) on a loaded 2-core machine, because ``import bench`` loaded torch and every command
module imported torch, pandas, scikit-learn and matplotlib at the top (issue #24). Each command below runs in a fresh
process ``--repeats`` times; the figure is the median wall time, divided by the median of ``python -c pass`` measured
in the same loop (so a busy machine slows both alike), with the heavy libraries the command imported
(``-X importtime``, one extra run):

* ``python -m bench --help``
* ``python -m bench run --shots x`` (a one-line option error, exit 2)
* ``python -m bench list methods`` (imports the method modules, hence torch: the registry is their classes)
* ``python -m bench list datasets`` and ``python -m bench cache info``

Usage: ``python benchmarks/startup.py [--repeats 5]`` (also ``python -m bench perf startup``). The 1-minute load
average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = (
    ("--help",), ("run", "--shots", "x"), ("list", "methods"), ("list", "datasets"), ("cache", "info"),
)
HEAVY = ("torch", "timm", "pandas", "sklearn", "scipy", "matplotlib")
"""The libraries whose import is a start-up cost of its own (each takes from 0.2 to 1.5 s on the build machine)."""


def wall(argv: list[str]) -> float:
    """Seconds from the start to the end of one process (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def heavy_imports(argv: list[str]) -> list[str]:
    """Which of :data:`HEAVY` the process imports (``-X importtime`` lists every module on stderr)."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                          check=False)  # fmt: skip
    seen = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5; the median counts)")
    parser.add_argument("--no-imports", action="store_true",
                        help="skip the -X importtime run that names the heavy imports")  # fmt: skip
    args = parser.parse_args()
    base = [sys.executable, "-c", "pass"]
    commands = [[sys.executable, "-m", "bench", *c] for c in COMMANDS]
    times: dict[int, list[float]] = {i: [] for i in range(-1, len(commands))}
    for _ in range(args.repeats):  # interleaved: a change of load hits every command alike
        times[-1].append(wall(base))
        for i, argv in enumerate(commands):
            times[i].append(wall(argv))
    bare = statistics.median(times[-1])
    print(f"python -c pass: {1000 * bare:.0f} ms (median of {args.repeats}; load average {os.getloadavg()[0]:.2f})")
    print(f"{'command':34} {'median ms':>9} {'× bare':>7}  heavy imports")
    for i, argv in enumerate(commands):
        t = statistics.median(times[i])
        shown = " ".join(["python -m bench", *COMMANDS[i]])
        heavy = "(not checked)" if args.no_imports else ", ".join(heavy_imports(argv)) or "-"
        print(f"{shown:34} {1000 * t:9.0f} {t / bare:7.1f}  {heavy}")


if __name__ == "__main__":
    main()
