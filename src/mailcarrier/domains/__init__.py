"""Sending domains: verification and DKIM key material."""
