"""The outcome table, exhaustively: every scope x reply class x last MX."""

from __future__ import annotations

import pytest

from mailcarrier.delivery.outcomes import Action, Scope, decide

DELIVERED, NEXT, RETRY, BOUNCE = (
    Action.DELIVERED,
    Action.TRY_NEXT_MX,
    Action.RETRY,
    Action.BOUNCE,
)
ERROR = "error"

# A representative code of each class a server (or the lack of one) can give.
CODES: dict[str, tuple[int | None, ...]] = {
    "none": (None,),
    "1xx": (100, 199),
    "2xx": (200, 250, 251, 299),
    "3xx": (334, 354),
    "421": (421,),
    "4xx": (400, 450, 451, 452, 454, 499),
    "5xx": (500, 535, 550, 552, 553, 554, 599),
    "garbage": (-1, 0, 99, 600, 999),
}

# (scope, class) -> (action when another MX is left, action on the last MX),
# written out by hand from the table in the module docstring.
TABLE: dict[tuple[Scope, str], tuple[object, object]] = {
    (Scope.CONNECTION, "none"): (NEXT, RETRY),
    (Scope.CONNECTION, "1xx"): (NEXT, RETRY),
    (Scope.CONNECTION, "2xx"): (NEXT, RETRY),
    (Scope.CONNECTION, "3xx"): (NEXT, RETRY),
    (Scope.CONNECTION, "421"): (NEXT, RETRY),
    (Scope.CONNECTION, "4xx"): (NEXT, RETRY),
    (Scope.CONNECTION, "5xx"): (NEXT, RETRY),
    (Scope.CONNECTION, "garbage"): (NEXT, RETRY),
    (Scope.HOST, "none"): (NEXT, RETRY),
    (Scope.HOST, "1xx"): (NEXT, RETRY),
    (Scope.HOST, "2xx"): (ERROR, ERROR),
    (Scope.HOST, "3xx"): (NEXT, RETRY),
    (Scope.HOST, "421"): (NEXT, RETRY),
    (Scope.HOST, "4xx"): (NEXT, RETRY),
    (Scope.HOST, "5xx"): (NEXT, BOUNCE),
    (Scope.HOST, "garbage"): (NEXT, RETRY),
    (Scope.MESSAGE, "none"): (NEXT, RETRY),
    (Scope.MESSAGE, "1xx"): (NEXT, RETRY),
    (Scope.MESSAGE, "2xx"): (DELIVERED, DELIVERED),
    (Scope.MESSAGE, "3xx"): (NEXT, RETRY),
    (Scope.MESSAGE, "421"): (NEXT, RETRY),
    (Scope.MESSAGE, "4xx"): (RETRY, RETRY),
    (Scope.MESSAGE, "5xx"): (BOUNCE, BOUNCE),
    (Scope.MESSAGE, "garbage"): (NEXT, RETRY),
    (Scope.RECIPIENT, "none"): (NEXT, RETRY),
    (Scope.RECIPIENT, "1xx"): (NEXT, RETRY),
    (Scope.RECIPIENT, "2xx"): (ERROR, ERROR),
    (Scope.RECIPIENT, "3xx"): (NEXT, RETRY),
    (Scope.RECIPIENT, "421"): (NEXT, RETRY),
    (Scope.RECIPIENT, "4xx"): (RETRY, RETRY),
    (Scope.RECIPIENT, "5xx"): (BOUNCE, BOUNCE),
    (Scope.RECIPIENT, "garbage"): (NEXT, RETRY),
}

CASES = [
    pytest.param(
        scope,
        code,
        last_mx,
        TABLE[scope, kind][last_mx],
        id=f"{scope}-{code}-{'last' if last_mx else 'more'}",
    )
    for (scope, kind) in TABLE
    for code in CODES[kind]
    for last_mx in (False, True)
]


def test_table_covers_every_scope_and_class() -> None:
    assert set(TABLE) == {(scope, kind) for scope in Scope for kind in CODES}


@pytest.mark.parametrize(("scope", "code", "last_mx", "expected"), CASES)
def test_decide_follows_the_table(
    scope: Scope, code: int | None, last_mx: bool, expected: object
) -> None:
    if expected == ERROR:
        with pytest.raises(ValueError, match="not an outcome"):
            decide(scope, code, last_mx=last_mx)
    else:
        assert decide(scope, code, last_mx=last_mx) is expected


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("code", [None, 421])
@pytest.mark.parametrize("last_mx", [False, True])
def test_a_421_or_a_drop_never_bounces(
    scope: Scope, code: int | None, last_mx: bool
) -> None:
    assert decide(scope, code, last_mx=last_mx) is not Action.BOUNCE


@pytest.mark.parametrize("last_mx", [False, True])
def test_message_delivered_when_final_dot_gets_250(last_mx: bool) -> None:
    assert decide(Scope.MESSAGE, 250, last_mx=last_mx) is Action.DELIVERED


def test_recipient_deferred_when_last_mx_replies_4xx() -> None:
    assert decide(Scope.RECIPIENT, 450, last_mx=True) is Action.RETRY


def test_recipient_bounced_on_550_without_trying_next_mx() -> None:
    assert decide(Scope.RECIPIENT, 550, last_mx=False) is Action.BOUNCE


def test_host_rejection_tries_next_mx_before_bouncing() -> None:
    assert decide(Scope.HOST, 554, last_mx=False) is Action.TRY_NEXT_MX
    assert decide(Scope.HOST, 554, last_mx=True) is Action.BOUNCE


def test_refused_connection_on_last_mx_is_retried_later() -> None:
    assert decide(Scope.CONNECTION, None, last_mx=True) is Action.RETRY


def test_scope_and_action_are_strings() -> None:
    assert Scope.RECIPIENT == "recipient"
    assert Action.TRY_NEXT_MX == "try_next_mx"
