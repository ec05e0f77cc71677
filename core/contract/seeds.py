"""Seeds derived from a run's seed, one per thing that draws (a block, a layer, an epoch's shuffle).

Each part of a run draws from its own stream, so what one block or epoch draws
does not depend on which others draw: a block's initial weights are the same
whether or not its neighbours are re-initialised, and a resumed run reshuffles
as the uninterrupted one did. Every backend derives them here, with NumPy's
``SeedSequence`` (names are hashed with CRC-32), so one seed means one stream.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive(seed: int, *parts: int | str) -> int:
    """A 32-bit seed for ``parts`` (ints as they are, strings by their CRC-32) of the run seeded ``seed``."""
    words = [int(seed) & 0xFFFFFFFF] + [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
