"""The one retry policy (streamrec.retry.Backoff): doubling, the cap, the jitter's range and
the checks of its settings."""

from __future__ import annotations

import math
import random

import pytest

from streamrec.retry import Backoff


def test_delays_double_up_to_the_cap_without_jitter():
    b = Backoff(base_s=0.25, cap_s=3.0, jitter=0.0)
    assert [b.delay(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.delay(-5) == 0.25  # a negative attempt is the first
    assert b.delay(10**9) == 3.0  # a huge attempt count neither overflows nor passes the cap


def test_jitter_shortens_each_delay_within_its_fraction_and_spreads_them():
    b = Backoff(base_s=1.0, cap_s=60.0, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(8):
        delays = [b.delay(attempt, rng) for _ in range(200)]
        exact = min(60.0, 2.0 ** attempt)
        assert min(delays) >= exact * 0.5 and max(delays) <= exact
        assert max(delays) - min(delays) > exact * 0.3  # spread: retries that failed together do not align


@pytest.mark.parametrize("kwargs, word", [
    ({"base_s": -1.0}, "base_s=-1.0"), ({"base_s": 5.0, "cap_s": 1.0}, "cap_s=1.0"),
    ({"base_s": math.nan}, "base_s=nan"), ({"cap_s": math.inf}, "cap_s=inf"), ({"jitter": 1.5}, "1.5"),
])
def test_settings_out_of_range_are_refused_naming_them(kwargs, word):
    with pytest.raises(ValueError, match="backoff") as exc:
        Backoff(**kwargs)
    assert word in str(exc.value)
