"""The CT curation workbench: ingest, model, pseudo-labels, review, export, CLI and app."""

__version__ = "0.1.0"
