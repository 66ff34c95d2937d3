"""When to try a deferred message again, and when to give up: pure functions.

The delay grows exponentially with the number of attempts made, is capped,
and is spread by a random jitter of +/-20% so that messages deferred
together (a destination that was down) do not all come back in the same
second. With the default settings (`retry_initial_delay` 60 s,
`retry_backoff_factor` 2, `retry_max_delay` 1 h) the schedule is, before
jitter:

    after attempt    1     2     3     4      5      6      7 and later
    wait             1m    2m    4m    8m     16m    32m    1h

so a message that keeps failing is tried about 30 times within the default
`max_queue_lifetime` of 24 h (RFC 5321 4.5.4.1 asks for at least 30 min
between tries to one destination and 4-5 days of trying; the lifetime is a
setting and the short first delays favour quick recovery from brief
trouble, as Postfix does).

What this module does not do: read the clock or settings (callers pass
them in), or keep per-destination state. Limitation: the delay depends on
the message's attempts only, not on how long its destination has been
failing for other messages.
"""

from __future__ import annotations

import math
import random

__all__ = ["JITTER", "is_expired", "next_attempt_delay"]

JITTER = 0.2


def next_attempt_delay(
    attempts: int,
    *,
    initial: float,
    factor: float,
    cap: float,
    rng: random.Random,
) -> float:
    """Seconds to wait before the next attempt.

    `attempts` counts the attempts made so far, including the one that just
    failed (1 after the first failure). The base delay is
    ``initial * factor ** (attempts - 1)``, at most `cap`; the result is the
    base times a uniform factor in [0.8, 1.2], and never more than `cap`.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if initial <= 0 or cap <= 0 or factor < 1:
        raise ValueError("need initial > 0, cap > 0 and factor >= 1")
    base = min(_grown(initial, factor, attempts - 1), cap)
    jittered = base * rng.uniform(1 - JITTER, 1 + JITTER)
    return min(jittered, cap)


def _grown(initial: float, factor: float, steps: int) -> float:
    """initial * factor ** steps, without overflowing for large `steps`."""
    try:
        return initial * factor**steps
    except OverflowError:
        return math.inf


def is_expired(created_at: float, now: float, lifetime: float) -> bool:
    """True when a message created at `created_at` has been queued too long.

    Times are seconds on the same clock (Unix time in the queue). A message
    exactly `lifetime` old is expired.
    """
    return now - created_at >= lifetime
