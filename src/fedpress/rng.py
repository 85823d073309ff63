"""Seeded randomness: every draw comes from a generator derived from the run's seed.

`derive(seed, "sample", round)` and `derive(seed, "qsgd", round, client)` give
independent, reproducible streams. No code in fedpress touches torch's or
numpy's global random state (DESIGN rule 5).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and a path of keys (purpose, round, client, ...)."""
    text = repr((int(seed),) + tuple(str(k) for k in keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def derive(seed: int, *keys: object) -> torch.Generator:
    """A fresh CPU torch.Generator for (seed, *keys)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g


def derive_numpy(seed: int, *keys: object) -> np.random.Generator:
    """A fresh numpy Generator for (seed, *keys), for code that is naturally numpy (partitioning)."""
    return np.random.default_rng(derive_seed(seed, *keys))
