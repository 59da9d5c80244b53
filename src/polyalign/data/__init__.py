"""Data: the record schema, one adapter per input format, normalisation, dedup and splits."""
