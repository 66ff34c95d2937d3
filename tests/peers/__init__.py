"""Test peers: a scriptable authoritative DNS server and SMTP sinks.

`tests.peers.dns.DnsServer` and `tests.peers.sink.SmtpSink` run real network
servers on 127.0.0.1 with ephemeral ports, for end-to-end tests and benchmarks.
Their pytest fixtures (`dns_server`, `smtp_sink`, `smtp_sink_factory`) live in
those modules; import them into a conftest to use them.
"""
