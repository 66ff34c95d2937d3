"""Initial schema: identity, domains, messages, queue and the log tables.

Revision ID: 0001
Revises: 
Create Date: 2026-12-03 16:46:06.629219
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ACSEmailSendMailOperational',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('TimeGenerated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('OperationName', sa.String(length=64), nullable=False),
    sa.Column('CorrelationId', sa.String(length=36), nullable=False),
    sa.Column('ResourceId', sa.String(length=36), nullable=False),
    sa.Column('Size', sa.Integer(), nullable=False),
    sa.Column('ToRecipientsCount', sa.Integer(), nullable=False),
    sa.Column('CcRecipientsCount', sa.Integer(), nullable=False),
    sa.Column('BccRecipientsCount', sa.Integer(), nullable=False),
    sa.Column('UniqueRecipientsCount', sa.Integer(), nullable=False),
    sa.Column('AttachmentsCount', sa.Integer(), nullable=False),
    sa.Column('TrafficSource', sa.String(length=8), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ACSEmailSendMailOperational'))
    )
    with op.batch_alter_table('ACSEmailSendMailOperational', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ACSEmailSendMailOperational_CorrelationId'), ['CorrelationId'], unique=False)
        batch_op.create_index(batch_op.f('ix_ACSEmailSendMailOperational_ResourceId'), ['ResourceId'], unique=False)
        batch_op.create_index(batch_op.f('ix_ACSEmailSendMailOperational_TimeGenerated'), ['TimeGenerated'], unique=False)

    op.create_table('ACSEmailStatusUpdateOperational',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('TimeGenerated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('OperationName', sa.String(length=64), nullable=False),
    sa.Column('CorrelationId', sa.String(length=36), nullable=False),
    sa.Column('ResourceId', sa.String(length=36), nullable=False),
    sa.Column('RecipientId', sa.String(length=320), nullable=True),
    sa.Column('DeliveryStatus', sa.String(length=32), nullable=False),
    sa.Column('SmtpStatusCode', sa.Integer(), nullable=True),
    sa.Column('EnhancedSmtpStatusCode', sa.String(length=16), nullable=True),
    sa.Column('SenderDomain', sa.String(length=253), nullable=True),
    sa.Column('SenderUsername', sa.String(length=64), nullable=True),
    sa.Column('IsHardBounce', sa.Boolean(), nullable=False),
    sa.Column('FailureReason', sa.String(length=128), nullable=True),
    sa.Column('FailureMessage', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ACSEmailStatusUpdateOperational'))
    )
    with op.batch_alter_table('ACSEmailStatusUpdateOperational', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ACSEmailStatusUpdateOperational_CorrelationId'), ['CorrelationId'], unique=False)
        batch_op.create_index(batch_op.f('ix_ACSEmailStatusUpdateOperational_ResourceId'), ['ResourceId'], unique=False)
        batch_op.create_index(batch_op.f('ix_ACSEmailStatusUpdateOperational_TimeGenerated'), ['TimeGenerated'], unique=False)

    op.create_table('applications',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_applications'))
    )
    op.create_table('deployment',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_deployment'))
    )
    op.create_table('messages',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('mail_from', sa.String(length=320), nullable=False),
    sa.Column('sender_address', sa.String(length=320), nullable=False),
    sa.Column('internet_message_id', sa.String(length=998), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('smtputf8', sa.Boolean(), nullable=False),
    sa.Column('traffic_source', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('quarantine_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_resource_id'), ['resource_id'], unique=False)

    op.create_table('resources',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('primary_key', sa.String(length=128), nullable=False),
    sa.Column('secondary_key', sa.String(length=128), nullable=False),
    sa.Column('disable_local_auth', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resources')),
    sa.UniqueConstraint('name', name=op.f('uq_resources_name'))
    )
    op.create_table('client_secrets',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('application_id', sa.String(length=36), nullable=False),
    sa.Column('secret_hash', sa.String(length=256), nullable=False),
    sa.Column('hint', sa.String(length=8), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['applications.id'], name=op.f('fk_client_secrets_application_id_applications'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_client_secrets'))
    )
    with op.batch_alter_table('client_secrets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_client_secrets_application_id'), ['application_id'], unique=False)

    op.create_table('domains',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=True),
    sa.Column('verification_state', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['resource_id'], ['resources.id'], name=op.f('fk_domains_resource_id_resources'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_domains')),
    sa.UniqueConstraint('name', name=op.f('uq_domains_name'))
    )
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_domains_resource_id'), ['resource_id'], unique=False)

    op.create_table('queue',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('lease_owner', sa.String(length=256), nullable=True),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('possible_duplicate', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_queue_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_queue'))
    )
    with op.batch_alter_table('queue', schema=None) as batch_op:
        batch_op.create_index('ix_queue_lease', ['state', 'lease_expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_queue_message_id'), ['message_id'], unique=False)
        batch_op.create_index('ix_queue_state_next', ['state', 'next_attempt_at'], unique=False)

    op.create_table('recipients',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('queue_id', sa.String(length=36), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('smtp_status_code', sa.Integer(), nullable=True),
    sa.Column('enhanced_status_code', sa.String(length=16), nullable=True),
    sa.Column('remote_host', sa.String(length=255), nullable=True),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('possible_duplicate', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_recipients_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recipients'))
    )
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recipients_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recipients_queue_id'), ['queue_id'], unique=False)

    op.create_table('role_assignments',
    sa.Column('application_id', sa.String(length=36), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['applications.id'], name=op.f('fk_role_assignments_application_id_applications'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['resource_id'], ['resources.id'], name=op.f('fk_role_assignments_resource_id_resources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('application_id', 'resource_id', 'role', name=op.f('pk_role_assignments'))
    )
    op.create_table('smtp_usernames',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('username', sa.String(length=320), nullable=False),
    sa.Column('application_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['applications.id'], name=op.f('fk_smtp_usernames_application_id_applications'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['resource_id'], ['resources.id'], name=op.f('fk_smtp_usernames_resource_id_resources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_smtp_usernames')),
    sa.UniqueConstraint('username', name=op.f('uq_smtp_usernames_username'))
    )
    op.create_table('dkim_keys',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('domain_id', sa.String(length=36), nullable=False),
    sa.Column('selector', sa.String(length=63), nullable=False),
    sa.Column('private_key_pem', sa.Text(), nullable=False),
    sa.Column('public_key_record', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_dkim_keys_domain_id_domains'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dkim_keys')),
    sa.UniqueConstraint('domain_id', 'selector', name=op.f('uq_dkim_keys_domain_id'))
    )
    with op.batch_alter_table('dkim_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dkim_keys_domain_id'), ['domain_id'], unique=False)

    op.create_table('sender_usernames',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('domain_id', sa.String(length=36), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_sender_usernames_domain_id_domains'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sender_usernames')),
    sa.UniqueConstraint('domain_id', 'username', name=op.f('uq_sender_usernames_domain_id'))
    )


def downgrade() -> None:
    op.drop_table('sender_usernames')
    with op.batch_alter_table('dkim_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dkim_keys_domain_id'))

    op.drop_table('dkim_keys')
    op.drop_table('smtp_usernames')
    op.drop_table('role_assignments')
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recipients_queue_id'))
        batch_op.drop_index(batch_op.f('ix_recipients_message_id'))

    op.drop_table('recipients')
    with op.batch_alter_table('queue', schema=None) as batch_op:
        batch_op.drop_index('ix_queue_state_next')
        batch_op.drop_index(batch_op.f('ix_queue_message_id'))
        batch_op.drop_index('ix_queue_lease')

    op.drop_table('queue')
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_domains_resource_id'))

    op.drop_table('domains')
    with op.batch_alter_table('client_secrets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_client_secrets_application_id'))

    op.drop_table('client_secrets')
    op.drop_table('resources')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_resource_id'))

    op.drop_table('messages')
    op.drop_table('deployment')
    op.drop_table('applications')
    with op.batch_alter_table('ACSEmailStatusUpdateOperational', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ACSEmailStatusUpdateOperational_TimeGenerated'))
        batch_op.drop_index(batch_op.f('ix_ACSEmailStatusUpdateOperational_ResourceId'))
        batch_op.drop_index(batch_op.f('ix_ACSEmailStatusUpdateOperational_CorrelationId'))

    op.drop_table('ACSEmailStatusUpdateOperational')
    with op.batch_alter_table('ACSEmailSendMailOperational', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ACSEmailSendMailOperational_TimeGenerated'))
        batch_op.drop_index(batch_op.f('ix_ACSEmailSendMailOperational_ResourceId'))
        batch_op.drop_index(batch_op.f('ix_ACSEmailSendMailOperational_CorrelationId'))

    op.drop_table('ACSEmailSendMailOperational')
