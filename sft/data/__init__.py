"""Data: raw splits (hub or local files), folds, cached tokenized features, collation."""
