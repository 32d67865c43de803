"""One run: wiring it together, its run directory, its environment record, reproducing it."""
