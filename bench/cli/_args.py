"""What several commands share: the list and option parsers, the feature flags, ``--config``, and the flags of the
report commands.

``parse_int_list`` reads ``--shots``/``--seeds`` (``1-5``, ``1,3,5``, ``1 3 5``, YAML lists); ``parse_set`` reads
``--set key=value`` options as YAML scalars; ``command_line`` rebuilds the command that regenerates a document
(``bench report`` and ``bench leaderboard`` record it). ``add_feature_options`` declares the flags of every command
that extracts features (``run``, ``detect``, ``maps``, ``show-crops``, ``tsne``) and ``feature_options`` hands them to
:func:`bench.run.config.feature_config`; ``add_config_option`` and ``apply_config_file`` give those commands
``--config FILE.yaml`` with ``run``'s rules (flags win over the file; an unknown key is one error line, exit 2).
Command modules import this module, never each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

import yaml

from bench.errors import BenchError, ConfigError, brief, clip
from bench.paths import CACHE_ENV, DEFAULT_CACHE


_INT_ITEM = re.compile(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?")
"""One item of an integer list: ``5``, ``-1`` (read, so that the run can say it is negative) or a range ``1-5``."""


def parse_int_list(text: str | int | list | tuple, option: str = "list", limit: int | None = None) -> list[int]:
    """``"1-5"`` → [1..5], ``"1,3,5"`` → [1, 3, 5], ``3`` → [3]; a list (``--shots 1 2 3``, YAML ``[1, 2]``) joins
    the parse of each item (``["1-3", "5"]`` → [1, 2, 3, 5]). Negative numbers are read (``-1``, ``-3--1``): the
    run's configuration refuses them by name.

    Raises:
        ConfigError: naming the option and a short form of the value (never the whole of a huge YAML value); also
            when the list would hold more than ``limit`` values, before it is built (``1-10000000000``).
    """
    fix = f"{option}: use e.g. 1-5, 1,2,5 or 1 2 5"

    def unreadable(value: object) -> ConfigError:
        return ConfigError(f"cannot read {brief(value)} as a list of integers ({fix})")

    def add(value: object, out: list[int]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise unreadable(text if isinstance(text, (list, tuple)) else value)
        for part in [value] if isinstance(value, int) else value.split(","):
            if isinstance(part, int):
                lo = hi = part
            elif not part.strip():
                continue
            elif (m := _INT_ITEM.fullmatch(part)) is None:
                raise unreadable(value)
            else:
                try:  # a number of thousands of digits is refused by int() (sys.get_int_max_str_digits)
                    lo = int(m[1])
                    hi = lo if m[2] is None else int(m[2])
                except ValueError:
                    raise unreadable(value) from None
                if hi < lo:
                    raise ConfigError(f"empty range {brief(part.strip())} for {option} ({fix})")
            if limit is not None and len(out) + hi - lo + 1 > limit:
                given = " ".join(map(str, text)) if isinstance(text, (list, tuple)) else text  # as typed
                raise ConfigError(
                    f"{option} {clip(given, 60)} gives more than {limit:,} values, the most a run takes (each value is "
                    f"a whole set of jobs): give fewer, e.g. {option} 1-5."
                )
            out.extend(range(lo, hi + 1))

    out: list[int] = []
    for value in text if isinstance(text, (list, tuple)) else [text]:
        add(value, out)
    if not out:
        raise ConfigError(f"empty integer list {brief(text)} for {option} ({fix})")
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "features=raw"]`` → {"lr": 0.0001, "features": "raw"} (values parsed as YAML, safely)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {brief(item)}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as exc:  # also the tags safe_load refuses (!!python/...)
            problem = str(getattr(exc, "problem", "") or type(exc).__name__)
            raise ConfigError(
                f"--set {k.strip()}=...: cannot read the value {brief(v)} ({problem}). Give a number, a word, true/false "
                "or a list like 0,45,25 (quote it in the shell if it holds spaces or brackets)."
            ) from None
    return out


def command_line(name: str, args: argparse.Namespace, flags: dict[str, str]) -> str:
    """Reconstruct ``python -m bench NAME ...`` from parsed arguments (the exact regenerating command)."""
    parts = ["python", "-m", "bench", name, *[str(p) for p in args.results]]
    for dest, flag in flags.items():
        v = getattr(args, dest, None)
        if v is None or v is False:
            continue
        if v is True:
            parts.append(flag)
        elif isinstance(v, (list, tuple)):
            parts += [flag, *[str(x) for x in v]]
        else:
            parts += [flag, str(v)]
    return shlex.join(parts)


def add_document_options(p: argparse.ArgumentParser) -> None:
    """``--no-plots``, ``--boot`` and ``--boot-seed`` of ``bench report`` and ``bench leaderboard``."""
    from bench.report.defaults import DEFAULT_BOOT, DEFAULT_BOOT_SEED  # plain values: no scipy at start-up

    p.add_argument("--no-plots", action="store_true", help="skip the PNG/SVG plots")
    p.add_argument("--boot", type=int, default=DEFAULT_BOOT, help=f"bootstrap resamples (default {DEFAULT_BOOT:,})")
    p.add_argument("--boot-seed", type=int, default=DEFAULT_BOOT_SEED, help="seed of the bootstrap generator (default 0)")


def check_boot(n_boot: int) -> None:
    """Refuse a bootstrap too small for a 95% interval (``--boot``)."""
    if n_boot < 100:
        raise BenchError(
            f"--boot {n_boot} is too few bootstrap resamples for a 95% interval; use ≥ 1000 (default 10,000)."
        )


def note_skipped_lines(n: int) -> None:
    """Say on stderr how many results lines were unreadable (they are left out of every table)."""
    if n:
        print(f"skipped {n} unreadable or incomplete line(s) in the results (e.g. a run killed mid-write)",
              file=sys.stderr)  # fmt: skip


def add_feature_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The flags of every command that extracts features, declared once: what changes the patch features
    (:data:`bench.run.config.FEATURE_OPTIONS`, built by :func:`bench.run.config.feature_config`: their default is
    ``None``, the library's default stated in the help), the memory bank's coreset ratio, where the work runs and
    the cache. ``defaults=False`` (``run``, whose :class:`~bench.run.config.RunConfig` has them) leaves
    ``--coreset-ratio`` and ``--device`` ``None`` too."""
    from bench.images import FITS
    from bench.run.defaults import DEFAULT_CORESET_RATIO, DEFAULT_DEVICE  # plain values: no torch (issue #24)

    p.add_argument("--backbone", help="timm backbone (default tf_efficientnet_lite0, ImageNet weights installed with the harness; the paper: resnet50)")
    p.add_argument("--weights", help="imagenet (default), random, or a local weights file")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="backbone stages to aggregate (default: those at strides 8 and 16)")
    p.add_argument("--zero-init-last", choices=["true", "false"], help="random init only: timm's zero-init of the last BN per block")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="feature extraction precision (bf16 is opt-in)")
    p.add_argument("--image-fit", choices=FITS,
                   help="image to square input: crop (resize + centre crop, the paper's), squash (whole image, "
                   "aspect not kept) or letterbox (whole image, padded); default: the dataset's choice (mtd: squash), "
                   "else crop")
    p.add_argument("--coreset-ratio", type=float, default=DEFAULT_CORESET_RATIO if defaults else None,
                   help=f"share of the PatchCore memory bank kept (default {DEFAULT_CORESET_RATIO})")
    p.add_argument("--device", default=DEFAULT_DEVICE if defaults else None, help="auto (default), cpu or cuda")
    p.add_argument("--threads", metavar="N|auto", help="torch threads in total (split between the workers of a run); "
                   "auto: from the machine's free cores and load (default: all cores)")
    p.add_argument("--cache-dir", help=f"cache folder (default ${CACHE_ENV} or {DEFAULT_CACHE})")


