"""Persistence: the DuckDB catalog and the per-class mask store."""
