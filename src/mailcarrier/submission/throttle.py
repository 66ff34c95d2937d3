"""Failed logins counted per client address, to slow down password guessing.

Each failed AUTH from an address is remembered for ``window`` seconds;
an address with ``limit`` failures in that window is refused AUTH at once,
without the cost of checking a password, until its oldest failure ages
out. The count lives in the process, so with several worker processes an
address gets ``limit`` tries per process and window. Pure bookkeeping, no
I/O; the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

DEFAULT_LIMIT = 20
DEFAULT_WINDOW = 60.0
MAX_ADDRESSES = 10_000


class AuthThrottle:
    def __init__(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def wait(self, address: str) -> float:
        """Seconds before ``address`` may try again; 0 when it may now."""
        times = self._recent(address)
        if times is None or len(times) < self._limit:
            return 0.0
        return max(0.0, times[0] + self._window - self._clock())

    def failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            if len(self._failures) >= MAX_ADDRESSES:
                self._forget_stale()
            times = self._failures[address] = deque(maxlen=self._limit)
        times.append(self._clock())

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self._clock() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def _forget_stale(self) -> None:
        for address in list(self._failures):
            self._recent(address)
        if len(self._failures) >= MAX_ADDRESSES:
            self._failures.clear()  # under a wide attack, start afresh