def feature_options(args: argparse.Namespace) -> dict[str, Any]:
    """The values of :func:`add_feature_options`'s feature flags by :func:`bench.run.config.feature_config`'s names
    (``--zero-init-last true`` → ``True``); ``None`` where not given."""
    from bench.run.config import FEATURE_OPTIONS

    values = {name: getattr(args, name, None) for name in FEATURE_OPTIONS}
    if isinstance(values["zero_init_last"], str):
        values["zero_init_last"] = values["zero_init_last"] == "true"
    return values


@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    """What ``--config`` of a command may give: its options (argparse actions, by destination) and their defaults
    (applied after the file, so that a flag, the file and the default win in that order)."""

    actions: dict[str, argparse.Action]
    defaults: dict[str, Any]


def add_config_option(p: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml`` for a command other than ``run`` (which reads its file into :class:`RunConfig`): call it
    last in ``configure``. Every option's default moves behind the file (``apply_config_file``)."""
    p.add_argument("--config", type=Path, help="YAML file with any of these options (image_fit: squash, "
                   "layers: [layer2, layer3], ...); flags win over the file")
    actions = {a.dest: a for a in p._actions if a.dest not in ("help", "config")}  # argparse lists them nowhere else
    defaults = {dest: a.default for dest, a in actions.items() if a.default is not None}
    p.set_defaults(**{dest: None for dest in defaults}, _config=ConfigSpec(actions, defaults))


def read_config_file(path: Path, known: set[str]) -> dict[str, Any]:
    """The mapping of options of a YAML config file, each key one of ``known``.

    Raises:
        ConfigError: no such file, unreadable YAML, not a mapping, or unknown keys (all named in one line with the
            known ones).
    """
    try:
        found = path.is_file()  # a regular file: reading a FIFO would block
    except OSError:  # a name too long for the system
        found = False
    if not found:
        raise ConfigError(f"config file not found: {clip(path)}. Pass the path of a YAML file of options to --config.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {str(exc)[:300]}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror}).") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options (name: value), got {brief(loaded)}")
    unknown = sorted(brief(k) for k in loaded if k not in known)
    if unknown:
        raise ConfigError(f"unknown option(s) in {path}: {', '.join(unknown[:10])}. Known: {', '.join(sorted(known))}")
    return dict(loaded)


def _file_value(action: argparse.Action, value: Any, path: Path) -> Any:
    """A config file's value of one option, converted and checked as its flag would be (type, choices, one value or
    a list)."""
    flag = action.option_strings[-1] if action.option_strings else action.dest
    items = value if isinstance(value, list) else [value]

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{action.dest} {brief(value)} in {path} is not allowed ({flag}): {why}")

    if action.nargs == 0:  # a switch (store_true)
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(value, list) and action.nargs not in ("+", "*"):
        raise bad("one value, not a list")
    out = []
    for v in items:
        if v is None or isinstance(v, (dict, list)):
            raise bad("a number or a word")
        text = str(v).lower() if isinstance(v, bool) else str(v)
        try:
            v = action.type(text) if action.type else text
        except (TypeError, ValueError):
            raise bad(f"cannot read {brief(text)}") from None
        if action.choices is not None and v not in action.choices:
            raise bad(" or ".join(map(str, action.choices)))
        out.append(v)
    return out if action.nargs in ("+", "*") else out[0]


def apply_config_file(args: argparse.Namespace) -> dict[str, Any]:
    """Fill ``args`` (of a command configured with :func:`add_config_option`) from its ``--config`` file, then from
    the defaults: a flag wins over the file, the file over the default (``run``'s rule). The file names options as
    ``run``'s does (``image_fit``, ``cache_dir``; ``set`` a mapping of method options). Returns the method options:
    the file's ``set`` with the ``--set`` flags over it (empty for a command without ``--set``).

    Raises:
        ConfigError: the file's problems (:func:`read_config_file`) and a value its flag would refuse.
    """
    spec: ConfigSpec = args._config
    known = {"set" if dest == "set_" else dest for dest in spec.actions}
    values = read_config_file(args.config, known) if args.config else {}
    options = values.pop("set", None) or {}
    if not (isinstance(options, dict) and all(isinstance(k, str) for k in options)):
        raise ConfigError(
            f"'set' in {args.config} must be a mapping of method options (e.g. set: {{lr: 0.001, epochs: 3}}), got {brief(options)}"
        )
    for key, value in values.items():
        if getattr(args, key) is None:
            setattr(args, key, _file_value(spec.actions[key], value, args.config))
    for dest, default in spec.defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    return {**options, **parse_set(args.set_)} if "set_" in spec.actions else {}


def use_threads(threads: int | str | None) -> None:
    """``--threads N|auto`` of a command that works in this process: torch's threads (``None``: leave them)."""
    from bench.run.config import parse_threads
    from bench.run.workers import resolve_threads

    n, _ = resolve_threads(parse_threads(threads), 1)
    if n is not None:
        import torch

        torch.set_num_threads(n)


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` of every command that can take more than a few seconds (``bench run``'s flag): they show
    tqdm bars on stderr unless it is given (:func:`show_progress`; stdout keeps only the results, as before)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars (shown on stderr when it is a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command of :func:`add_progress_option` shows its bars: not with ``--no-progress``, and only when
    stderr is a terminal. Where stderr is a file or a pipe (a script, a log, a test) the bars would be lines of
    carriage returns before the result, and a bad input would no longer be the one ``error:`` line it promises."""
    return not args.no_progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class Stages:
    """A progress bar over the named stages of a command that does one piece of work (``tsne``, ``show-crops``,
    ``show-pseudo``), on stderr, redrawn every second: during a long stage (``tsne`` trains the method for minutes)
    its elapsed time still moves, and the stage's name says what is being waited for (issue #24: ``tsne`` ran
    10.8 min printing nothing). Use as a context manager; :meth:`stage` starts the next stage."""

    def __init__(self, desc: str, names: Sequence[str], enabled: bool = True) -> None:
        from tqdm import tqdm

        self.names = list(names)
        self.bar = tqdm(total=len(self.names), desc=desc, disable=not enabled, file=sys.stderr,
                        bar_format="{desc} [{elapsed}] {n_fmt}/{total_fmt} stages done{postfix}")  # fmt: skip
        self.current: str | None = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True) if enabled else None

    def __enter__(self) -> Stages:
        if self._ticker is not None:
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.bar.refresh()

    def stage(self, name: str) -> None:
        """Mark the current stage done and show ``name`` (one of the names given) as running."""
        if name not in self.names:
            raise ValueError(f"unknown stage {name!r}; the stages are {self.names}")
        self.bar.set_postfix_str(name, refresh=False)
        if self.current is not None:
            self.bar.update(1)
        else:
            self.bar.refresh()
        self.current = name

    def write(self, text: str) -> None:
        """Print ``text`` on stdout without breaking the bar (a note met during a stage)."""
        self.bar.write(text, file=sys.stdout)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker.is_alive():
            self._ticker.join()
        if kind is None:
            self.bar.set_postfix_str("done", refresh=False)
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
