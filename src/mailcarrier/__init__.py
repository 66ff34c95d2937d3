"""mailcarrier: a self-hosted email sending service.

Applications submit mail over authenticated SMTP (and, later, an
ACS-compatible REST API); mailcarrier stores each accepted message
durably, signs it with the sender domain's DKIM key and delivers it to
the recipients' mail servers, recording a status per recipient.
"""

__version__ = "0.1.0"
