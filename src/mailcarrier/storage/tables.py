"""The tables of mailcarrier, declared once with SQLAlchemy Core.

Migrations under ``migrations/versions`` create and change these tables;
this module is the description the code queries against. Times that the
queue compares on every claim are stored as epoch seconds (floats) so the
comparison is cheap and identical on SQLite and PostgreSQL; times that
people read in logs are timezone-aware datetimes.

The log tables use the column names of the ACS Log Analytics tables
(``TimeGenerated``, ``CorrelationId``, ...) so that queries written for ACS
read the same here.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

UUID_LEN = 36

# Identity ------------------------------------------------------------------

# Facts about this deployment that every process must agree on, such as
# its tenant id.
deployment = Table(
    "deployment",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

resources = Table(
    "resources",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    # Access keys are HMAC secrets: the service needs them in clear to
    # check signatures, so they are stored as issued (base64 text).
    Column("primary_key", String(128), nullable=False),
    Column("secondary_key", String(128), nullable=False),
    Column("disable_local_auth", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

applications = Table(
    "applications",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),  # the client id
    Column("tenant_id", String(UUID_LEN), nullable=False),
    Column("name", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

client_secrets = Table(
    "client_secrets",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column(
        "application_id",
        String(UUID_LEN),
        ForeignKey("applications.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("secret_hash", String(256), nullable=False),  # argon2id
    Column("hint", String(8), nullable=False),  # first characters, for people
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

role_assignments = Table(
    "role_assignments",
    metadata,
    Column(
        "application_id",
        String(UUID_LEN),
        ForeignKey("applications.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "resource_id",
        String(UUID_LEN),
        ForeignKey("resources.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("role", String(32), primary_key=True),  # Owner | Sender
)

smtp_usernames = Table(
    "smtp_usernames",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column(
        "resource_id",
        String(UUID_LEN),
        ForeignKey("resources.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # Compared case-insensitively: stored lower-case.
    Column("username", String(320), nullable=False, unique=True),
    Column(
        "application_id",
        String(UUID_LEN),
        ForeignKey("applications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Domains -------------------------------------------------------------------

domains = Table(
    "domains",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    # Lower-case A-label (IDNA 2008), without the trailing dot.
    Column("name", String(253), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # managed | custom
    # The communication resource the domain is linked to, if any.
    Column(
        "resource_id",
        String(UUID_LEN),
        ForeignKey("resources.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    # Overall verification state; a domain sends only when Verified.
    Column("verification_state", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dkim_keys = Table(
    "dkim_keys",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column(
        "domain_id",
        String(UUID_LEN),
        ForeignKey("domains.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("selector", String(63), nullable=False),
    Column("private_key_pem", Text, nullable=False),
    Column("public_key_record", Text, nullable=False),  # v=DKIM1; k=rsa; p=...
    Column("state", String(16), nullable=False),  # active | standby | retired
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("domain_id", "selector"),
)

sender_usernames = Table(
    "sender_usernames",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column(
        "domain_id",
        String(UUID_LEN),
        ForeignKey("domains.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("username", String(64), nullable=False),  # lower-case local part
    Column("display_name", String(256), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("domain_id", "username"),
)

# Messages and the queue ----------------------------------------------------

messages = Table(
    "messages",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column("resource_id", String(UUID_LEN), nullable=False, index=True),
    Column("mail_from", String(320), nullable=False),  # envelope sender
    Column("sender_address", String(320), nullable=False),  # header From
    Column("internet_message_id", String(998), nullable=False),
    Column("size", Integer, nullable=False),
    # The message as it goes on the wire, before the DKIM signature.
    Column("content", LargeBinary, nullable=False),
    Column("smtputf8", Boolean, nullable=False, default=False),
    Column("traffic_source", String(8), nullable=False),  # SMTP | REST
    # Queued, OutForDelivery, Delivered, PartiallyDelivered, Failed,
    # Quarantined (set aside after an unexpected error).
    Column("status", String(32), nullable=False),
    Column("quarantine_reason", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# One row per (message, recipient domain): the unit a worker claims and
# delivers in one SMTP transaction.
queue = Table(
    "queue",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column(
        "message_id",
        String(UUID_LEN),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("domain", String(253), nullable=False),  # A-label, lower-case
    # ready -> leased -> done; ready again on a retry; held = quarantined.
    Column("state", String(16), nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(256), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    # Set when a lease was taken over from a worker that died: the
    # previous attempt may have reached the remote server.
    Column("possible_duplicate", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("last_error", Text, nullable=True),
    Index("ix_queue_state_next", "state", "next_attempt_at"),
    Index("ix_queue_lease", "state", "lease_expires_at"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("id", String(UUID_LEN), primary_key=True),
    Column(
        "message_id",
        String(UUID_LEN),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("queue_id", String(UUID_LEN), nullable=False, index=True),
    Column("address", String(320), nullable=False),
    Column("domain", String(253), nullable=False),
    Column("kind", String(8), nullable=False),  # to | cc | bcc | rcpt
    # Queued, Delivered, Bounced, Failed.
    Column("status", String(32), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("smtp_status_code", Integer, nullable=True),
    Column("enhanced_status_code", String(16), nullable=True),
    Column("remote_host", String(255), nullable=True),
    Column("response", Text, nullable=True),  # the remote reply verbatim
    Column("possible_duplicate", Boolean, nullable=False, default=False),
    Column("updated_at", Float, nullable=False),
)

# REST send operations: the long-running operation each POST /emails:send
# starts, keyed per resource by its Operation-Id (the idempotency key).
operations = Table(
    "operations",
    metadata,
    Column(
        "resource_id",
        String(UUID_LEN),
        ForeignKey("resources.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("id", String(64), primary_key=True),
    # SHA-256 of the request body, to tell a retry from a different request.
    Column("body_sha256", String(64), nullable=False),
    Column("message_id", String(UUID_LEN), nullable=True),
    Column("status", String(16), nullable=False),  # Running | Succeeded | Failed
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Logs (ACS column names) ---------------------------------------------------

send_mail_log = Table(
    "ACSEmailSendMailOperational",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("TimeGenerated", DateTime(timezone=True), nullable=False, index=True),
    Column("OperationName", String(64), nullable=False),
    Column("CorrelationId", String(UUID_LEN), nullable=False, index=True),
    Column("ResourceId", String(UUID_LEN), nullable=False, index=True),
    Column("Size", Integer, nullable=False),
    Column("ToRecipientsCount", Integer, nullable=False),
    Column("CcRecipientsCount", Integer, nullable=False),
    Column("BccRecipientsCount", Integer, nullable=False),
    Column("UniqueRecipientsCount", Integer, nullable=False),
    Column("AttachmentsCount", Integer, nullable=False),
    Column("TrafficSource", String(8), nullable=False),
)

status_update_log = Table(
    "ACSEmailStatusUpdateOperational",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("TimeGenerated", DateTime(timezone=True), nullable=False, index=True),
    Column("OperationName", String(64), nullable=False),
    Column("CorrelationId", String(UUID_LEN), nullable=False, index=True),
    Column("ResourceId", String(UUID_LEN), nullable=False, index=True),
    Column("RecipientId", String(320), nullable=True),
    Column("DeliveryStatus", String(32), nullable=False),
    Column("SmtpStatusCode", Integer, nullable=True),
    Column("EnhancedSmtpStatusCode", String(16), nullable=True),
    Column("SenderDomain", String(253), nullable=True),
    Column("SenderUsername", String(64), nullable=True),
    Column("IsHardBounce", Boolean, nullable=False, default=False),
    Column("FailureReason", String(128), nullable=True),
    Column("FailureMessage", Text, nullable=True),
)
