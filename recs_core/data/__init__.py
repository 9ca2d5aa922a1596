"""Data sources: readers, parsers and the synthetic generator."""
