"""One retry policy: capped exponential backoff with jitter, for every wait before trying again
(a lost camera, a restarted thread, a database or a notification channel that stopped answering).

Attempt ``n`` (0 for the first retry) waits ``min(cap_s, base_s * 2**n)`` scaled by a random
factor in ``[1 - jitter, 1]``, so that cameras or channels that failed together do not all
retry in the same instant.

Example:
    >>> import random
    >>> b = Backoff(base_s=1.0, cap_s=8.0, jitter=0.0)
    >>> [b.delay(n) for n in range(5)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    >>> 0.5 <= Backoff(base_s=1.0, cap_s=8.0).delay(0, random.Random(1)) <= 1.0
    True
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MAX_DOUBLINGS = 62  # 2**62 times any base is beyond every cap; larger attempts cannot overflow


@dataclass(frozen=True)
class Backoff:
    """Capped, jittered exponential backoff (seconds). ``jitter``: the fraction a delay may be
    shortened by at random (0: exact delays, as tests with an injected clock want)."""

    base_s: float = 0.5
    cap_s: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_s) and math.isfinite(self.cap_s) and 0 <= self.base_s <= self.cap_s):
            raise ValueError(f"backoff: expected finite 0 <= base_s <= cap_s, got base_s={self.base_s}, "
                             f"cap_s={self.cap_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff: expected 0 <= jitter <= 1, got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based; negative counts as 0)."""
        exact = min(self.cap_s, self.base_s * 2 ** min(max(0, attempt), MAX_DOUBLINGS))
        if not self.jitter:
            return exact
        return exact * (rng or random).uniform(1.0 - self.jitter, 1.0)
