"""User-facing errors.

A :class:`BenchError` carries a message that names the problem and the fix. The CLI prints it without a
traceback and exits with status 2; anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)


class BenchError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""

    exit_code = 2


class DatasetError(BenchError):
    """A dataset root, layout, category or image that cannot be used."""


class ConfigError(BenchError):
    """An invalid option, config file or combination of options."""


class WeightsError(BenchError):
    """Pretrained weights that cannot be obtained or loaded."""
