"""Metrics, each matching the scorer the field trusts (cited in its module)."""
