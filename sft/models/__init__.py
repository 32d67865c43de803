"""Models and tokenizers: loading, freezing, and architecture-specific speed-ups."""
