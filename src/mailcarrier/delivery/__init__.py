"""Outbound delivery: DKIM signing and sending to recipients' mail servers."""
