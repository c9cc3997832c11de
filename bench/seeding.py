"""Seeds and random streams.

Every random choice in the harness takes an explicit generator derived from the run seed and a stream
name (coreset, init, batches, pretraining sampler, episodes, data generation), through
``numpy.random.SeedSequence``. Streams are independent: adding randomness to one stage never shifts
another, and the numbers for a job do not depend on which worker runs it or in which order.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the two functions that use it: the datasets and reports need none
    import torch


def stable_int(*parts: object) -> int:
    """A 63-bit integer hash of ``parts`` that is the same in every process (unlike ``hash()``)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seed_sequence(seed: int, *stream: object) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), stable_int(*stream)] if stream else [int(seed)])


def numpy_rng(seed: int, *stream: object) -> np.random.Generator:
    """A numpy Generator for ``stream`` of run ``seed``."""
    return np.random.default_rng(seed_sequence(seed, *stream))


def torch_generator(seed: int, *stream: object) -> torch.Generator:
    """A torch CPU Generator for ``stream`` of run ``seed``."""
    import torch

    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, *stream).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1)))
    return g


def seed_torch_global(seed: int, *stream: object) -> None:
    """Seed torch's global RNG for code that cannot take a generator (e.g. ``nn.init`` inside module constructors).

    Methods call this right before building their networks, so initialisation is a function of (seed, stream).
    """
    import torch

    torch.manual_seed(int(seed_sequence(seed, *stream).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1)))
