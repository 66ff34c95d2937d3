"""The ``mailcarrier`` command line."""
