"""Every SMTP reply the submission server sends, as a named constant.

A name carries the reply code and the enhanced status code (RFC 3463,
RFC 5248 registry), so a test or a log search can find a reply by name and
no handler writes a reply literal. A few replies are templates with
``{named}`` fields, filled in with ``str.format`` where they are sent.

What is not here: the wording of refusals decided elsewhere. A ``Refusal``
from the Acceptor is sent verbatim; ``sender_refusal`` and
``NO_FROM_HEADER`` are the shapes the Acceptor builds them from.

RFC 2034 section 3 exempts the greeting, the EHLO/HELO reply and the 334
and 354 intermediate replies from enhanced status codes; every other reply
here has one, because the server advertises ENHANCEDSTATUSCODES.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailcarrier.submission.principal import Refusal

# Greeting and session (RFC 5321 4.2, 4.3.2) ---------------------------------

GREETING_220 = "220 {hostname} ESMTP ready"
HELO_250 = "250 {hostname}"
OK_250_2_0_0 = "250 2.0.0 OK"
BYE_221_2_0_0 = "221 2.0.0 Bye"
VRFY_252_2_0_0 = (
    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
)
IDLE_TIMEOUT_421_4_4_2 = "421 4.4.2 Idle timeout, closing connection"
TOO_MANY_ERRORS_421_4_7_0 = "421 4.7.0 Too many errors, closing connection"
INTERNAL_ERROR_421_4_3_0 = "421 4.3.0 Internal server error, closing connection"

# STARTTLS (RFC 3207) ----------------------------------------------------------

READY_FOR_TLS_220_2_0_0 = "220 2.0.0 Ready to start TLS"
TLS_ALREADY_ACTIVE_503_5_5_1 = "503 5.5.1 TLS already active"
MUST_STARTTLS_530_5_7_0 = "530 5.7.0 Must issue a STARTTLS command first"

# AUTH (RFC 4954) ----------------------------------------------------------------

AUTH_OK_235_2_7_0 = "235 2.7.0 Authentication successful"
# The text of a challenge is base64; "334 " with nothing after it is the
# empty challenge (RFC 4954 section 4, the space is mandatory).
AUTH_CHALLENGE_334 = "334 {challenge}"
AUTH_TOO_MANY_FAILURES_421_4_7_0 = (
    "421 4.7.0 Too many failed authentication attempts, closing connection"
)
AUTH_TEMPORARY_FAILURE_454_4_7_0 = "454 4.7.0 Temporary authentication failure"
AUTH_THROTTLED_454_4_7_0 = (
    "454 4.7.0 Too many failed logins from your address; try again in {seconds} s"
)
AUTH_ABORTED_501_5_7_0 = "501 5.7.0 Authentication aborted"
AUTH_BAD_BASE64_501_5_5_2 = "501 5.5.2 Cannot decode base64 data"
AUTH_MALFORMED_501_5_5_2 = "501 5.5.2 Malformed authentication data"
AUTH_SYNTAX_501_5_5_4 = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_NEEDS_EHLO_503_5_5_1 = "503 5.5.1 Send EHLO first"
ALREADY_AUTHENTICATED_503_5_5_1 = "503 5.5.1 Already authenticated"
AUTH_IN_TRANSACTION_503_5_5_1 = (
    "503 5.5.1 AUTH is not permitted during a mail transaction"
)
UNKNOWN_MECHANISM_504_5_5_4 = "504 5.5.4 Unrecognized authentication type"
AUTH_REQUIRED_530_5_7_0 = "530 5.7.0 Authentication required"
AUTH_FAILED_535_5_7_3 = "535 5.7.3 Authentication unsuccessful"
# RFC 4616 section 2: a server that cannot act on behalf of the requested
# authorization identity must fail the exchange. mailcarrier has no
# proxy authorization, so only an empty authzid or the user's own name pass.
AUTHZID_REFUSED_535_5_7_3 = (
    "535 5.7.3 Authentication unsuccessful: the authorization identity "
    "must be empty or equal to the user name"
)
ENCRYPTION_REQUIRED_538_5_7_11 = (
    "538 5.7.11 Encryption required for requested authentication mechanism"
)

# Mail transaction (RFC 5321 4.1.1, RFC 1870, RFC 6152, RFC 6531) ------------

SENDER_OK_250_2_1_0 = "250 2.1.0 Sender OK"
RECIPIENT_OK_250_2_1_5 = "250 2.1.5 Recipient OK"
START_DATA_354 = "354 End data with <CR><LF>.<CR><LF>"
QUEUED_250_2_0_0 = "250 2.0.0 OK queued as {message_id}"
TEMPORARY_FAILURE_451_4_3_0 = "451 4.3.0 Temporary server error, try again later"
TOO_MANY_RECIPIENTS_452_4_5_3 = "452 4.5.3 Too many recipients"
MAIL_SYNTAX_501_5_5_4 = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
RCPT_SYNTAX_501_5_5_4 = "501 5.5.4 Syntax: RCPT TO:<address>"
BAD_PARAMETER_501_5_5_4 = "501 5.5.4 Invalid or repeated parameter"
BAD_SIZE_501_5_5_4 = "501 5.5.4 SIZE takes a number of octets"
BAD_BODY_501_5_5_4 = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
NEEDS_HELO_503_5_5_1 = "503 5.5.1 Send HELO or EHLO first"
NESTED_MAIL_503_5_5_1 = "503 5.5.1 Sender already specified"
NEEDS_MAIL_503_5_5_1 = "503 5.5.1 Need MAIL command first"
NEEDS_RCPT_503_5_5_1 = "503 5.5.1 Need RCPT command first"
# Also returned by the Acceptor, which checks the header on its own.
SHUTTING_DOWN = Refusal(421, "4.3.2", "Service shutting down, try again later")
NO_FROM_HEADER = Refusal(550, "5.6.0", "Message has no From header field")
NO_FROM_HEADER_550_5_6_0 = NO_FROM_HEADER.reply
MALFORMED_HEADER_550_5_6_0 = "550 5.6.0 Malformed header section: {detail}"
MANY_FROM_HEADERS_550_5_6_0 = "550 5.6.0 Message has more than one From header field"
BAD_FROM_HEADER_550_5_6_0 = "550 5.6.0 From header field has no valid address"
BARE_LINE_ENDING_550_5_6_11 = (
    "550 5.6.11 Bare LF or CR in message; use CRLF line endings"
)
MESSAGE_TOO_BIG_552_5_3_4 = "552 5.3.4 Message size exceeds fixed maximum message size"
NULL_SENDER_553_5_1_7 = "553 5.1.7 The null sender <> cannot submit mail"
BAD_SENDER_553_5_1_7 = "553 5.1.7 Sender address syntax is invalid"
BAD_RECIPIENT_553_5_1_3 = "553 5.1.3 Recipient address syntax is invalid"
NON_ASCII_ADDRESS_553_5_6_7 = (
    "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
)
UNKNOWN_PARAMETER_555_5_5_4 = "555 5.5.4 Unsupported MAIL or RCPT parameter"

# Command syntax (RFC 5321 4.2.4, 4.5.3.1) -----------------------------------

UNKNOWN_COMMAND_500_5_5_1 = "500 5.5.1 Command unrecognized"
EMPTY_COMMAND_500_5_5_2 = "500 5.5.2 Syntax error, empty command line"
NOT_UTF8_500_5_5_2 = "500 5.5.2 Syntax error, command line is not valid UTF-8"
LINE_TOO_LONG_500_5_5_6 = "500 5.5.6 Line too long"
DATA_LINE_TOO_LONG_500_5_5_6 = (
    "500 5.5.6 Line too long; message lines are limited to 1000 octets"
)
HELO_SYNTAX_501_5_5_4 = "501 5.5.4 Syntax: HELO hostname"
EHLO_SYNTAX_501_5_5_4 = "501 5.5.4 Syntax: EHLO hostname"
NO_PARAMETERS_501_5_5_4 = "501 5.5.4 Syntax error, this command takes no parameters"


def sender_refusal(reason: str) -> Refusal:
    """550 5.1.7: the principal may not send as this address; says why."""
    return Refusal(550, "5.1.7", reason)


def ehlo_reply(hostname: str, keywords: Sequence[str]) -> str:
    """The multi-line EHLO reply: the host name, then one extension a line."""
    lines = [hostname, *keywords]
    head = "".join(f"250-{line}\r\n" for line in lines[:-1])
    return f"{head}250 {lines[-1]}"
