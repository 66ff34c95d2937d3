"""What the result of one SMTP step means for a delivery: one pure table.

The SMTP client reports where an attempt ended (the *scope*) and the reply
code it got there (or None when no reply came: refused, timed out, dropped).
`decide` turns that into one of four actions. It does no I/O and keeps no
state, so the whole table is tested exhaustively.

Scopes:

- CONNECTION: the TCP connect failed, was refused or timed out, the
  connection dropped or a reply timed out, the TLS handshake failed.
- HOST: the greeting, EHLO/HELO, the reply to STARTTLS, and any 421
  wherever it comes (RFC 5321 3.8: the server is shutting the channel).
- MESSAGE: MAIL FROM, the DATA command, and the reply to the final dot.
- RECIPIENT: RCPT TO, for that one recipient.

The table (Postfix-like; "next MX" becomes the right-hand action on the
last MX of the route):

    scope        no reply /      2xx         4xx (and any     5xx
                 not 2xx-5xx                 421)
    ----------   -------------   ---------   --------------   ------------
    CONNECTION   next MX|RETRY   next|RETRY  next MX|RETRY    next|RETRY
    HOST         next MX|RETRY   (error)     next MX|RETRY    next|BOUNCE
    MESSAGE      next MX|RETRY   DELIVERED   RETRY            BOUNCE
    RECIPIENT    next MX|RETRY   (error)     RETRY            BOUNCE

Why each rule:

- A refused or dropped connection, a timeout and a 421 say nothing about
  the message, only about that host right now: another MX may take it,
  and on the last MX the message waits for a later attempt. They never
  bounce a message by themselves.
- A 5xx from the greeting or EHLO rejects this client at this host (say,
  a blocklist); another MX may still accept, so it bounces only when no
  MX is left.
- A 4xx/5xx to MAIL, DATA or the final dot is about the message, and a
  4xx/5xx to RCPT is about one recipient: every MX of the domain would
  answer alike, so the next MX is not tried (RFC 5321 4.2.1, 4.5.4.1).
- A 2xx is an outcome only as the reply to the final dot; anywhere else
  it means "go on", and asking `decide` about it is a bug of the caller.
- Codes outside 2xx-5xx (1xx, 3xx where no 354 was due, garbage) are a
  broken reply: treated like no reply at all.

What this module does not do: parse replies (the client does), choose
between MX hosts (the route gives their order), or schedule retries
(`retry`). Limitation: enhanced status codes (RFC 3463) do not change the
decision; the basic code class alone decides, as in RFC 5321.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Action", "Scope", "decide"]

SERVICE_NOT_AVAILABLE = 421


class Scope(StrEnum):
    """Where in the SMTP conversation an attempt ended."""

    CONNECTION = "connection"
    HOST = "host"
    MESSAGE = "message"
    RECIPIENT = "recipient"


class Action(StrEnum):
    """What to do with the recipients the result applies to."""

    DELIVERED = "delivered"
    TRY_NEXT_MX = "try_next_mx"
    RETRY = "retry"
    BOUNCE = "bounce"


def decide(scope: Scope, code: int | None, *, last_mx: bool) -> Action:
    """The action for a result at `scope` with reply `code` (None: no reply).

    Raises ValueError for a 2xx outside MESSAGE scope: there it is not the
    end of an attempt, so there is nothing to decide.
    """
    host_trouble = Action.RETRY if last_mx else Action.TRY_NEXT_MX
    if scope is Scope.CONNECTION or not _is_reply(code):
        return host_trouble
    assert code is not None
    if code == SERVICE_NOT_AVAILABLE:
        return host_trouble

    kind = code // 100
    if kind == 2:
        if scope is Scope.MESSAGE:
            return Action.DELIVERED
        raise ValueError(f"a {code} reply at {scope} scope is not an outcome")
    if scope is Scope.HOST:
        if kind == 5:
            return Action.BOUNCE if last_mx else Action.TRY_NEXT_MX
        return host_trouble
    return Action.BOUNCE if kind == 5 else Action.RETRY


def _is_reply(code: int | None) -> bool:
    """True for a code that ends a step: 2xx, 4xx or 5xx."""
    return code is not None and 200 <= code < 600 and code // 100 != 3
