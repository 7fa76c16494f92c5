"""Random streams keyed by integers, so a draw depends on (seed, round, client, ...) and not on order."""
import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. (seed, round, client): independent streams per key."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))
