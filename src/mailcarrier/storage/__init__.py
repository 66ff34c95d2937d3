"""Storage: tables, the database handle, group commits and migrations."""
