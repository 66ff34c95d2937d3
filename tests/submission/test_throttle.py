"""Failed logins per address: the pure bookkeeping."""

from __future__ import annotations

from mailcarrier.submission.throttle import AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_may_try_until_it_reaches_the_limit() -> None:
    clock = Clock()
    throttle = AuthThrottle(limit=3, window=60, clock=clock)
    for _ in range(2):
        throttle.failed("192.0.2.1")
    assert throttle.wait("192.0.2.1") == 0
    throttle.failed("192.0.2.1")
    assert throttle.wait("192.0.2.1") == 60


def test_the_wait_ends_when_the_oldest_failure_ages_out() -> None:
    clock = Clock()
    throttle = AuthThrottle(limit=2, window=60, clock=clock)
    throttle.failed("192.0.2.1")
    clock.now += 10
    throttle.failed("192.0.2.1")
    clock.now += 45
    assert throttle.wait("192.0.2.1") == 5
    clock.now += 5
    assert throttle.wait("192.0.2.1") == 0


def test_other_addresses_are_not_affected() -> None:
    throttle = AuthThrottle(limit=1, window=60, clock=Clock())
    throttle.failed("192.0.2.1")
    assert throttle.wait("192.0.2.1") > 0
    assert throttle.wait("192.0.2.2") == 0
