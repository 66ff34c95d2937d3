"""Reproducible benchmarks of mailcarrier against its peers.

``python -m bench.relay`` measures mailcarrier as an SMTP relay against
Postfix on the same machine, with Postfix's own load generator and sink;
see ``bench/README.md``.
"""
