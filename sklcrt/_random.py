"""Random streams keyed by ``random_state`` and a unit's name.

Every unit's stream is derived from the user's seed and a stable hash of the unit's name, so results
do not depend on the order units run in, on chunking, on ``n_jobs`` or on the joblib backend.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np


def _name_words(name) -> list[int]:
    digest = hashlib.sha256(str(name).encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def seed_sequence(random_state, key=None) -> np.random.SeedSequence:
    """A ``SeedSequence`` from ``random_state`` (None, int or SeedSequence) and an optional key.

    ``key`` (e.g. a unit name) is hashed with SHA-256, never with Python's salted ``hash``.
    """
    if random_state is None:
        base = np.random.SeedSequence()
    elif isinstance(random_state, np.random.SeedSequence):
        base = random_state
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state}.")
        base = np.random.SeedSequence(int(random_state))
    elif isinstance(random_state, np.random.Generator):
        base = np.random.SeedSequence(int(random_state.integers(0, 2**63)))
    elif isinstance(random_state, np.random.RandomState):
        base = np.random.SeedSequence(int(random_state.randint(0, 2**31)))
    else:
        raise ValueError(
            "random_state must be None, an int, a numpy SeedSequence, Generator or RandomState; "
            f"got {random_state!r}."
        )
    if key is None:
        return base
    entropy = base.entropy if base.entropy is not None else 0
    return np.random.SeedSequence(entropy, spawn_key=(*base.spawn_key, *_name_words(key)))


def as_generator(random_state, key=None) -> np.random.Generator:
    """A numpy ``Generator`` from ``random_state``.

    ``random_state`` may be None, an int, a SeedSequence, a Generator or a RandomState.

    A ``Generator`` passed without a key is used as is (its state advances).
    """
    if isinstance(random_state, np.random.Generator) and key is None:
        return random_state
    return np.random.default_rng(seed_sequence(random_state, key))
