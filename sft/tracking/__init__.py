"""Metric sinks: metrics.jsonl always; experiment trackers plug in beside it."""
