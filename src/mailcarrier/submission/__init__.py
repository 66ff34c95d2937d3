"""Submission: the SMTP server shell, its authentication, and accepting mail."""
