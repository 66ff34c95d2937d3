"""HTTP API layer: the ACS-compatible request handling for mailcarrier."""
